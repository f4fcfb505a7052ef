"""Per-image matching for the report: each instance's best IoU against a reference set, and image scores.

The reference is the ground truth (``--gt``) or, when two label sets are compared without one, the other
set. Matching follows ``wsis eval``'s mean instance IoU: every instance takes its best mask IoU over the
reference instances of its class on the same image (not one-to-one), so a missed instance scores 0.
Box-only records are measured as their filled boxes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsis_cli.io import rle as rle_utils


def instance_rle(ann: Mapping[str, Any], height: int, width: int) -> rle_utils.Rle:
    """The record's mask as compressed RLE; a box-only record becomes its filled box."""
    seg = ann.get("segmentation")
    if seg is not None:
        return rle_utils.to_compressed(seg, height, width)
    return rle_utils.encode(rle_utils.box_mask(ann["bbox"], height, width))


@dataclass(frozen=True)
class Match:
    """Best IoUs of one image: ``a[i]`` for instance i of set A against B, ``b[j]`` for B against A.

    ``a_to_b[i]`` is the index of A's best match in B (-1 where nothing of its class overlaps).
    """

    a: np.ndarray  # (len(A),) float64
    b: np.ndarray  # (len(B),) float64
    a_to_b: np.ndarray  # (len(A),) int64


def match(
    a_rles: Sequence[rle_utils.Rle],
    a_cats: Sequence[int],
    b_rles: Sequence[rle_utils.Rle],
    b_cats: Sequence[int],
    *,
    class_agnostic: bool = False,
) -> Match:
    """Match two instance sets of one image (same class unless ``class_agnostic``)."""
    ious = rle_utils.iou(list(a_rles), list(b_rles))  # (A, B); zeros when either side is empty
    ious = np.nan_to_num(ious)
    if not class_agnostic and ious.size:
        same = np.asarray(a_cats)[:, None] == np.asarray(b_cats)[None, :]
        ious = np.where(same, ious, 0.0)
    if ious.size:
        a_best, b_best = ious.max(axis=1), ious.max(axis=0)
        a_to_b = np.where(a_best > 0, ious.argmax(axis=1), -1)
    else:
        a_best, b_best = np.zeros(len(a_rles)), np.zeros(len(b_rles))
        a_to_b = np.full(len(a_rles), -1, dtype=np.int64)
    return Match(a_best.astype(np.float64), b_best.astype(np.float64), a_to_b.astype(np.int64))


def mean_iou_vs_reference(pred_count: int, ref_best: np.ndarray) -> float:
    """An image's score against a reference: the mean of the reference instances' best IoUs (eval's mean
    instance IoU on one image). An image without reference instances scores 1 when it has no prediction
    either and 0 otherwise (everything predicted there is a false positive)."""
    if ref_best.size:
        return float(ref_best.mean())
    return 1.0 if pred_count == 0 else 0.0


def agreement(m: Match) -> float:
    """Symmetric agreement of two label sets on one image: the mean best IoU over the instances of both.

    1 when both are empty (they agree there is nothing).
    """
    both = np.concatenate([m.a, m.b])
    return float(both.mean()) if both.size else 1.0
