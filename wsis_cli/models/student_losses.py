"""Mask losses for coarse masks (FreeSOLO, after BoxInst), computed inside Mask R-CNN's RoIs.

FreeSOLO trains on masks that are right about *where* an object is but wrong about its outline, so the
per-pixel loss is replaced by terms that only trust the mask's extent (its projections on the two axes)
plus a colour-affinity prior that shapes the outline (reference/upstream-implementations.md §3.3, §4.6):

* ``L_max``  = Dice(max-projection of the sigmoid mask, max-projection of the target), along H and along
  W, summed; weight 1.
* ``L_avg``  = the same on mean projections; weight 0.1.
* ``L_pair`` = for each pixel and its 8 neighbours (a 3×3 window), ``-log P(same label)``
  with ``P = p_i p_j + (1-p_i)(1-p_j)``, kept where the two pixels' Lab colours are similar
  (``exp(-||Lab_i - Lab_j|| / 2) >= 0.3``) and pixel i lies inside the target's box; normalised by the
  number of kept pairs; weight 1, ramped in linearly over the first 1000 iterations.

One departure from FreeSOLO, because these losses work on Mask R-CNN's RoI crops instead of whole-image
masks: the window is not dilated (FreeSOLO and BoxInst use dilation 2 on a smooth, bilinearly upsampled
mask). Mask R-CNN's masks come out of a stride-2 transposed convolution, whose four taps make the four
pixel-parity classes of the grid independent functions; at dilation 2 a pixel only meets pixels of its own
parity, so the pairwise term cannot tie them together (a student with enlarged crops learnt masks of
alternating on/off columns; figures: bench/NOTES.md, "student projection loss: undilated pairs, RoI crops").

A limit that remains: the RoI crop is (nearly) the target's box, and with no pixel outside the box in view
the filled box satisfies every term and costs less than the object (see the loss tests), so on box-filled
labels this loss learns boxes, not shapes. FreeSOLO's whole-image masks have that outside ring; enlarged
mask crops did not help here (same figures).

Everything works on RoI-sized tensors: ``(N, M, M)`` mask logits of the positive proposals, their targets
cropped and resized to the same grid (as torchvision's ``maskrcnn_loss`` does) and the Lab image crops.
Pure torch; no file access.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wsis_cli.runtime.training import linear_ramp

DICE_EPS = 1e-5


def dice_loss(x: Tensor, target: Tensor) -> Tensor:
    """Per-instance ``1 - 2 Σxt / (Σx² + Σt² + eps)`` over all but the first dimension: ``(N, ...) -> (N,)``."""
    n = x.shape[0]
    x = x.reshape(n, -1)
    target = target.reshape(n, -1).to(x.dtype)
    inter = (x * target).sum(dim=1)
    union = (x * x).sum(dim=1) + (target * target).sum(dim=1) + DICE_EPS
    return 1.0 - 2.0 * inter / union


def projection_dice(probs: Tensor, target: Tensor, reduce: str = "max") -> Tensor:
    """Dice between the projections of ``probs`` and ``target`` ``(N, H, W)`` on both axes: ``(N,)``.

    ``reduce="max"`` projects with max (the object's extent), ``"mean"`` with the mean (its thickness).
    """
    if reduce == "max":
        rows = dice_loss(probs.amax(dim=2), target.amax(dim=2))
        cols = dice_loss(probs.amax(dim=1), target.amax(dim=1))
    elif reduce == "mean":
        rows = dice_loss(probs.mean(dim=2), target.mean(dim=2))
        cols = dice_loss(probs.mean(dim=1), target.mean(dim=1))
    else:
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    return rows + cols


def neighbour_offsets(kernel: int = 3, dilation: int = 2) -> list[tuple[int, int]]:
    """The ``kernel² - 1`` (dy, dx) offsets of a dilated window, centre excluded, row-major."""
    r = kernel // 2
    return [(dy * dilation, dx * dilation) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]


def _shifted(x: Tensor, dy: int, dx: int) -> tuple[Tensor, Tensor]:
    """``x[..., y + dy, x + dx]`` for every pixel (zeros outside) and a validity mask ``(H, W)``."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    valid = torch.zeros((h, w), dtype=torch.bool, device=x.device)
    ys, ye = max(0, -dy), min(h, h - dy)
    xs, xe = max(0, -dx), min(w, w - dx)
    if ys < ye and xs < xe:
        out[..., ys:ye, xs:xe] = x[..., ys + dy:ye + dy, xs + dx:xe + dx]
        valid[ys:ye, xs:xe] = True
    return out, valid


def pairwise_log_same(logits: Tensor, kernel: int = 3, dilation: int = 2) -> Tensor:
    """``-log P(pixel and neighbour share a label)`` for ``(N, H, W)`` logits: ``(N, K, H, W)``, K = kernel²-1.

    Computed in log space (``log p = logsigmoid(x)``, ``log(1-p) = logsigmoid(-x)``) so saturated logits
    stay finite. Neighbours outside the grid give 0 (and are excluded by :func:`colour_affinity`'s mask).
    """
    log_fg = F.logsigmoid(logits)
    log_bg = F.logsigmoid(-logits)
    terms = []
    for dy, dx in neighbour_offsets(kernel, dilation):
        fg_j, valid = _shifted(log_fg, dy, dx)
        bg_j, _ = _shifted(log_bg, dy, dx)
        same = torch.logaddexp(log_fg + fg_j, log_bg + bg_j)
        terms.append(torch.where(valid, -same, torch.zeros_like(same)))
    return torch.stack(terms, dim=1)


def colour_affinity(lab: Tensor, kernel: int = 3, dilation: int = 2) -> Tensor:
    """``exp(-||Lab_i - Lab_j|| / 2)`` of each pixel and its window neighbours: ``(N, 3, H, W) -> (N, K, H, W)``.

    ``lab`` is CIE Lab with L in [0, 100] (OpenCV's float conversion, as skimage's). Out-of-grid
    neighbours get 0, so they never pass the similarity threshold.
    """
    sims = []
    for dy, dx in neighbour_offsets(kernel, dilation):
        other, valid = _shifted(lab, dy, dx)
        sim = torch.exp(-0.5 * torch.linalg.vector_norm(lab - other, dim=1))
        sims.append(sim * valid)
    return torch.stack(sims, dim=1)


def box_from_projections(target: Tensor) -> Tensor:
    """The target's box as a mask: outer product of its row and column max projections ``(N, H, W)``."""
    t = (target > 0.5).to(torch.float32)
    return t.amax(dim=2, keepdim=True) * t.amax(dim=1, keepdim=True)


def pairwise_loss(logits: Tensor, lab: Tensor, target: Tensor, *, threshold: float = 0.3, kernel: int = 3,
                  dilation: int = 2) -> Tensor:
    """The colour-affinity term over all instances (a scalar).

    ``logits`` ``(N, H, W)``, ``lab`` ``(N, 3, H, W)`` colour crops, ``target`` ``(N, H, W)`` coarse masks:
    pairs count where colours are similar (≥ ``threshold``) and the pixel lies inside the target's box;
    the sum is divided by ``max(#pairs, 1)``.
    """
    weight = (colour_affinity(lab.float(), kernel, dilation) >= threshold).to(logits.dtype)
    weight = weight * box_from_projections(target)[:, None]
    return (pairwise_log_same(logits, kernel, dilation) * weight).sum() / weight.sum().clamp(min=1.0)


@dataclass
class ProjectionLossWeights:
    """FreeSOLO's weights (``freesolo_30k.yaml``) and the pairwise warm-up."""

    max_proj: float = 1.0
    avg_proj: float = 0.1
    pairwise: float = 1.0
    pairwise_warmup: int = 1000
    colour_threshold: float = 0.3
    kernel: int = 3
    dilation: int = 1


def projection_mask_loss(logits: Tensor, target: Tensor, lab: Tensor | None, step: int,
                         w: ProjectionLossWeights | None = None) -> dict[str, Tensor]:
    """All three terms for ``(N, M, M)`` logits and targets (and Lab crops), weighted: a dict of scalars.

    ``step`` is the training iteration (0-based) for the pairwise warm-up. With no instance the terms are
    ``logits.sum() * 0`` so the graph (and DDP's gradient bookkeeping) stays connected.
    """
    w = w or ProjectionLossWeights()
    if logits.numel() == 0:
        zero = logits.sum() * 0.0
        return {"loss_mask_max": zero, "loss_mask_avg": zero, "loss_mask_pairwise": zero}
    probs = logits.sigmoid()
    target = target.to(probs.dtype)
    out = {
        "loss_mask_max": w.max_proj * projection_dice(probs, target, "max").mean(),
        "loss_mask_avg": w.avg_proj * projection_dice(probs, target, "mean").mean(),
    }
    if lab is None or w.pairwise == 0:
        out["loss_mask_pairwise"] = logits.sum() * 0.0
    else:
        ramp = linear_ramp(step, w.pairwise_warmup)
        pair = pairwise_loss(logits, lab, target, threshold=w.colour_threshold, kernel=w.kernel,
                             dilation=w.dilation)
        out["loss_mask_pairwise"] = w.pairwise * ramp * pair
    return out
