"""From IRNet's two maps to instances: centroids, clusters, instance-wise CAMs, random walk, synthesis.

Everything works at stride 4 (the grid of the CAMs and of IRNet's outputs) except the last step: the walked
scores are upsampled x4 (bilinear), cropped to the image, divided by their *global* max (over all
channels, upstream's choice), given a constant background channel (0.25) and arg-maxed at full
resolution; each channel's pixels split into 4-connected fragments, and each fragment is one instance
scored by the max walked score inside it, or 0 when it is smaller than 1% of the image (upstream
``detect_instance``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsis_cli.stages.random_walk import random_walk

REFINE_STEPS = 300
CENTROID_THRESHOLD = 2.5
BG_THRESHOLD = 0.25
FRAGMENT_FRACTION = 0.01


def refine_centroids(disp: np.ndarray, steps: int = REFINE_STEPS) -> np.ndarray:
    """Follow the displacement field from every pixel (upstream ``find_centroids_with_refinement``).

    Args:
        disp: ``(2, h, w)`` displacement (dy, dx) in grid units.
    Returns:
        ``(2, h, w)`` int64 rounded end points (y, x), clipped to the grid. Each step adds the bilinearly
        interpolated displacement at the current position.
    """
    _, h, w = disp.shape
    dy_map, dx_map = disp[0].astype(np.float32), disp[1].astype(np.float32)
    cy = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, 1)
    cx = np.repeat(np.arange(w, dtype=np.float32)[None, :], h, 0)
    for _ in range(steps):
        y0, x0 = np.floor(cy).astype(np.int64), np.floor(cx).astype(np.int64)
        y1, x1 = np.ceil(cy).astype(np.int64), np.ceil(cx).astype(np.int64)
        fy, fx = cy - y0, cx - x0
        w11, w01 = fy * fx, (1 - fy) * fx
        w10, w00 = fy * (1 - fx), (1 - fy) * (1 - fx)

        def sample(m: np.ndarray, y0=y0, y1=y1, x0=x0, x1=x1, w00=w00, w01=w01, w10=w10, w11=w11) -> np.ndarray:
            return m[y1, x1] * w11 + m[y0, x1] * w01 + m[y1, x0] * w10 + m[y0, x0] * w00

        step_y, step_x = sample(dy_map), sample(dx_map)
        cy = np.clip(cy + step_y, 0, h - 1)
        cx = np.clip(cx + step_x, 0, w - 1)
    return np.stack([np.round(cy), np.round(cx)]).astype(np.int64)


def cluster_centroids(centroids: np.ndarray, disp: np.ndarray, threshold: float = CENTROID_THRESHOLD) -> np.ndarray:
    """Instance map from converged centroids (upstream ``cluster_centroids``).

    Candidate centroids are the pixels with ``|disp| < threshold``; their 4-connected components are the
    centroids, and each pixel takes the component its own end point lands in. End points landing outside
    every component form one more cluster (upstream keeps it too).

    Returns:
        ``(K, h, w)`` bool one-hot instance masks (clusters in the order of their component numbers).
    """
    _, h, w = disp.shape
    weak = (np.sqrt(disp[0] ** 2 + disp[1] ** 2) < threshold).astype(np.uint8)
    _, comp = cv2.connectedComponents(weak, connectivity=4)
    assigned = comp[centroids[0], centroids[1]]
    _, inverse = np.unique(assigned, return_inverse=True)
    inverse = inverse.reshape(h, w)
    return inverse[None] == np.arange(inverse.max() + 1)[:, None, None]


def instance_cams(cams: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """``(C·K, h, w)``: each class's CAM inside each instance mask, class-major (upstream order)."""
    out = cams[:, None].astype(np.float32) * instances[None].astype(np.float32)
    return out.reshape(-1, *cams.shape[1:])


def upsample_scores(scores: Tensor, height: int, width: int) -> Tensor:
    """``(C, h, w)`` stride-4 scores → ``(C, H, W)``: bilinear x4, crop, divide by the global max."""
    up = F.interpolate(scores[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, :height, :width]
    top = up.max() if up.numel() else up.new_tensor(0.0)
    return up / top if float(top) > 0 else up


@dataclass(frozen=True)
class Detection:
    """One instance: class index (into the CAM channels), full-resolution mask, score."""

    channel: int
    mask: np.ndarray  # (H, W) bool
    score: float


def detect_instances(scores: np.ndarray, labels: np.ndarray, channel_class: list[int],
                     fragment_fraction: float = FRAGMENT_FRACTION) -> list[Detection]:
    """Split each channel's pixels into 4-connected fragments (upstream ``detect_instance``).

    Args:
        scores: ``(N, H, W)`` normalised walked scores; ``labels``: ``(H, W)`` arg-max, ``-1`` background.
        channel_class: the class index of each of the ``N`` channels.
    Returns:
        one detection per fragment, scored by its max score, or 0 below ``fragment_fraction`` of the image.
    """
    height, width = labels.shape
    min_size = fragment_fraction * height * width
    out = []
    for k in np.unique(labels):
        if k < 0:
            continue
        n, comp = cv2.connectedComponents((labels == k).astype(np.uint8), connectivity=4)
        for j in range(1, n):
            mask = comp == j
            score = float(scores[k][mask].max()) if mask.sum() >= min_size else 0.0
            out.append(Detection(channel_class[k], mask, score))
    return out


def argmax_with_background(scores: Tensor, bg: float) -> np.ndarray:
    """``(H, W)`` int64: the arg-max channel, or -1 where the constant background ``bg`` wins (ties: bg)."""
    if scores.shape[0] == 0:
        return np.full(scores.shape[1:], -1, np.int64)
    padded = F.pad(scores, (0, 0, 0, 0, 1, 0), value=bg)
    return (padded.argmax(0) - 1).cpu().numpy()


def synthesize(cams: np.ndarray, edge: Tensor, disp: np.ndarray, height: int, width: int, *,
               beta: float = 10.0, steps: int = 256, radius: float = 5, bg_threshold: float = BG_THRESHOLD,
               refine_steps: int = REFINE_STEPS, centroid_threshold: float = CENTROID_THRESHOLD,
               fragment_fraction: float = FRAGMENT_FRACTION) -> list[Detection]:
    """Instances of one image from its stride-4 CAMs, boundary map and displacement field.

    Args:
        cams: ``(C, h, w)`` float CAMs of the image's classes, in [0, 1].
        edge: ``(h, w)`` boundary probabilities (on the device the walk should run on).
        disp: ``(2, h, w)`` displacement field after the mean shift.
    Returns:
        detections with ``channel`` = index into ``cams``; the caller maps it to a category id.
    """
    if cams.shape[0] == 0:
        return []
    centroids = refine_centroids(disp, refine_steps)
    instances = cluster_centroids(centroids, disp, centroid_threshold)
    k = instances.shape[0]
    scores = torch.from_numpy(instance_cams(cams, instances)).to(edge.device)
    walked = random_walk(scores, edge, radius, beta, steps)
    up = upsample_scores(walked, height, width)
    labels = argmax_with_background(up, bg_threshold)
    channel_class = [c for c in range(cams.shape[0]) for _ in range(k)]
    return detect_instances(up.cpu().numpy(), labels, channel_class, fragment_fraction)


def semantic_labels(cams: np.ndarray, edge: Tensor, height: int, width: int, *, beta: float = 10.0,
                    steps: int = 256, radius: float = 5, bg_threshold: float = BG_THRESHOLD) -> np.ndarray:
    """``(H, W)`` int64 class index + 1 per pixel (0 background): walked CAMs, upstream's sem-seg labels."""
    if cams.shape[0] == 0:
        return np.zeros((height, width), np.int64)
    walked = random_walk(torch.from_numpy(cams.astype(np.float32)).to(edge.device), edge, radius, beta, steps)
    return argmax_with_background(upsample_scores(walked, height, width), bg_threshold) + 1
