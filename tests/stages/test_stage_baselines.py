"""Box-filled masks: exact for rectangles, the floor for everything else."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from wsis_cli.io import coco, rle
from wsis_cli.io.coco import Dataset
from wsis_cli.stages.baselines.floors import box_filled_masks
from wsis_cli.stages.synth.stage import SynthJob, SynthSettings, run


def _boxes_of(masks: list[np.ndarray], h: int, w: int) -> tuple[Dataset, list[dict]]:
    gt = [coco.annotation(i + 1, 1, 1, rle.encode(m)) for i, m in enumerate(masks)]
    boxes = [{"id": a["id"], "image_id": 1, "category_id": 1, "bbox": a["bbox"]} for a in gt]
    ds = Dataset([{"id": 1, "file_name": "a.png", "width": w, "height": h}], boxes, [{"id": 1, "name": "x"}])
    return ds, gt


def test_rectangles_are_exact_and_discs_are_not() -> None:
    h, w = 60, 80
    rect = np.zeros((h, w), np.uint8)
    rect[10:30, 5:47] = 1
    disc = np.zeros((h, w), np.uint8)
    cv2.circle(disc, (55, 35), 15, 1, -1)
    ds, gt = _boxes_of([rect, disc], h, w)
    out = box_filled_masks(ds)
    ious = [rle.iou([p["segmentation"]], [g["segmentation"]])[0, 0] for p, g in zip(out.annotations, gt, strict=True)]
    assert ious[0] == 1.0
    assert 0.7 < ious[1] < 0.85  # pi/4 for a perfect disc


def test_keeps_fields_sets_area_score_and_clips() -> None:
    ds = Dataset(
        [{"id": 3, "file_name": "a.png", "width": 20, "height": 10}],
        [{"id": 9, "image_id": 3, "category_id": 2, "bbox": [15.0, 5.0, 5.5, 6.0], "score": 0.25, "note": "x"},
         {"id": 10, "image_id": 3, "category_id": 2, "bbox": [0.5, 0.5, 2.0, 2.0]}],
        [{"id": 2, "name": "b"}],
    )
    out = box_filled_masks(ds)
    a, b = out.annotations
    assert (a["id"], a["image_id"], a["category_id"], a["bbox"], a["note"]) == (9, 3, 2, [15.0, 5.0, 5.5, 6.0], "x")
    assert a["score"] == 0.25 and b["score"] == 1.0
    assert a["area"] == 5 * 5  # clipped to the 20x10 image
    assert b["area"] == 3 * 3  # every pixel the box touches
    assert a["segmentation"]["size"] == [10, 20] and isinstance(a["segmentation"]["counts"], str)
    assert "segmentation" not in ds.annotations[0], "the input is not modified"
    assert out.images is ds.images and out.categories is ds.categories
    coco.validate_dataset(out.to_json(), "out")


def test_mean_iou_on_synth_is_in_a_sensible_range(tmp_path: Path) -> None:
    run(SynthSettings(num_images=12, height=96, width=96, classes=3, seed=4), SynthJob(tmp_path / "d"))
    gt = coco.load_dataset(tmp_path / "d" / "gt.json")
    pred = box_filled_masks(coco.load_dataset(tmp_path / "d" / "boxes.json", need="bbox"))
    ious = [rle.iou([p["segmentation"]], [g["segmentation"]])[0, 0]
            for p, g in zip(pred.annotations, gt.annotations, strict=True)]
    assert 0.5 < float(np.mean(ious)) < 0.85
    assert max(ious) <= 1.0 and min(ious) > 0.1
