"""The optimised PyTorch mean-field CRF: the CPU path of :func:`wsis_kernels.mean_field_crf`.

It runs on any device (``WSIS_KERNELS=reference`` forces it on CUDA too); the parity tests hold it against
the plain oracle :mod:`wsis_kernels.crf.reference`. The window pass, normalisation and
start state it iterates are in :mod:`wsis_kernels.crf.window`. With two labels and the mean-field message,
``Q_bg = 1 - Q_fg`` makes ``m_bg = S - m_fg`` with ``S = sum_j k(i, j)``, so only the foreground message is
accumulated (``S`` is gathered once).

With many labels (two from :data:`TWO_LABEL_INCREMENTAL_PIXELS` and :data:`TWO_LABEL_INCREMENTAL_ITERATIONS`
on) and ``sparse_eps > 0`` (the default), :func:`mean_field_crf_cpu` hands the loop to
:mod:`wsis_kernels.crf.incremental`, which propagates only the changes of ``Q`` larger than ``sparse_eps``;
``sparse_eps = 0`` runs :func:`_multi` here, the exact banded loop.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import parallel
from .incremental import IncrementalMeanField
from .params import CRFParams
from .window import (
    MANY_LABELS,
    MessagePass,
    expand_box,
    floor_normalise,
    initial_state,
    log_floor,
    log_mask,
    normalise_labels,
    unary_logits,
)

# Two labels go through the incremental loop from this many pixels per image and iterations on; below, the
# foreground-only loop is faster (figures: bench/NOTES.md, "CRF: when two labels take the incremental loop").
TWO_LABEL_INCREMENTAL_PIXELS = 96 * 96
TWO_LABEL_INCREMENTAL_ITERATIONS = 8

def _normalise_binary(z_fg: Tensor, z_bg: Tensor, log_box_fg: Tensor | None, eps: float) -> Tensor:
    """Two-label :func:`normalise_labels` returning the foreground only (inputs are overwritten)."""
    if log_box_fg is not None:
        z_fg.add_(log_box_fg)
    if eps == 0:
        return torch.sigmoid(z_fg.sub_(z_bg))
    m = torch.maximum(z_fg, z_bg).clamp_(min=math.log(eps))
    z_fg.sub_(m).exp_()
    den = z_bg.sub_(m).exp_().add_(z_fg).add_(m.neg_().add_(math.log(eps)).exp_())
    return z_fg.div_(den)


def _binary(
    img: Tensor,
    p: Tensor,
    unary_fg: Tensor | None,
    unary_bg: Tensor | None,
    log_box_fg: Tensor | None,
    params: CRFParams,
) -> Tensor:
    """Iterate on the foreground probability ``p`` (``(B, 1, H, W)``, background ``1 - p``)."""
    passes = MessagePass(img, params)
    weight_sum: Tensor | None = None
    for _ in range(params.iterations):
        if params.message == "mean_field":
            msg = torch.zeros_like(p)
            if weight_sum is None:  # S = sum_j k(i, j) does not change: gather it on the first pass
                weight_sum = torch.zeros_like(p)
                passes.run(msg, p, weight_sum)
            else:
                passes.run(msg, p)
            z_fg, z_bg = msg, weight_sum - msg  # m_bg = sum_j k (1 - p_j) = S - m_fg
        else:
            src = torch.cat([log_floor(1.0 - p, params.unary_floor), log_floor(p, params.unary_floor)], 1)
            msg = torch.zeros_like(src)
            passes.run(msg, src)
            z_bg, z_fg = msg[:, 0:1], msg[:, 1:2]
        if unary_fg is not None and unary_bg is not None:
            z_fg.add_(unary_fg)
            z_bg.add_(unary_bg)
        p = _normalise_binary(z_fg, z_bg, log_box_fg, params.norm_eps)
        if params.clamp is not None:
            p = p.clamp_(*params.clamp)
    return p.contiguous()


def _multi(img: Tensor, q: Tensor, unary: Tensor | None, log_box: Tensor | None, params: CRFParams) -> Tensor:
    passes = MessagePass(img, params)
    # Two (B, L, H, W) buffers swap roles each iteration (state in, message out) and one more holds
    # log q for MAL's message: no allocation inside the loop.
    msg = torch.empty_like(q)
    logq = torch.empty_like(q) if params.message == "log_pool" else None
    scratch = (q.new_empty(q[:, :1].shape), q.new_empty(q[:, :1].shape))
    for _ in range(params.iterations):
        if unary is None:
            msg.zero_()
        else:
            msg.copy_(unary)  # the unary term starts the sum
        if logq is not None:
            torch.clamp_min(q, params.unary_floor, out=logq).log_()
        passes.run(msg, q if logq is None else logq)
        q, msg = normalise_labels(msg, log_box, params.norm_eps, scratch), q
        if params.clamp is not None:
            q.clamp_(*params.clamp)
    return q


def mean_field_crf_cpu(image: Tensor, probs: Tensor, box: Tensor | None, params: CRFParams) -> Tensor:
    """The CPU path's mean-field CRF. Shapes as in :func:`wsis_kernels.mean_field_crf` (validated there).

    Returns float32 ``(B, L, H, W)``: the refined foreground probability for ``L = 1``, label
    probabilities otherwise. On CPU with many labels the passes run on up to ``torch.get_num_threads()``
    threads (:mod:`wsis_kernels.crf.parallel`); the result does not depend on the thread count.
    """
    if image.device.type != "cpu" or probs.shape[1] < MANY_LABELS:
        return _cpu(image, probs, box, params)
    with parallel.own_ops_single_threaded():
        return _cpu(image, probs, box, params)


def _cpu(image: Tensor, probs: Tensor, box: Tensor | None, params: CRFParams) -> Tensor:
    labels = probs.shape[1]
    img = image.to(torch.float32).contiguous()
    box32 = None if box is None else box.to(torch.float32)
    if labels == 1:
        q, unary = initial_state(probs, box32, params), unary_logits(probs, params)
        u_bg, u_fg = (None, None) if unary is None else (unary[:, 0:1], unary[:, 1:2])
        return _binary(img, q, u_fg, u_bg, log_mask(box32), params)
    boxes = expand_box(box32, labels)
    two_label_fast = (
        labels == 2
        and params.message == "mean_field"
        and params.clamp is None
        and params.norm_eps == 0
        and (boxes is None or bool((boxes[:, 0] == 1).all()))
    )

    incremental = IncrementalMeanField.applicable(params)
    large = (img.shape[2] * img.shape[3] >= TWO_LABEL_INCREMENTAL_PIXELS
             and params.iterations >= TWO_LABEL_INCREMENTAL_ITERATIONS)
    if two_label_fast and not (incremental and large):
        # Q_bg = 1 - Q_fg exactly in this mode, so iterate on the foreground alone.
        q, unary = _multi_start(probs, boxes, params)
        u_bg, u_fg = (None, None) if unary is None else (unary[:, 0:1], unary[:, 1:2])
        log_box_fg = None if boxes is None else log_mask(boxes[:, 1:2])
        p = _binary(img, q[:, 1:2].contiguous(), u_fg, u_bg, log_box_fg, params)
        return torch.cat([1.0 - p, p], dim=1)
    if incremental:
        return IncrementalMeanField(img, params, labels).run(probs, boxes)
    q, unary = _multi_start(probs, boxes, params)
    return _multi(img, q, unary, log_mask(boxes), params)


def _multi_start(probs: Tensor, boxes: Tensor | None, params: CRFParams) -> tuple[Tensor, Tensor | None]:
    """:func:`initial_state` and :func:`unary_logits` for ``L >= 2`` (``boxes`` already expanded)."""
    q = floor_normalise(probs, boxes, params.unary_floor)
    if params.clamp is not None:
        q.clamp_(*params.clamp)
    return q, unary_logits(probs, params)


def crf_labels_cpu(probs: Tensor, threshold: float = 0.5) -> Tensor:
    """Hard labels ``(B, H, W)`` int64: ``p > threshold`` for one label, ``argmax`` over labels otherwise."""
    if probs.shape[1] == 1:
        return (probs[:, 0] > threshold).to(torch.int64)
    return probs.argmax(dim=1)
