"""Free Mask on one image's dense features: pyramid queries, score maps, matrix NMS, top-k, filters.

FreeSOLO's ``demo/inference_freemask.py`` (see ``reference/upstream-implementations.md`` §3.2), written
as pure tensor functions. Queries are the L2-normalised features bilinearly downsampled at each pyramid
scale; every query's cosine score map against the keys (the features themselves) is min-max normalised
into a soft mask, thresholded into a mask and ranked by maskness; matrix NMS decays the maskness of masks
that overlap better ones; the top ``k`` are upsampled to the image and filtered, and with ``split`` each
becomes its connected components (:mod:`~wsis_cli.stages.freemask.components`).

Memory scales with the *kept* queries: :func:`wsis_kernels.score_maps.score_map_stats` gives the
per-query numbers without holding the ``N x h*w`` score block, and only a prefix of the maskness ranking
is materialised (:func:`wsis_kernels.score_maps.soft_masks`) for NMS. The prefix is grown until it
provably holds the same top ``k`` as NMS over every candidate would: matrix NMS only decays scores
(decay <= 1) and the decay of a mask depends only on better-ranked masks, so once ``k`` decayed scores in
the prefix reach the raw maskness of the first mask left out, nothing outside can enter the top ``k``.
:func:`free_masks` with ``dense=True`` is the plain materialising computation (tests and benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wsis_cli.stages.freemask.settings import MAX_TOP_K, FreeMaskParams
from wsis_kernels.score_maps import ScoreMapStats, score_map_stats, soft_masks

__all__ = ["FreeMaskParams", "FreeMasks", "free_masks", "matrix_nms", "pyramid_queries", "query_embeddings",
           "upstream_box_stats"]


@dataclass
class FreeMasks:
    """Free Mask output of one image, best first (``K`` masks).

    ``masks`` (K, H, W) bool at image size; ``scores`` (K,) float32 decayed maskness; ``embeddings``
    (K, embed_dim) float32; ``queries`` (K,) int64 index of each mask's query in the pyramid;
    ``soft`` (K, h, w) float32 soft masks at feature resolution.
    """

    masks: Tensor
    scores: Tensor
    embeddings: Tensor
    queries: Tensor
    soft: Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def pyramid_queries(keys: Tensor, scales: tuple[float, ...]) -> Tensor:
    """``(N, E)`` L2-normalised queries: the ``(E, h, w)`` keys bilinearly resized by each scale, flattened
    and concatenated (scale order, row-major). A scale that would leave no pixel is skipped."""
    e, h, w = keys.shape
    # channels-last: each output pixel reads E contiguous values (3x faster for E = 2,048, same numbers)
    src = keys[None].contiguous(memory_format=torch.channels_last)
    out = []
    for s in scales:
        if s == 1.0:
            q = src
        else:
            if int(h * s) < 1 or int(w * s) < 1:
                continue
            q = F.interpolate(src, scale_factor=s, mode="bilinear", align_corners=False)
        out.append(q[0].permute(1, 2, 0).reshape(-1, e))
    return F.normalize(torch.cat(out, dim=0), dim=1)


def query_embeddings(queries: Tensor, dim: int = 128) -> Tensor:
    """``(K, E)`` queries → ``(K, dim)``: linear interpolation along the channel axis, as FreeSOLO does."""
    if queries.shape[0] == 0:
        return queries.new_zeros((0, dim), dtype=torch.float32)
    return F.interpolate(queries[None].float(), size=dim, mode="linear", align_corners=False)[0]


def matrix_nms(masks: Tensor, scores: Tensor, sigma: float = 2.0) -> Tensor:
    """Class-agnostic Gaussian matrix NMS (SOLOv2 / FreeSOLO form): the decayed scores.

    Args:
        masks: ``(M, ...)`` binary masks, sorted by ``scores`` descending.
        scores: ``(M,)`` sorted descending.
    Returns:
        ``(M,)`` float32 ``scores * decay`` with ``decay_j = min_{i<j} exp(-sigma*iou_ij**2) /
        exp(-sigma*comp_i**2)`` (1 for the first mask), where ``comp_i`` is the largest IoU of mask ``i``
        with any better-ranked mask. Note ``sigma * iou**2``, not ``iou**2 / sigma``.
    """
    n = masks.shape[0]
    if n == 0:
        return scores.to(torch.float32)
    m = masks.reshape(n, -1).to(torch.float32)
    inter = m @ m.t()
    area = m.sum(dim=1)
    union = area[:, None] + area[None, :] - inter
    # iou[i, j] for i ranked above j; zero on and below the diagonal
    iou = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter)).triu(diagonal=1)
    comp = iou.max(dim=0).values  # comp[i] = max IoU of i with a better mask
    ratio = torch.exp(-sigma * iou**2) / torch.exp(-sigma * comp**2)[:, None]
    # rows i >= j carry iou 0 and ratio >= 1; row 0 gives <= 1 for every j > 0, so they never win the min
    decay = ratio.min(dim=0).values.clamp(max=1.0)
    return scores.to(torch.float32) * decay


def upstream_box_stats(masks: Tensor) -> tuple[Tensor, Tensor]:
    """FreeSOLO's box geometry used by its filters: ``(center_y, width)`` per ``(K, H, W)`` mask.

    Width is the number of occupied columns; centre y the mean of the occupied rows (the centre of mass
    of the row-occupancy projection). An empty mask gets centre 0 and width 0.
    """
    rows = masks.any(dim=2).to(torch.float32)  # (K, H)
    cols = masks.any(dim=1)
    ys = torch.arange(masks.shape[1], device=masks.device, dtype=torch.float32)
    cy = (rows * ys).sum(dim=1) / rows.sum(dim=1).clamp_min(1)
    return cy, cols.sum(dim=1).to(torch.float32)


def _stats_dense(keys: Tensor, queries: Tensor, threshold: float) -> tuple[ScoreMapStats, Tensor]:
    """Materialising statistics: the whole ``(N, h*w)`` normalised score block (reference for tests)."""
    s = queries.to(torch.float32) @ keys.reshape(keys.shape[0], -1).to(torch.float32)
    mn, mx = s.min(dim=1).values, s.max(dim=1).values
    rng = mx - mn
    soft = (s - mn[:, None]) / torch.where(rng > 0, rng, torch.ones_like(rng))[:, None]
    fg = soft >= threshold
    area = fg.sum(dim=1)
    maskness = (soft * fg).sum(dim=1) / area.clamp_min(1)
    maskness = torch.where(area > 0, maskness, torch.zeros_like(maskness))
    return ScoreMapStats(mn, mx, maskness, area), soft


def _nms_top_k(keys: Tensor, queries: Tensor, stats: ScoreMapStats, order: Tensor,
               p: FreeMaskParams) -> tuple[Tensor, Tensor, Tensor]:
    """Grow the materialised prefix of ``order`` until its top-k after NMS is the global one.

    Returns ``(kept query indices, their decayed scores, their (k, h, w) soft masks)``, best first.
    """
    n = order.numel()
    m = min(n, max(p.pre_nms, p.top_k))
    h, w = keys.shape[1:]
    while True:
        idx = order[:m]
        soft = soft_masks(keys, queries, idx, stats.min, stats.max)
        decayed = matrix_nms(soft >= p.threshold, stats.maskness[idx], p.sigma)
        k = min(p.top_k, m)
        best = torch.topk(decayed, k, sorted=True)
        if m == n or (k == p.top_k and float(best.values[-1]) >= float(stats.maskness[order[m]])):
            break
        m = min(n, 2 * m)
    return idx[best.indices], best.values, soft[best.indices].reshape(k, h, w)


def free_masks(features: Tensor, image_size: tuple[int, int], params: FreeMaskParams | None = None,
               *, dense: bool = False) -> FreeMasks:
    """Free Mask of one image.

    Args:
        features: ``(E, h, w)`` dense backbone features (any float dtype).
        image_size: ``(H, W)`` the masks are upsampled to.
        params: algorithm settings (FreeSOLO's defaults when None).
        dense: materialise every score map (the plain reference computation) instead of the kernel path.
    Returns:
        :class:`FreeMasks`, at most ``params.top_k``, filtered, best first; every mask non-empty.
    """
    p = params or FreeMaskParams()
    keys = F.normalize(features.to(torch.float32), dim=0)
    queries = pyramid_queries(keys, p.scales)
    h, w = keys.shape[1:]
    if dense:
        stats, all_soft = _stats_dense(keys, queries, p.threshold)
    else:
        stats = score_map_stats(keys, queries, p.threshold)
    cand = torch.nonzero(stats.area > p.min_area).flatten()
    # stable: equal maskness keeps query order, so both paths rank ties alike
    order = cand[torch.sort(stats.maskness[cand], descending=True, stable=True).indices]
    if order.numel() == 0:
        kept = order
        scores = stats.maskness[:0]
        soft = keys.new_zeros((0, h, w))
    elif dense:
        soft_all = all_soft[order]
        decayed = matrix_nms(soft_all >= p.threshold, stats.maskness[order], p.sigma)
        best = torch.topk(decayed, min(p.top_k, order.numel()), sorted=True)
        kept, scores, soft = order[best.indices], best.values, soft_all[best.indices].reshape(-1, h, w)
    else:
        kept, scores, soft = _nms_top_k(keys, queries, stats, order, p)
    return _finish(queries, kept, scores, soft, image_size, p)


def _finish(queries: Tensor, kept: Tensor, scores: Tensor, soft: Tensor, image_size: tuple[int, int],
            p: FreeMaskParams) -> FreeMasks:
    """Upsample the kept soft masks, threshold, apply the filters and compute the embeddings."""
    H, W = image_size
    if kept.numel():
        # one mask at a time, thresholded straight into the output: only the bool masks are kept at
        # image size, never K float32 maps (nor a stacking copy)
        masks = torch.empty((soft.shape[0], H, W), dtype=torch.bool, device=soft.device)
        for i, s in enumerate(soft):
            up = F.interpolate(s[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
            torch.ge(up, p.mask_threshold, out=masks[i])
    else:
        masks = torch.zeros((0, H, W), dtype=torch.bool, device=soft.device)
    cy, width = upstream_box_stats(masks)
    keep = masks.flatten(1).any(dim=1)
    if p.min_score is not None:
        keep &= scores >= p.min_score
    if p.min_center_y is not None:
        keep &= cy > p.min_center_y * H
    if p.max_width is not None:
        keep &= width < p.max_width * W
    kept, masks, scores, soft = kept[keep], masks[keep], scores[keep].to(torch.float32), soft[keep]
    if p.split and kept.numel():
        from wsis_cli.stages.freemask.components import split_components

        masks, scores, parent = split_components(masks, scores, soft, limit=MAX_TOP_K)
        kept, soft = kept[parent], soft[parent]
    return FreeMasks(
        masks=masks,
        scores=scores,
        embeddings=query_embeddings(queries[kept], p.embed_dim),
        queries=kept,
        soft=soft,
    )
