"""Instances out of Free Mask's masks: each mask split into its connected components (``--split``).

A key-query similarity mask is category-level: a query on one nucleus lights up every nucleus, so one mask
holds many instances. Each 8-connected component of each kept mask becomes a candidate instance, scored by
its parent's decayed maskness times the parent's mean soft value over the component (a faint fragment of a
good mask ranks below its solid parts). Parents overlap, so the same object comes out of several of them:
greedy NMS over the components (best first, IoU above ``iou`` suppressed) keeps one, at most ``limit``.

Pairwise IoUs come from one joint histogram of the two label maps per pair of parents: components of
one parent are disjoint, so no ``C x H x W`` stack of component masks is ever built, and only the pairs above
``iou`` are kept (a sparse list: a small-object image can have tens of thousands of components, whose dense
``C x C`` matrix would take gigabytes).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def split_components(masks: Tensor, scores: Tensor, soft: Tensor, *, min_pixels: int = 4, iou: float = 0.5,
                     limit: int = 999) -> tuple[Tensor, Tensor, Tensor]:
    """Components of ``masks`` as instances.

    Args:
        masks: ``(K, H, W)`` bool parent masks at image size.
        scores: ``(K,)`` their scores.
        soft: ``(K, h, w)`` their soft masks (any resolution; upsampled to ``H x W`` for the scores).
        min_pixels: components smaller than this are dropped (specks of the upsampled threshold).
        iou: a component overlapping a better one more than this is a duplicate.
        limit: at most this many instances.
    Returns:
        ``(masks (C, H, W) bool, scores (C,) float32, parent (C,) int64)``, best first.
    """
    k, h, w = masks.shape
    device = masks.device
    labels: list[np.ndarray] = []
    offsets = [0]
    parent, area, box, score = [], [], [], []
    for i in range(k):
        n, lab, stats, _ = cv2.connectedComponentsWithStats(masks[i].cpu().numpy().astype(np.uint8), connectivity=8)
        ok = stats[:, cv2.CC_STAT_AREA] >= min_pixels
        ok[0] = False  # the background label
        remap = np.zeros(n, np.int32)
        remap[ok] = np.arange(1, int(ok.sum()) + 1)
        lab = remap[lab]
        m = int(ok.sum())
        labels.append(lab)
        offsets.append(offsets[-1] + m)
        if m == 0:
            continue
        up = F.interpolate(soft[i][None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        mean_soft = np.bincount(lab.ravel(), weights=up.cpu().numpy().ravel(), minlength=m + 1)[1:]
        parent += [i] * m
        area.append(stats[ok, cv2.CC_STAT_AREA].astype(np.float64))
        box.append(stats[ok, :4])
        score.append(float(scores[i]) * mean_soft / stats[ok, cv2.CC_STAT_AREA])
    total = offsets[-1]
    if total == 0:
        return (torch.zeros((0, h, w), dtype=torch.bool, device=device), torch.zeros(0, device=device),
                torch.zeros(0, dtype=torch.int64, device=device))
    areas, boxes, s = np.concatenate(area), np.concatenate(box), np.concatenate(score)
    indptr, neighbours = _duplicates(labels, offsets, areas, iou)
    keep: list[int] = []
    suppressed = np.zeros(total, bool)
    for j in np.argsort(-s, kind="stable"):
        if suppressed[j]:
            continue
        keep.append(int(j))
        if len(keep) == limit:
            break
        suppressed[neighbours[indptr[j]:indptr[j + 1]]] = True
    out = torch.zeros((len(keep), h, w), dtype=torch.bool)
    parents = np.asarray(parent, np.int64)
    for r, j in enumerate(keep):
        p = parents[j]
        x, y, bw, bh = boxes[j]
        out[r, y:y + bh, x:x + bw] = torch.from_numpy(labels[p][y:y + bh, x:x + bw] == j - offsets[p] + 1)
    idx = np.asarray(keep, np.int64)
    return (out.to(device), torch.from_numpy(s[idx].astype(np.float32)).to(device),
            torch.from_numpy(parents[idx]).to(device))


def _duplicates(labels: list[np.ndarray], offsets: list[int], areas: np.ndarray,
                iou: float) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of components with IoU above ``iou``, as CSR rows: component ``j``'s duplicates are
    ``neighbours[indptr[j]:indptr[j + 1]]`` (none within one parent: its components are disjoint)."""
    total = offsets[-1]
    rows, cols = [], []
    for a in range(len(labels)):
        na = offsets[a + 1] - offsets[a]
        if na == 0:
            continue
        fa = labels[a] > 0
        for b in range(a + 1, len(labels)):
            nb = offsets[b + 1] - offsets[b]
            if nb == 0:
                continue
            both = fa & (labels[b] > 0)
            if not both.any():
                continue
            hist = np.bincount((labels[a][both] - 1) * nb + labels[b][both] - 1, minlength=na * nb).reshape(na, nb)
            ia, ib = np.nonzero(hist)
            ga, gb = offsets[a] + ia, offsets[b] + ib
            inter = hist[ia, ib]
            dup = inter / (areas[ga] + areas[gb] - inter) > iou
            rows += [ga[dup], gb[dup]]
            cols += [gb[dup], ga[dup]]
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    order = np.argsort(r, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=total))])
    return indptr, c[order]
