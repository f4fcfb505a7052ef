"""Mean instance mask IoU: the pseudo-label quality metric of the MAL and MaskFormer-weak-label papers.

Each ground-truth instance is matched to its best prediction on the same image (same class unless class
agnostic) by mask IoU; the metric is the mean of those best IoUs over all ground-truth instances, so a
missed instance counts 0. Matching is not one-to-one: two ground truths may pick the same prediction,
which is what the papers measure (how well each object is covered), not a detection score.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsis_cli.io import rle as rle_utils
from wsis_cli.io.coco import Dataset


@dataclass(frozen=True)
class CategoryIoU:
    """Mean IoU of one ground-truth category (``mean_iou`` is None when it has no instances)."""

    id: int
    name: str
    instances: int
    mean_iou: float | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "instances": self.instances, "mean_iou": self.mean_iou}


@dataclass(frozen=True)
class MeanIoU:
    """The dataset-level mean and its per-category breakdown (categories in the ground truth's order)."""

    mean_iou: float | None  # None when the ground truth has no (non-crowd) instance
    instances: int
    per_category: tuple[CategoryIoU, ...]


def _mask(seg: Any, height: int, width: int) -> rle_utils.Rle:
    # polygons and uncompressed RLE are legal COCO; pycocotools' IoU wants compressed RLE
    if isinstance(seg, Mapping) and isinstance(seg.get("counts"), (str, bytes)):
        return seg  # type: ignore[return-value]
    return rle_utils.to_compressed(seg, height, width)


def best_ious(
    gt_masks: Sequence[rle_utils.Rle],
    gt_cats: Sequence[int],
    dt_masks: Sequence[rle_utils.Rle],
    dt_cats: Sequence[int],
    *,
    class_agnostic: bool = False,
) -> np.ndarray:
    """Best IoU of each ground-truth mask of ONE image over the predictions of that image.

    Returns a float64 array of shape (len(gt_masks),); 0 where no prediction (of the class) overlaps.
    """
    if not gt_masks:
        return np.zeros(0, dtype=np.float64)
    if not dt_masks:
        return np.zeros(len(gt_masks), dtype=np.float64)
    ious = np.nan_to_num(rle_utils.iou(dt_masks, gt_masks))  # (D, G)
    if not class_agnostic:
        same = np.asarray(dt_cats)[:, None] == np.asarray(gt_cats)[None, :]
        ious = np.where(same, ious, 0.0)
    return ious.max(axis=0)


def mean_instance_iou(
    gt: Dataset, predictions: Sequence[Mapping[str, Any]], *, class_agnostic: bool = False
) -> MeanIoU:
    """Mean over all non-crowd ground-truth instances of their best prediction's mask IoU.

    ``gt`` annotations and ``predictions`` must carry ``segmentation`` (RLE or polygons); crowd regions
    (``iscrowd`` = 1) are not instances and are skipped. Per-category values group by the ground truth's
    category also in the class-agnostic mode (where matching ignores classes).
    """
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt.images}
    preds_by_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for p in predictions:
        preds_by_image[p["image_id"]].append(p)

    sums: dict[int, float] = defaultdict(float)
    counts: dict[int, int] = defaultdict(int)
    for image_id, anns in gt.annotations_by_image().items():
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        if not anns:
            continue
        h, w = sizes[image_id]
        preds = preds_by_image.get(image_id, [])
        best = best_ious(
            [_mask(a["segmentation"], h, w) for a in anns],
            [a["category_id"] for a in anns],
            [_mask(p["segmentation"], h, w) for p in preds],
            [p["category_id"] for p in preds],
            class_agnostic=class_agnostic,
        )
        for a, b in zip(anns, best, strict=True):
            sums[a["category_id"]] += float(b)
            counts[a["category_id"]] += 1
    return _summarise(gt, sums, counts)


def mean_iou_from_best(gt: Dataset, best: np.ndarray) -> MeanIoU:
    """:func:`mean_instance_iou` from ``best[i]``, the best IoU of ``gt.annotations[i]`` (crowd entries unread).

    For callers that already computed the per-image IoU matrices (the chunked eval backend). The sums run
    in :func:`mean_instance_iou`'s order (images in file order, their annotations in file order), so the
    floats are the same, bit for bit.
    """
    anns = gt.annotations
    position = {im["id"]: k for k, im in enumerate(gt.images)}
    order = np.argsort(np.fromiter((position[a["image_id"]] for a in anns), np.int64, len(anns)), kind="stable")
    sums: dict[int, float] = defaultdict(float)
    counts: dict[int, int] = defaultdict(int)
    values = best.tolist()
    for i in order.tolist():
        a = anns[i]
        if a.get("iscrowd", 0):
            continue
        sums[a["category_id"]] += values[i]
        counts[a["category_id"]] += 1
    return _summarise(gt, sums, counts)


def _summarise(gt: Dataset, sums: dict[int, float], counts: dict[int, int]) -> MeanIoU:
    per_category = tuple(
        CategoryIoU(
            id=c["id"],
            name=str(c.get("name", c["id"])),
            instances=counts.get(c["id"], 0),
            mean_iou=sums[c["id"]] / counts[c["id"]] if counts.get(c["id"]) else None,
        )
        for c in gt.categories
    )
    total = sum(counts.values())
    return MeanIoU(
        mean_iou=sum(sums.values()) / total if total else None,
        instances=total,
        per_category=per_category,
    )
