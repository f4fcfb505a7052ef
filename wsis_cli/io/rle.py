"""Run-length encoded masks, on top of pycocotools (column-major COCO RLE, ``counts`` as ASCII)."""

from __future__ import annotations

import math
import re
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


def box_iou(dt: np.ndarray, gt: np.ndarray, iscrowd: Sequence[int]) -> np.ndarray:
    """(len(dt), len(gt)) IoU of XYWH boxes, ``(N, 4)`` float64 arrays, by pycocotools (crowd: over dt area)."""
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)), dtype=np.float64)
    return np.asarray(mask_utils.iou(np.asarray(dt, np.float64), np.asarray(gt, np.float64), list(iscrowd)),
                      dtype=np.float64)


def areas(rles: Sequence[Rle]) -> np.ndarray:
    """(N,) float64 pixel areas of compressed RLEs, in one pycocotools call."""
    if len(rles) == 0:
        return np.zeros(0, dtype=np.float64)
    return _areas([_c(r) for r in rles]).astype(np.float64)


def to_bboxes(rles: Sequence[Rle]) -> np.ndarray:
    """(N, 4) float64 tight XYWH boxes of compressed RLEs, in one pycocotools call."""
    if len(rles) == 0:
        return np.zeros((0, 4), dtype=np.float64)
    return np.asarray(mask_utils.toBbox([_c(r) for r in rles]), dtype=np.float64).reshape(-1, 4)


def box_pixels(bbox: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """The pixels an XYWH box touches, clipped to the image: ``(x0, y0, x1, y1)``, x1/y1 exclusive."""
    x, y, w, h = (float(v) for v in bbox)
    x0, y0 = max(math.floor(x), 0), max(math.floor(y), 0)
    x1, y1 = min(math.ceil(x + w), width), min(math.ceil(y + h), height)
    return x0, y0, max(x1, x0), max(y1, y0)


def box_mask(bbox: Sequence[float], height: int, width: int) -> np.ndarray:
    """Fill an XYWH box as an (H, W) uint8 mask, covering every pixel the box touches."""
    x0, y0, x1, y1 = box_pixels(bbox, height, width)
    m = np.zeros((height, width), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


COUNTS_BATCH = 4096


def counts_totals(rles: Sequence[Rle]) -> np.ndarray:
    """Pixels covered by all runs of each compressed RLE: an (N,) int64 array, -1 where ``counts`` is
    not a valid COCO RLE string (a character outside its alphabet, an unfinished last run).

    pycocotools trusts these strings: runs that overshoot ``height*width`` give areas and boxes beyond
    the image and fail to decode, and an unfinished last run makes it read past the string. Comparing
    the total with ``height*width`` catches all of that while loading. The total is the foreground
    area of the mask plus that of its complement (the same runs behind a zero-length first run), both
    summed by pycocotools in C; only the first three runs are re-encoded here in Python.
    """
    out = np.full(len(rles), -1, dtype=np.int64)
    masks: list[Rle] = []
    complements: list[Rle] = []
    ok: list[int] = []

    def flush() -> None:  # a batch at a time: the byte copies of 860k masks at once took ~150 MiB per 220k
        if ok:
            out[np.asarray(ok)] = _areas(masks) + _areas(complements)
        masks.clear()
        complements.clear()
        ok.clear()

    for i, r in enumerate(rles):
        counts = r["counts"]
        if not isinstance(counts, str) or not _RLE_CHARS.fullmatch(counts):
            continue
        if counts and (ord(counts[-1]) - 48) & 0x20:
            continue  # "more groups follow" on the last character: pycocotools would read past the end
        head, rest = _first_runs(counts, 3)
        # complement runs: [0, c0, c1, c2, c3, ...]; from the fifth run on the stored differences to the
        # run two before are the original's from its fourth run on, so that tail is reused as is
        comp = [0, *head]
        if len(comp) > 3:
            comp[3] -= comp[1]
        size = [int(v) for v in r["size"]]
        masks.append({"size": size, "counts": counts.encode("ascii")})
        complements.append({"size": size, "counts": ("".join(map(_encode_run, comp)) + rest).encode("ascii")})
        ok.append(i)
        if len(ok) == COUNTS_BATCH:
            flush()
    flush()
    return out


def _areas(rles: list[Rle]) -> np.ndarray:
    # pycocotools' area() fails on lists of more than 255 masks under numpy 2 (it sizes a temporary
    # uint8 array with the count), so ask in chunks
    return np.concatenate([np.asarray(mask_utils.area(rles[i:i + 255]), dtype=np.int64)
                           for i in range(0, len(rles), 255)])


_RLE_CHARS = re.compile(r"[0-o]*")  # chr(48 + c) for 6-bit groups c


def _first_runs(counts: str, n: int) -> tuple[list[int], str]:
    """Decode the first ``n`` runs of a COCO RLE string (stored absolutely); return them and the rest."""
    runs: list[int] = []
    p = 0
    while len(runs) < n and p < len(counts):
        x = k = 0
        while True:  # little-endian 5-bit groups, 0x20 = more follow, 0x10 on the last = negative
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            p += 1
            k += 1
            if not c & 0x20:
                if c & 0x10:
                    x |= -1 << (5 * k)
                break
        runs.append(x)
    return runs, counts[p:]


def _encode_run(x: int) -> str:
    """One run (or run difference) in the COCO RLE string alphabet, as pycocotools writes it."""
    out = []
    while True:
        c = x & 0x1F
        x >>= 5
        more = x != -1 if c & 0x10 else x != 0
        out.append(chr(48 + (c | 0x20 if more else c)))
        if not more:
            return "".join(out)
