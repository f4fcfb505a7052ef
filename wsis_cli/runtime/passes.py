"""A batch-level loss over a network's outputs, with the network run in passes of bounded size.

A contrastive loss needs every view of a batch at once (each is the others' negative), so the batch
cannot be split into gradient-accumulation steps. Gradient caching (Gao et al., 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup") gets the same gradient with the activations
of one pass in memory: run every pass without autograd, take the loss's gradient with respect to the
(small) outputs, then run each pass again with autograd and back-propagate that gradient into it.

Inputs of equal shape share a pass (at most ``max_pixels`` input pixels). When the whole batch is within
``max_pixels`` the plain forward/backward runs (one pass per shape, every activation held at once), so a
small batch computes exactly what it did before and pays no second forward.
BatchNorm normalises with the statistics of its pass in both runs (the same inputs, so the same
outputs); its running statistics are restored after the first run so that each pass updates them once.
The network must be deterministic in training mode (no dropout, no stochastic depth).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def plan_passes(shapes: Sequence[tuple[int, ...]], max_pixels: int) -> list[list[int]]:
    """Indices of the inputs (``(C, H, W)`` shapes) that run together: equal shapes, at most ``max_pixels``
    input pixels per pass (always at least one input), in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(shapes):
        groups.setdefault(tuple(s), []).append(i)
    passes = []
    for shape, members in groups.items():
        per = max(1, max_pixels // max(1, shape[-1] * shape[-2]))
        passes += [members[i : i + per] for i in range(0, len(members), per)]
    return passes


def loss_backward_in_passes(net: nn.Module, inputs: Sequence[Tensor], forward: Callable[[nn.Module, Tensor], Tensor],
                            loss_of: Callable[[list[Tensor]], Tensor], max_pixels: int) -> Tensor:
    """``loss_of(outputs)`` over the outputs of ``forward(net, batch)`` for each ``(C, H, W)`` input, with its
    gradient accumulated into ``net``'s parameters (call ``zero_grad`` before, ``step`` after). Returns the
    loss, detached."""
    passes = plan_passes([tuple(x.shape) for x in inputs], max_pixels)
    if sum(x.shape[-1] * x.shape[-2] for x in inputs) <= max_pixels:  # all of it fits: one graph, no caching
        loss = loss_of(_outputs(net, inputs, passes, forward))
        loss.backward()
        return loss.detach()
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    with torch.no_grad():
        leaves = [o.detach().requires_grad_(True) for o in _outputs(net, inputs, passes, forward)]
        for n, b in net.named_buffers():
            b.copy_(buffers[n])
    loss = loss_of(leaves)
    loss.backward()
    for members in passes:
        outputs = forward(net, torch.stack([inputs[i] for i in members]))
        grads = torch.stack([leaves[i].grad if leaves[i].grad is not None else torch.zeros_like(leaves[i])
                             for i in members])
        outputs.backward(grads.to(outputs.dtype))
    return loss.detach()


def _outputs(net: nn.Module, inputs: Sequence[Tensor], passes: list[list[int]],
             forward: Callable[[nn.Module, Tensor], Tensor]) -> list[Tensor]:
    """``forward``'s output for each input, in input order, one call per pass."""
    out: dict[int, Tensor] = {}
    for members in passes:
        out.update(zip(members, forward(net, torch.stack([inputs[i] for i in members])), strict=True))
    return [out[i] for i in range(len(inputs))]
