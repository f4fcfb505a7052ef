"""Write-back of ``wsis mal-label``: each box's crop-space probability map becomes an image-space mask.

A box's map is resized bilinearly into its crop window and read over the pixels the box touches (as
:func:`wsis_cli.io.rle.box_mask` fills them, clipped to the image); it is thresholded there, so a mask
never leaves its box. A mask is never empty: if nothing passes the threshold, the pixels within half of
the box's peak probability are kept (the whole box if the map is all zero).

**Exclusive pixels** (``exclusive=True``, the default): where boxes of one image overlap, MAL labels
each box on its own and both masks tend to claim the shared pixels, since the occluder is the most salient
thing in the occluded object's box too. A visible-instance mask set has no overlap, so each shared pixel
goes to one box. Where one box of a pair is nested in the other (their overlap covers at least
:data:`NESTED` of the smaller box), the smaller box gets the pixels its mask claims: a box inside another
is mostly an object in front of it (a vase before a potted plant, a rider on a horse), and the larger
box's map claims that salient object as well. Elsewhere (side by side, as touching nuclei) the box whose
map is the most confident there keeps the pixel (ties to the earlier box). A box that would lose every
pixel keeps its own thresholded mask. Figures, and the variants not kept: bench/NOTES.md, "mal-label
write-back: exclusive pixels".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from wsis_cli.io import rle as rle_utils

Region = tuple[int, int, int, int]  # x0, y0, x1, y1 integer pixels, x1/y1 exclusive
NESTED = 0.5  # a pair of boxes is nested when their overlap covers at least this fraction of the smaller one


def box_probabilities(prob: np.ndarray, bounds: Sequence[int], region: Region) -> np.ndarray:
    """A crop's ``(h, w)`` map resized bilinearly into its window ``bounds`` (XYXY ints, may leave the
    image) and read over ``region`` (which lies inside the window) → ``(y1 - y0, x1 - x0)`` float32."""
    x0, y0, x1, y1 = (int(v) for v in bounds)
    full = cv2.resize(prob.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    rx0, ry0, rx1, ry1 = region
    return full[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0]


def threshold_mask(prob: np.ndarray, threshold: float) -> np.ndarray:
    """``prob >= threshold``, or, if that is empty, the pixels within half of the peak (all if it is 0)."""
    mask = prob >= threshold
    if not mask.any():  # a faint or tiny object: keep the most confident part of its box
        peak = float(prob.max()) if prob.size else 0.0
        mask = prob >= 0.5 * peak if peak > 0 else np.ones_like(mask)
    return mask


def exclusive_masks(probs: Sequence[np.ndarray], regions: Sequence[Region],
                    masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Give each pixel shared by several boxes to one of them (module docstring: the rule and why).

    ``probs[k]`` and ``masks[k]`` (bool) cover ``regions[k]``. Mask ``k`` drops a shared pixel to box ``j``
    when the pair is nested and ``j`` is the smaller box (the earlier one at equal areas) and ``masks[j]``
    holds the pixel; when the pair is not nested, where ``j`` has a higher probability there (an equal one
    counts as higher for an earlier box). A mask left empty falls back to ``masks[k]``. Returns new masks;
    the inputs are not changed.
    """
    keep = [np.ones_like(m) for m in masks]
    boxes = np.asarray(regions, dtype=np.int64).reshape(-1, 4)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for k in range(len(masks)):
        # regions that overlap box k's (vectorised: images may hold hundreds of boxes)
        lo_x, lo_y = np.maximum(boxes[:, 0], boxes[k, 0]), np.maximum(boxes[:, 1], boxes[k, 1])
        hi_x, hi_y = np.minimum(boxes[:, 2], boxes[k, 2]), np.minimum(boxes[:, 3], boxes[k, 3])
        overlap = np.clip(hi_x - lo_x, 0, None) * np.clip(hi_y - lo_y, 0, None)
        nested = overlap >= NESTED * np.minimum(areas, areas[k])
        for j in np.nonzero(overlap > 0)[0].tolist():
            if j == k:
                continue
            smaller = areas[j] < areas[k] or (areas[j] == areas[k] and j < k)
            if nested[j] and not smaller:
                continue  # k is the nested box: the larger j takes nothing from it
            ys, xs = slice(lo_y[j], hi_y[j]), slice(lo_x[j], hi_x[j])
            kx0, ky0, jx0, jy0 = boxes[k, 0], boxes[k, 1], boxes[j, 0], boxes[j, 1]
            kys, kxs = slice(ys.start - ky0, ys.stop - ky0), slice(xs.start - kx0, xs.stop - kx0)
            jys, jxs = slice(ys.start - jy0, ys.stop - jy0), slice(xs.start - jx0, xs.stop - jx0)
            if nested[j]:
                lose = masks[j][jys, jxs]
            else:
                pk, pj = probs[k][kys, kxs], probs[j][jys, jxs]
                lose = pj >= pk if j < k else pj > pk
            keep[k][kys, kxs] &= ~lose
    out = []
    for m, kp in zip(masks, keep, strict=True):
        mine = m & kp
        out.append(mine if mine.any() else m)
    return out


def paste_mask(prob: np.ndarray, bounds: tuple[int, int, int, int], bbox: list[float], height: int,
               width: int, threshold: float) -> tuple[np.ndarray, float]:
    """One box on its own: its crop's ``(h, w)`` probability map as an ``(height, width)`` uint8 mask.

    ``bounds`` is the crop window (XYXY ints, may leave the image). Returns the mask (never empty, never
    outside the box) and its mean probability.
    """
    region = rle_utils.box_pixels(bbox, height, width)
    p = box_probabilities(prob, bounds, region)
    mask = threshold_mask(p, threshold)
    return _full_mask(mask, region, height, width), _mean(p, mask)


def _full_mask(mask: np.ndarray, region: Region, height: int, width: int) -> np.ndarray:
    out = np.zeros((height, width), dtype=np.uint8)
    x0, y0, x1, y1 = region
    out[y0:y1, x0:x1] = mask
    return out


def _mean(prob: np.ndarray, mask: np.ndarray) -> float:
    return float(prob[mask].mean()) if mask.any() else 0.0


def image_records(probs: np.ndarray, bounds: np.ndarray, anns: list[dict[str, Any]], image: dict[str, Any],
                  threshold: float, exclusive: bool = True) -> list[dict[str, Any]]:
    """The labelled annotations of one image: ``probs`` ``(N, h, w)`` crop maps of its ``N`` boxes
    ``anns`` in crop windows ``bounds`` ``(N, 4)``.

    Each record keeps the input's keys and gets ``segmentation`` (RLE), ``area`` (the mask's) and
    ``score`` (the input's, or else the mask's mean probability, so that AP ranks confident masks first).
    """
    height, width = image["height"], image["width"]
    regions = [rle_utils.box_pixels(a["bbox"], height, width) for a in anns]
    maps = [box_probabilities(probs[k], bounds[k].tolist(), regions[k]) for k in range(len(anns))]
    masks = [threshold_mask(p, threshold) for p in maps]
    if exclusive and len(anns) > 1:
        masks = exclusive_masks(maps, regions, masks)
    out = []
    for ann, region, p, mask in zip(anns, regions, maps, masks, strict=True):
        seg = rle_utils.encode(_full_mask(mask, region, height, width))
        score = float(ann["score"]) if ann.get("score") is not None else _mean(p, mask)
        out.append({**ann, "segmentation": seg, "area": float(rle_utils.area(seg)), "score": score,
                    "iscrowd": ann.get("iscrowd", 0)})
    return out
