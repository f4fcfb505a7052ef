"""Inter-pixel relation mining: CAMs → confident foreground / background / ignore label maps.

Upstream ``cam_to_ir_label``: the CAMs are upsampled to the image, a constant background channel is put in
front of them twice, once high (0.30: only strong CAM is foreground) and once low (0.05: only weak CAM is
background); each arg-max map is refined by a CRF whose unary trusts the label with probability 0.7, and
the two are combined: the high map's classes are confident foreground, pixels both maps call background
are confident background, everything else is ignored (255). Upstream runs pydensecrf at full resolution;
here the CRF is :func:`wsis_kernels.crf.mean_field_crf` (a truncated dense CRF on a local dilated window,
its defaults tuned to match the dense CRF) at full resolution, on the CPU or the GPU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsis_kernels.crf import CRFParams, crf_labels, mean_field_crf

FG_THRESHOLD = 0.30
BG_THRESHOLD = 0.05
GT_PROB = 0.7
IGNORE = 255
STRIDE = 4


def upsample_cams(cams: Tensor, height: int, width: int) -> Tensor:
    """``(K, h, w)`` stride-4 CAMs → ``(K, H, W)`` float32: bilinear x4 (align_corners=False), cropped."""
    if cams.shape[0] == 0:
        return cams.new_zeros((0, height, width), dtype=torch.float32)
    up = F.interpolate(cams.float()[None], scale_factor=STRIDE, mode="bilinear", align_corners=False)[0]
    return up[:, :height, :width]


def label_unary(labels: Tensor, num_labels: int, gt_prob: float = GT_PROB) -> Tensor:
    """``(L, H, W)`` probabilities from hard labels: ``gt_prob`` on the label, the rest spread evenly."""
    other = (1.0 - gt_prob) / max(num_labels - 1, 1)
    probs = torch.full((num_labels, *labels.shape), other, dtype=torch.float32, device=labels.device)
    probs.scatter_(0, labels[None], gt_prob)
    return probs


def crf_refine(image: Tensor, labels: Tensor, num_labels: int, params: CRFParams, gt_prob: float = GT_PROB) -> Tensor:
    """Refine ``(H, W)`` int64 labels in ``[0, num_labels)`` on ``(3, H, W)`` [0, 1] colours; returns labels."""
    if num_labels < 2:
        return labels
    probs = mean_field_crf(image[None], label_unary(labels, num_labels, gt_prob)[None], None, params)
    return crf_labels(probs)[0]


def confident_labels(image: Tensor, cams: Tensor, threshold: float, params: CRFParams) -> Tensor:
    """CRF-refined arg-max of ``[threshold, cams...]``: ``(H, W)`` int64, 0 background, k = channel k - 1.

    Args:
        image: ``(3, H, W)`` float in [0, 1]; cams: ``(K, H, W)`` full-resolution CAMs in [0, 1].
    """
    padded = F.pad(cams, (0, 0, 0, 0, 1, 0), value=threshold)
    return crf_refine(image, padded.argmax(0), cams.shape[0] + 1, params)


def relation_labels(image: np.ndarray, cams: np.ndarray, *, fg_threshold: float = FG_THRESHOLD,
                    bg_threshold: float = BG_THRESHOLD, params: CRFParams | None = None,
                    device: torch.device | str = "cpu") -> np.ndarray:
    """Confident labels of one image at full resolution (upstream IR labels).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        cams: ``(K, ceil(H/4), ceil(W/4))`` stride-4 CAMs of the image's classes in [0, 1].
    Returns:
        ``(H, W)`` uint8: 0 confident background, ``k`` (1..K) confident foreground of CAM channel
        ``k - 1``, 255 unknown.
    """
    params = params or CRFParams()
    height, width = image.shape[:2]
    img = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float().div_(255.0)
    full = upsample_cams(torch.from_numpy(np.asarray(cams, np.float32)).to(device), height, width)
    fg = confident_labels(img, full, fg_threshold, params)
    bg = confident_labels(img, full, bg_threshold, params)
    out = fg.clone()
    out[fg == 0] = IGNORE
    out[(fg == 0) & (bg == 0)] = 0
    return out.to(torch.uint8).cpu().numpy()


def strided_labels(labels: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    """Nearest-neighbour subsampling to the ``ceil(H/s) x ceil(W/s)`` grid (the centre pixel of each cell)."""
    height, width = labels.shape
    ys = np.minimum(np.arange(0, height, stride) + stride // 2, height - 1)
    xs = np.minimum(np.arange(0, width, stride) + stride // 2, width - 1)
    return labels[ys][:, xs]


def cam_basins(labels: np.ndarray, cams: np.ndarray, seed_threshold: float) -> np.ndarray:
    """Split each class's confident foreground into the basins of its CAM peaks (an extension; see below).

    IRNet's relation labels are class labels, so the displacement loss treats two touching instances of
    one class as one and teaches the field to send both to one centroid. A CAM usually peaks once per
    object: the connected parts of ``cam >= seed_threshold`` inside a class's foreground are taken as
    seeds, and every foreground pixel of that class joins its nearest seed. Pairs across two basins are
    then left out of the displacement loss (not pushed apart: a basin boundary is a guess).

    Args:
        labels: ``(H, W)`` relation labels from :func:`relation_labels`.
        cams: ``(K, ceil(H/4), ceil(W/4))`` stride-4 CAMs in [0, 1].
    Returns:
        ``(H, W)`` int32 basin ids (0 where ``labels`` is not foreground); a class with fewer than two
        seeds is one basin.
    """
    import cv2

    height, width = labels.shape
    full = upsample_cams(torch.from_numpy(np.asarray(cams, np.float32)), height, width).numpy()
    out = np.zeros((height, width), np.int32)
    next_id = 1
    for k in range(full.shape[0]):
        cls = labels == k + 1
        if not cls.any():
            continue
        n, seeds = cv2.connectedComponents(((full[k] >= seed_threshold) & cls).astype(np.uint8), connectivity=8)
        if n <= 2:
            out[cls] = next_id
            next_id += 1
            continue
        # nearest seed of every pixel: the distance transform labels each pixel with the nearest zero
        # pixel's connected component (8-connected, as the seeds are)
        _, nearest = cv2.distanceTransformWithLabels((seeds == 0).astype(np.uint8), cv2.DIST_L2, 5,
                                                     labelType=cv2.DIST_LABEL_CCOMP)
        lut = np.zeros(int(nearest.max()) + 1, np.int32)
        on = seeds > 0
        lut[nearest[on]] = seeds[on]
        out[cls] = next_id + lut[nearest[cls]]
        next_id += n
    return out
