"""Run-length encoded masks, on top of pycocotools (column-major COCO RLE, ``counts`` as ASCII)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

Rle = dict[str, Any]  # {"size": [h, w], "counts": str}


def encode(mask: np.ndarray) -> Rle:
    """Encode an (H, W) boolean/uint8 mask as a COCO RLE with ASCII ``counts``."""
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"]}


def encode_many(masks: np.ndarray) -> list[Rle]:
    """Encode an (N, H, W) stack of masks."""
    if masks.ndim != 3:
        raise ValueError(f"expected an (N, H, W) stack, got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8, copy=False)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def _c(rle: Rle) -> Rle:
    """pycocotools wants bytes counts; accept ASCII strings and uncompressed (list) counts."""
    counts = rle["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects(rle, rle["size"][0], rle["size"][1])
    if isinstance(counts, str):
        return {"size": rle["size"], "counts": counts.encode("ascii")}
    return rle


def to_compressed(segmentation: Any, height: int, width: int) -> Rle:
    """Normalise any COCO segmentation (polygons, uncompressed or compressed RLE) to compressed RLE."""
    if isinstance(segmentation, list):
        if not segmentation:  # no polygons at all: an empty mask (pycocotools fails on [])
            return encode(np.zeros((height, width), dtype=np.uint8))
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles) if len(rles) != 1 else rles[0]
    else:
        rle = _c(segmentation)
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def decode(rle: Rle) -> np.ndarray:
    """Decode to an (H, W) uint8 mask of 0/1."""
    return mask_utils.decode(_c(rle))


def area(rle: Rle) -> int:
    return int(mask_utils.area(_c(rle)))


def to_bbox(rle: Rle) -> list[float]:
    """Tight XYWH box of the mask in pixels ([0, 0, 0, 0] for an empty mask)."""
    return [float(v) for v in mask_utils.toBbox(_c(rle))]


def iou(dt: Sequence[Rle], gt: Sequence[Rle], iscrowd: Sequence[int] | None = None) -> np.ndarray:
    """(len(dt), len(gt)) mask IoU matrix (pycocotools semantics for crowd regions)."""
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)), dtype=np.float64)
    crowd = [0] * len(gt) if iscrowd is None else list(iscrowd)
    return np.asarray(mask_utils.iou([_c(r) for r in dt], [_c(r) for r in gt], crowd), dtype=np.float64)


def box_mask(bbox: Sequence[float], height: int, width: int) -> np.ndarray:
    """Fill an XYWH box as an (H, W) uint8 mask, covering every pixel the box touches."""
    x, y, w, h = bbox
    x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
    x1, y1 = min(int(np.ceil(x + w)), width), min(int(np.ceil(y + h)), height)
    m = np.zeros((height, width), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m
