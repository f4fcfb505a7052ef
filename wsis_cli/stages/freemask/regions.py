"""Label-free region proposals for self-supervised pre-training (``wsis freemask --pretrain``).

DetCon (Hénaff et al., 2021, "Efficient Visual Pretraining with Contrastive Detection") contrasts features
pooled under *unsupervised* image regions; it uses cheap low-level segmentations (Felzenszwalb-Huttenlocher
or SLIC superpixels), which need not be objects, only roughly follow their boundaries. Ours is SLIC's
criterion without its grid constraint: k-means over CIE Lab colour and position, on a lightly blurred copy
of the image, then each cluster split into its 4-connected components (a colour shared by two far-apart
objects must not make them one region). Components below ``min_fraction`` of the image are dropped (they
take part in no loss term). Pure numpy/torch on one image; no file access.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = ["region_proposals"]


def _kmeans(points: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Cluster index of each of ``(N, D)`` points: k-means++ seeding, then Lloyd iterations."""
    n = points.shape[0]
    centres = points[torch.randint(n, (1,), generator=generator)]
    for _ in range(k - 1):
        d = torch.cdist(points, centres).min(dim=1).values.square()
        if float(d.sum()) <= 0:
            break
        centres = torch.cat([centres, points[torch.multinomial(d / d.sum(), 1, generator=generator)]])
    assign = torch.cdist(points, centres).argmin(dim=1)
    for _ in range(iters):
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=centres.shape[0]).clamp_min(1)[:, None]
        centres = sums / counts
        new = torch.cdist(points, centres).argmin(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


def region_proposals(image: np.ndarray, k: int = 8, *, position_weight: float = 1.0, min_fraction: float = 0.005,
                     max_side: int = 128, iters: int = 15, seed: int = 0) -> np.ndarray:
    """``(M, H, W)`` bool regions of an ``(H, W, 3)`` uint8 RGB image (disjoint, not necessarily covering it).

    Args:
        k: clusters (each may give several connected regions).
        position_weight: weight of the ``(y, x)`` position (relative to the long side, times 2) against
            the colour, which is standardised per image: higher gives more compact, grid-like regions.
        min_fraction: smallest region kept, as a fraction of the image.
        max_side: the clustering runs on a copy at most this long (regions are resized back), so the cost
            does not grow with the image.
        seed: k-means++ seeding (the same seed gives the same regions).
    """
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    small = image if scale == 1.0 else cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                  interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    small = cv2.GaussianBlur(np.ascontiguousarray(small), (0, 0), 1.0)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    lab = (lab - lab.mean(axis=0)) / (float(lab.std(axis=0).mean()) + 1e-6)
    ys, xs = np.mgrid[0:sh, 0:sw].astype(np.float32)
    pos = np.stack([ys.ravel(), xs.ravel()], axis=1) * (2.0 * position_weight / max(sh, sw))
    points = torch.from_numpy(np.concatenate([lab, pos], axis=1))
    assign = _kmeans(points, max(1, min(k, points.shape[0])), iters, torch.Generator().manual_seed(seed))
    labels = assign.reshape(sh, sw).numpy().astype(np.uint8)
    regions = []
    for c in np.unique(labels):
        n, comp = cv2.connectedComponents((labels == c).astype(np.uint8), connectivity=4)
        for q in range(1, n):
            m = comp == q
            if scale != 1.0:
                m = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
            if m.sum() >= max(1.0, min_fraction * h * w):
                regions.append(m)
    return np.stack(regions) if regions else np.zeros((0, h, w), bool)
