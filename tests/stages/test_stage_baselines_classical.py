"""GrabCut per box and Otsu components: the classical floors of bench/real.py, on a real CC0 nuclei crop."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from wsis_cli.io import coco, rle
from wsis_cli.io.coco import Dataset
from wsis_cli.io.images import load_image_for
from wsis_cli.stages.baselines.classical import grabcut_box, grabcut_masks, otsu_components
from wsis_cli.stages.baselines.floors import box_filled_masks
from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate

FIXTURE = Path(__file__).parent.parent / "fixtures" / "dsb2018_crop"


def _fixture() -> tuple[Dataset, Dataset]:
    gt = coco.load_dataset(FIXTURE / "gt.json")
    boxes = gt.with_annotations([{k: v for k, v in a.items() if k not in ("segmentation", "area")}
                                 for a in gt.annotations])
    return gt, boxes


def _read(gt: Dataset):
    return lambda im: load_image_for(str(FIXTURE), im, gt.source)


def test_grabcut_beats_box_filled_on_real_nuclei() -> None:
    gt, boxes = _fixture()
    segm = EvalSettings(iou_type="segm", max_dets=1000)
    floor = evaluate(gt, box_filled_masks(boxes).annotations, segm)
    cut = grabcut_masks(boxes, _read(gt))
    got = evaluate(gt, cut.annotations, segm)
    assert got.mean_iou > floor.mean_iou + 0.05, (got.mean_iou, floor.mean_iou)
    assert [a["id"] for a in cut.annotations] == [a["id"] for a in gt.annotations]
    for a, b in zip(cut.annotations, boxes.annotations, strict=True):  # inside its box, keys kept
        assert a["bbox"] == b["bbox"] and a["score"] == 1.0 and a["area"] == rle.area(a["segmentation"])


def test_grabcut_falls_back_to_the_box_when_it_cannot_run() -> None:
    flat = np.full((40, 40, 3), 128, np.uint8)
    m = grabcut_box(flat, [10.0, 10.0, 2.0, 20.0])  # too thin for colour models
    assert m.sum() == 2 * 20
    m = grabcut_box(flat, [5.0, 5.0, 20.0, 20.0])  # flat image: nothing to separate, never empty
    assert m.any() and not m[:5].any() and not m[:, 25:].any()


def test_grabcut_finds_a_disc_in_its_box() -> None:
    rgb = np.full((64, 64, 3), 30, np.uint8)
    cv2.circle(rgb, (32, 32), 14, (220, 200, 40), -1)
    rgb = (rgb + np.random.default_rng(0).integers(0, 10, rgb.shape)).astype(np.uint8)
    truth = np.zeros((64, 64), np.uint8)
    cv2.circle(truth, (32, 32), 14, 1, -1)
    got = grabcut_box(rgb, [18.0, 18.0, 29.0, 29.0])
    iou = (got & truth.astype(bool)).sum() / (got | truth.astype(bool)).sum()
    assert iou > 0.9


def test_otsu_components_find_the_nuclei_without_labels() -> None:
    gt, _ = _fixture()
    out = otsu_components(gt, _read(gt))
    assert out.annotations and all(0 <= a["score"] <= 1 for a in out.annotations)
    assert len({a["id"] for a in out.annotations}) == len(out.annotations)
    got = evaluate(gt, out.annotations, EvalSettings(iou_type="segm", max_dets=1000))
    ap50 = got.coco["segm"].stats["AP50"]
    assert ap50 > 0.3 and got.mean_iou > 0.4, (ap50, got.mean_iou)
    coco.validate_dataset(out.to_json(), "out")


def test_otsu_takes_the_minority_side_as_objects() -> None:
    dark_on_bright = np.full((50, 50, 3), 230, np.uint8)
    dark_on_bright[10:20, 10:20] = 20
    dark_on_bright[30:42, 25:40] = 40
    ds = Dataset([{"id": 7, "file_name": "x.png", "width": 50, "height": 50}], [], [{"id": 1, "name": "o"}])
    out = otsu_components(ds, lambda im: dark_on_bright)
    assert sorted(a["area"] for a in out.annotations) == [100, 180]
