"""Classical floors from OpenCV: what a labeller must beat on real images before it claims to have learned.

``grabcut_masks``: GrabCut (Rother et al. 2004) run once per box, the classical box-supervised labeller.
``otsu_components``: Otsu's threshold of the grey image, its minority side split into connected
components: the label-free floor for images where objects differ in brightness from the background
(fluorescent nuclei, documents); photos need more than this, so it is a floor, not a method.

Both take a ``read_image(record) -> (H, W, 3) uint8 RGB`` callable so that file access stays in ``io``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from wsis_cli.io import rle as rle_utils
from wsis_cli.io.coco import Dataset, annotation

ReadImage = Callable[[dict[str, Any]], np.ndarray]


def grabcut_box(rgb: np.ndarray, bbox: list[float], *, iterations: int = 5, margin: float = 0.5,
                min_margin: int = 10) -> np.ndarray:
    """One box's GrabCut mask, ``(H, W)`` bool, inside the box.

    GrabCut runs on the box grown by ``margin`` of its side (at least ``min_margin`` px) so the background
    model sees the surroundings and the cost does not grow with the image. Everything outside the box is
    fixed background, everything inside starts as "probably foreground". Boxes too small or too thin for its
    colour models (under 3 px on a side), and boxes where GrabCut keeps nothing, fall back to the filled box:
    the floor never does worse than box-filled for want of an answer.
    """
    h, w = rgb.shape[:2]
    filled = rle_utils.box_mask(bbox, h, w).astype(bool)
    x, y, bw, bh = bbox
    if bw < 3 or bh < 3 or not filled.any():
        return filled
    mx, my = max(margin * bw, min_margin), max(margin * bh, min_margin)
    x0, y0 = max(int(np.floor(x - mx)), 0), max(int(np.floor(y - my)), 0)
    x1, y1 = min(int(np.ceil(x + bw + mx)), w), min(int(np.ceil(y + bh + my)), h)
    crop = np.ascontiguousarray(rgb[y0:y1, x0:x1, ::-1])  # OpenCV wants BGR
    inside = filled[y0:y1, x0:x1]
    mask = np.where(inside, cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
    if inside.all():  # the box fills the image: no known background, GrabCut's init from the rectangle
        mask[:] = cv2.GC_PR_BGD
        mask[1:-1, 1:-1] = cv2.GC_PR_FGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(crop, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a degenerate colour model (e.g. a flat crop): keep the box
        return filled
    fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    fg &= inside
    if not fg.any():
        return filled
    out = np.zeros((h, w), bool)
    out[y0:y1, x0:x1] = fg
    return out


def grabcut_masks(boxes: Dataset, read_image: ReadImage, *, iterations: int = 5) -> Dataset:
    """GrabCut per box: ``boxes`` with ``segmentation``, ``area`` and ``score`` (input score, else 1.0) set on
    every annotation, the other keys kept. Every annotation needs a ``bbox``."""
    by_image = boxes.annotations_by_image()
    out: list[dict[str, Any]] = []
    for im in boxes.images:
        anns = by_image.get(im["id"], [])
        if not anns:
            continue
        rgb = read_image(im)
        for a in anns:
            seg = rle_utils.encode(grabcut_box(rgb, a["bbox"], iterations=iterations))
            out.append({**a, "segmentation": seg, "area": float(rle_utils.area(seg)),
                        "score": float(a["score"]) if a.get("score") is not None else 1.0,
                        "iscrowd": a.get("iscrowd", 0)})
    return boxes.with_annotations(out)


def otsu_foreground(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(foreground bool (H, W), signed distance to the threshold in grey levels)``.

    Otsu's threshold of the lightly blurred grey image; the foreground is the side with fewer pixels
    (objects on a background), so bright nuclei on dark and dark nuclei on bright both come out as objects.
    """
    grey = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (3, 3), 0)
    t, above = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    above = above.astype(bool)
    dist = grey.astype(np.float32) - float(t)
    if above.mean() > 0.5:
        return ~above, -dist
    return above, dist


def otsu_components(images: Dataset, read_image: ReadImage, *, min_area: float = 0.0002,
                    category_id: int = 1) -> Dataset:
    """Class-agnostic masks with no label: each 8-connected component of :func:`otsu_foreground` (opened
    with a 3x3 square to cut one-pixel bridges) is an instance; components under ``min_area`` of the image
    (at least 4 px) are dropped. ``score`` is the component's mean distance to the threshold over 255, so
    high-contrast objects rank first."""
    out: list[dict[str, Any]] = []
    for im in images.images:
        rgb = read_image(im)
        h, w = rgb.shape[:2]
        fg, dist = otsu_foreground(rgb)
        fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        n, comp = cv2.connectedComponents(fg, connectivity=8)
        k = 0
        for j in range(1, n):
            m = comp == j
            if m.sum() < max(4.0, min_area * h * w):
                continue
            k += 1
            out.append(annotation(im["id"] * 100000 + k, im["id"], category_id, rle_utils.encode(m),
                                  score=float(np.clip(dist[m].mean() / 255.0, 0.0, 1.0))))
    return Dataset(images.images, out, [{"id": category_id, "name": "object"}], {}, images.source)
