"""Deliberately degraded masks: the test bed for refinement (``refine-crf``) and for robust losses.

Pseudo-labels are wrong in typical ways: too thin (eroded), too fat (dilated), or ragged along the
boundary (jagged). Applying those to ground truth gives masks whose true shape is known.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from wsis_cli.io import rle as rle_utils
from wsis_cli.io.coco import Dataset

Kind = Literal["erode", "dilate", "jagged"]
KINDS: tuple[Kind, ...] = ("erode", "dilate", "jagged")


def degrade_mask(mask: np.ndarray, kind: Kind, rng: np.random.Generator, radius: int = 2) -> np.ndarray:
    """Degrade one ``(H, W)`` 0/1 mask; ``radius`` is the width of the damage in pixels."""
    m = mask.astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    if kind == "erode":
        return cv2.erode(m, k)
    if kind == "dilate":
        return cv2.dilate(m, k)
    if kind == "jagged":
        # blocky random on/off noise inside the band around the boundary
        h, w = m.shape
        cell = max(radius, 1)
        noise = rng.random((-(-h // cell), -(-w // cell))) < 0.5
        noise = np.repeat(np.repeat(noise, cell, 0), cell, 1)[:h, :w]
        band = (cv2.dilate(m, k) - cv2.erode(m, k)) > 0
        return np.where(band, noise, m).astype(np.uint8)
    raise ValueError(f"unknown degradation {kind!r}")


def degrade_dataset(ds: Dataset, kind: Kind, *, radius: int = 2, seed: int = 0) -> Dataset:
    """A copy of ``ds`` with every mask degraded (boxes and areas recomputed; empty results dropped)."""
    rng = np.random.default_rng(seed)
    sizes = {im["id"]: (im["height"], im["width"]) for im in ds.images}
    out = []
    for a in ds.annotations:
        h, w = sizes[a["image_id"]]
        m = degrade_mask(rle_utils.decode(rle_utils.to_compressed(a["segmentation"], h, w)), kind, rng, radius)
        if not m.any():
            continue
        r = rle_utils.encode(m)
        out.append({**a, "segmentation": r, "area": float(rle_utils.area(r)), "bbox": rle_utils.to_bbox(r)})
    return ds.with_annotations(out)
