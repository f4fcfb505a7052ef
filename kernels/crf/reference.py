"""The oracle: a plain, slow mean-field CRF written straight from the model in :mod:`wsis_kernels.crf.params`.

Nothing here is tuned. It works in float64, keeps every label (no two-label shortcut, no incremental
updates, no bands or threads) and computes each window tap's kernel directly from its definition. The parity
tests hold the optimised CPU path (:mod:`wsis_kernels.crf.cpu`) and the Triton path against it on small
images. :func:`wsis_kernels.mean_field_crf` never dispatches here.

The model, per image:

* labels: ``L = 1`` is a binary problem on the rows ``[1 - p, p]`` (background, foreground) whose
  foreground row is returned; ``L >= 2`` are the labels themselves;
* box: a one-channel box constrains every label but 0 (for ``L = 1``, the foreground); missing: all ones;
* start: ``Q_0 = box * p`` for ``L = 1``; otherwise ``box * max(P, floor)`` normalised over labels
  (0 where every label is boxed out); then clamped when ``clamp`` is set;
* unary: ``unary_weight * log max(P, floor)`` per row;
* each iteration: ``z_l(i) = unary_l(i) + sum_j k(i, j) phi(Q_l(j))`` over the window neighbours ``j``
  inside the image (``phi(q) = q`` for ``mean_field``, ``log max(q, floor)`` for ``log_pool``), then
  ``Q_l = box_l exp(z_l) / (sum_l' box_l' exp(z_l') + norm_eps)`` (0 where that is 0 / 0), then clamped.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .params import CRFParams


def pairwise_weight(params: CRFParams, dy: int, dx: int, colour_distance2: Tensor) -> Tensor:
    """``k(i, j)`` for ``j = i + (dy, dx)`` (pixels) given ``|I_i - I_j|^2``; the centre only when included."""
    if dy == 0 and dx == 0 and not params.include_centre:
        return torch.zeros_like(colour_distance2)
    position2 = float(dy * dy + dx * dx)
    bilateral = torch.ones_like(colour_distance2)
    if not math.isinf(params.theta_alpha):
        bilateral = bilateral * math.exp(-position2 / (2 * params.theta_alpha**2))
    if not math.isinf(params.theta_beta):
        bilateral = bilateral * torch.exp(-colour_distance2 / (2 * params.theta_beta**2))
    smooth = 1.0 if math.isinf(params.theta_gamma) else math.exp(-position2 / (2 * params.theta_gamma**2))
    return params.w_appearance * bilateral + params.w_smooth * smooth


def message(image: Tensor, state: Tensor, params: CRFParams) -> Tensor:
    """``m_l(i) = sum_j k(i, j) state_l(j)`` over the window taps whose neighbour ``j`` is inside the image.

    ``image`` is ``(C, H, W)``, ``state`` ``(R, H, W)``; both float64.
    """
    _, height, width = image.shape
    out = torch.zeros_like(state)
    r, d = params.kernel_size // 2, params.dilation
    for ty in range(-r, r + 1):
        for tx in range(-r, r + 1):
            dy, dx = ty * d, tx * d
            # pixels i = (y, x) whose neighbour (y + dy, x + dx) lies inside the image
            y0, y1 = max(0, -dy), min(height, height - dy)
            x0, x1 = max(0, -dx), min(width, width - dx)
            if y1 <= y0 or x1 <= x0:
                continue
            here = image[:, y0:y1, x0:x1]
            there = image[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx]
            weight = pairwise_weight(params, dy, dx, ((here - there) ** 2).sum(0))
            out[:, y0:y1, x0:x1] += weight * state[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    return out


def normalise(z: Tensor, box: Tensor, eps: float) -> Tensor:
    """``box * exp(z) / (sum_labels box * exp(z) + eps)`` over dim 0, computed max-subtracted; 0 for 0 / 0."""
    top = z.max(dim=0, keepdim=True).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    numerator = box * torch.exp(z - top)
    denominator = numerator.sum(dim=0, keepdim=True) + eps * torch.exp(-top)
    return torch.where(denominator > 0, numerator / denominator, torch.zeros_like(numerator))


def mean_field_crf_oracle(image: Tensor, probs: Tensor, box: Tensor | None, params: CRFParams) -> Tensor:
    """The documented model, image by image. Same arguments and result as :func:`wsis_kernels.mean_field_crf`."""
    results = []
    for b in range(image.shape[0]):
        img = image[b].to(torch.float64)
        p = probs[b].to(torch.float64)
        labels = p.shape[0]
        rows = torch.cat([1 - p, p]) if labels == 1 else p
        if box is None:
            boxes = torch.ones_like(rows)
        elif box.shape[1] == rows.shape[0]:
            boxes = box[b].to(torch.float64)
        else:  # one channel: every label but the background
            one = box[b].to(torch.float64)
            boxes = torch.cat([torch.ones_like(one), one.expand(rows.shape[0] - 1, -1, -1)])
        if labels == 1:
            q = boxes * torch.cat([1 - p, p])  # only the foreground row is the state
        else:
            q = boxes * rows.clamp_min(params.unary_floor)
            total = q.sum(dim=0, keepdim=True)
            q = torch.where(total > 0, q / total, torch.zeros_like(q))
        if params.clamp is not None:
            q = q.clamp(*params.clamp)
        unary = params.unary_weight * rows.clamp_min(params.unary_floor).log()
        for _ in range(params.iterations):
            state = torch.cat([1 - q[1:2], q[1:2]]) if labels == 1 else q
            if params.message == "log_pool":
                state = state.clamp_min(params.unary_floor).log()
            q = normalise(unary + message(img, state, params), boxes, params.norm_eps)
            if params.clamp is not None:
                q = q.clamp(*params.clamp)
        results.append(q[1:2] if labels == 1 else q)
    return torch.stack(results).to(torch.float32)
