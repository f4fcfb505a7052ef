"""From IRNet's two maps to instances: centroids, clusters, instance-wise CAMs, random walk, synthesis.

Everything works at stride 4 (the grid of the CAMs and of IRNet's outputs) except the last step: the walked
scores are upsampled x4 (bilinear), cropped to the image, divided by their *global* max (over all
channels, upstream's choice), given a constant background channel (0.25) and arg-maxed at full
resolution; each channel's pixels split into 4-connected fragments, and each fragment is one instance
scored by the max walked score inside it, or 0 when it is smaller than 1% of the image (upstream
``detect_instance``).

Four deviations from upstream, measured on synthetic images where instances of one class touch (see
``tests/stages/test_stage_irnet_quality.py``), all switchable:

* centroid candidates must be sinks of the displacement field (:func:`centroid_candidates`): with the
  paper's ``|D| < 2.5`` alone, every object under ~10 px radius joins the background's candidate region;
* the random walk does not cross between two instances of the instance map (``separate_instances``):
  the boundary branch only learns class boundaries, so upstream's 256 steps spread the instance-wise CAMs
  of touching same-class instances over each other and the stronger one takes both;
* the field is taken as 0 where every CAM is below ``field_cam_threshold`` (0.25): a learnt field is small
  noise on the background, which 300 refinement steps turn into drifts into object centroids and sinks on
  the image border (it raises AP50 with learnt maps and leaves oracle maps unchanged; figures:
  bench/NOTES.md, "IRNet instances: CAM-gated displacement field");
* instances are split at the peaks of their CAM (``peak_split``, :func:`split_by_cam_peaks`), and the cells
  the field leaves without a centroid are grouped by CAM peaks too: upstream makes them one more instance,
  which spreads over every object they belong to. A CAM usually peaks once per object, and the learnt field
  is weakest exactly where two instances of one class touch (its relations are class-level).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsis_cli.stages.irnet.random_walk import random_walk

REFINE_STEPS = 300
CENTROID_THRESHOLD = 2.5
SINK_DIVERGENCE = -0.5  # a candidate centroid must be a sink of the field (see centroid_candidates)
BG_THRESHOLD = 0.25
FRAGMENT_FRACTION = 0.01
FIELD_CAM_THRESHOLD = 0.25  # the displacement field is followed only where some CAM reaches this
PEAK_SPLIT = 0.8  # instances are split at CAM peaks above this fraction of their max (0: upstream)
ORPHAN_CAM = 0.1  # with PEAK_SPLIT, cells reaching no centroid are grouped by CAM peaks where a CAM reaches this


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


def centroid_candidates(disp: np.ndarray, threshold: float = CENTROID_THRESHOLD,
                        divergence: float | None = SINK_DIVERGENCE) -> np.ndarray:
    """``(h, w)`` bool: the pixels that may be part of a centroid.

    The paper's candidates are the pixels with ``|D| < threshold`` (2.5 grid cells). Background pixels
    are trained to ``D = 0`` too, so on their own they form one region that swallows every object whose
    radius is below about the threshold (10 px at stride 4: most objects of a small image, far objects of
    a large one). A centroid is a *sink* of the field (``div D = -2`` for an exact field, ``0`` on a flat
    background), so with ``divergence`` set the candidates must also have ``div D < divergence``; large
    objects keep the paper's centroids, small ones are no longer merged into the background. ``None``
    gives the paper's rule.
    """
    weak = np.sqrt(disp[0] ** 2 + disp[1] ** 2) < threshold
    if divergence is not None:
        div = np.gradient(disp[0].astype(np.float32), axis=0) + np.gradient(disp[1].astype(np.float32), axis=1)
        weak &= div < divergence
    return weak


def instance_map(centroids: np.ndarray, disp: np.ndarray, threshold: float = CENTROID_THRESHOLD,
                 divergence: float | None = SINK_DIVERGENCE) -> np.ndarray:
    """``(h, w)`` int64 instance of every pixel: the 4-connected candidate component its end point lands in
    (1..K, numbered in component order), or 0 when it lands on no candidate (paper eq. 15)."""
    weak = centroid_candidates(disp, threshold, divergence).astype(np.uint8)
    _, comp = cv2.connectedComponents(weak, connectivity=4)
    assigned = comp[centroids[0], centroids[1]]
    used = np.unique(assigned[assigned > 0])
    lut = np.zeros(int(comp.max()) + 1, np.int64)
    lut[used] = np.arange(1, len(used) + 1)
    return lut[assigned]


def split_by_cam_peaks(inst: np.ndarray, cams: np.ndarray, threshold: float, min_cells: int = 2,
                       unassigned_cam: float | None = None) -> np.ndarray:
    """Split the instances of ``inst`` at the peaks of their CAM (an extension; see the module docstring).

    Each 8-connected part of an instance is split when ``cams.max(0)`` has several 8-connected parts
    of at least ``min_cells`` cells above ``threshold`` times its max over that part (the *seeds*): every
    cell of the part joins its nearest seed (Euclidean), each seed becoming an instance. With
    ``unassigned_cam`` set, the cells that reached no centroid (``inst == 0``) and where the CAM reaches
    ``unassigned_cam`` are grouped the same way instead of staying one instance spread over every object.

    Args:
        inst: ``(h, w)`` int64 instance map (0: no centroid), as :func:`instance_map` returns it.
        cams: ``(C, h, w)`` CAMs in [0, 1].
    Returns:
        ``(h, w)`` int64 instance map numbered 1..K' (0 where no instance remains).
    """
    cam = cams.max(0).astype(np.float32)
    out = np.zeros_like(inst)
    next_id = 1
    for k in range(0 if unassigned_cam is not None else 1, int(inst.max()) + 1):
        cluster = (inst == k) if k else (inst == 0) & (cam >= unassigned_cam)
        if not cluster.any():
            continue
        n_parts, parts = cv2.connectedComponents(cluster.astype(np.uint8), connectivity=8)
        for part_id in range(1, n_parts):
            part = parts == part_id
            top = float(cam[part].max())
            n, seeds, stats, _ = cv2.connectedComponentsWithStats(((cam >= threshold * top) & part).astype(np.uint8),
                                                                  connectivity=8)
            good = [j for j in range(1, n) if stats[j, cv2.CC_STAT_AREA] >= min_cells]
            if len(good) < 2:
                out[part] = next_id
                next_id += 1
                continue
            seeds = np.where(np.isin(seeds, good), seeds, 0)
            # the distance transform labels every cell with the component of its nearest zero cell (a seed)
            _, nearest = cv2.distanceTransformWithLabels((seeds == 0).astype(np.uint8), cv2.DIST_L2, 5,
                                                         labelType=cv2.DIST_LABEL_CCOMP)
            lut = np.zeros(int(nearest.max()) + 1, np.int64)
            on = seeds > 0
            lut[nearest[on]] = seeds[on]
            owner = lut[nearest]
            for j in good:
                out[part & (owner == j)] = next_id
                next_id += 1
    return out


def cluster_centroids(centroids: np.ndarray, disp: np.ndarray, threshold: float = CENTROID_THRESHOLD,
                      divergence: float | None = SINK_DIVERGENCE) -> np.ndarray:
    """Instance masks from converged centroids (upstream ``cluster_centroids``, candidates as in
    :func:`centroid_candidates`).

    Returns:
        ``(K, h, w)`` bool one-hot masks in :func:`instance_map` order; when some end points land on no
        candidate, their pixels come first as one more mask (upstream keeps that cluster too).
    """
    inst = instance_map(centroids, disp, threshold, divergence)
    first = 0 if (inst == 0).any() else 1
    return inst[None] == np.arange(first, int(inst.max()) + 1)[:, None, None]


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
               sink_divergence: float | None = SINK_DIVERGENCE, separate_instances: bool = True,
               fragment_fraction: float = FRAGMENT_FRACTION,
               field_cam_threshold: float = FIELD_CAM_THRESHOLD, peak_split: float = PEAK_SPLIT,
               orphan_cam: float = ORPHAN_CAM) -> list[Detection]:
    """Instances of one image from its stride-4 CAMs, boundary map and displacement field.

    Args:
        cams: ``(C, h, w)`` float CAMs of the image's classes, in [0, 1].
        edge: ``(h, w)`` boundary probabilities (on the device the walk should run on).
        disp: ``(2, h, w)`` displacement field after the mean shift.
        sink_divergence: see :func:`centroid_candidates` (``None``: the paper's candidates).
        separate_instances: the walk may not cross between two pixels of different instances (see
            :mod:`wsis_cli.stages.irnet.random_walk`); ``False`` is upstream's walk.
        field_cam_threshold: where every CAM is below this, the field is taken as 0 before the centroid
            refinement (0: upstream). A learnt field is small noise on the background, and 300 refinement
            steps turn that noise into drifts that carry background cells into object centroids and form
            spurious sinks on the image border.
        peak_split: > 0: :func:`split_by_cam_peaks` at this fraction of each instance's CAM max, the cells
            without a centroid included where some CAM reaches ``orphan_cam``; 0: upstream.
    Returns:
        detections with ``channel`` = index into ``cams``; the caller maps it to a category id.
    """
    if cams.shape[0] == 0:
        return []
    if field_cam_threshold > 0:
        disp = disp * (cams.max(0) >= field_cam_threshold)[None]
    centroids = refine_centroids(disp, refine_steps)
    inst = instance_map(centroids, disp, centroid_threshold, sink_divergence)
    if peak_split > 0:
        inst = split_by_cam_peaks(inst, cams, peak_split, unassigned_cam=orphan_cam)
    first = 0 if (inst == 0).any() else 1
    instances = inst[None] == np.arange(first, int(inst.max()) + 1)[:, None, None]
    k = instances.shape[0]
    scores = torch.from_numpy(instance_cams(cams, instances)).to(edge.device)
    groups = torch.from_numpy(inst).to(edge.device) if separate_instances else None
    walked = random_walk(scores, edge, radius, beta, steps, groups=groups)
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
