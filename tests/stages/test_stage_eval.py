"""The eval stage: COCO AP/AR parity with pycocotools and faster-coco-eval, mean instance mask IoU."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from wsis_cli.io import rle
from wsis_cli.io.coco import Dataset, annotation
from wsis_cli.runtime.errors import BadInputError, UsageError
from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate, stat_names

CATS = [{"id": 1, "name": "disc"}, {"id": 2, "name": "box"}, {"id": 5, "name": "blob"}]


# ------------------------------------------------------------------------------------ synthetic data


def _shape(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random disc or rectangle, small to large so every COCO size range is populated."""
    m = np.zeros((h, w), dtype=bool)
    size = int(rng.choice([5, 12, 40]))
    cy, cx = int(rng.integers(size // 2, h - size // 2)), int(rng.integers(size // 2, w - size // 2))
    if rng.random() < 0.5:
        yy, xx = np.ogrid[:h, :w]
        m[(yy - cy) ** 2 + (xx - cx) ** 2 <= (size / 2) ** 2] = True
    else:
        m[cy - size // 2: cy + size // 2 + 1, cx - size // 3: cx + size // 3 + 1] = True
    return m


def make_gt(seed: int = 0, n_images: int = 5, h: int = 96, w: int = 128) -> tuple[Dataset, dict]:
    """GT dataset and the boolean masks per annotation id."""
    rng = np.random.default_rng(seed)
    images, anns, masks = [], [], {}
    for i in range(n_images):
        images.append({"id": 10 + i, "file_name": f"im{i}.png", "height": h, "width": w})
        for _ in range(int(rng.integers(3, 7))):
            m = _shape(rng, h, w)
            aid = len(anns) + 1
            anns.append(annotation(aid, 10 + i, int(rng.choice([1, 2, 5])), rle.encode(m)))
            masks[aid] = m
    return Dataset(images, anns, copy.deepcopy(CATS), source="gt.json"), masks


def _shift(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(m)
    h, w = m.shape
    out[max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = m[max(-dy, 0): h - max(dy, 0),
                                                                    max(-dx, 0): w - max(dx, 0)]
    return out


def _dilate(m: np.ndarray) -> np.ndarray:
    return m | _shift(m, 1, 0) | _shift(m, -1, 0) | _shift(m, 0, 1) | _shift(m, 0, -1)


def _erode(m: np.ndarray) -> np.ndarray:
    return ~_dilate(~m)


def jitter(gt: Dataset, masks: dict, seed: int = 1, amount: int = 2) -> list[dict]:
    """Shifted/dilated/eroded copies of most GT masks, random scores, some misses and false positives."""
    rng = np.random.default_rng(seed)
    preds = []
    for a in gt.annotations:
        if rng.random() < 0.15:
            continue  # a miss
        m = _shift(masks[a["id"]], int(rng.integers(-amount, amount + 1)), int(rng.integers(-amount, amount + 1)))
        m = [_dilate, _erode, lambda x: x][int(rng.integers(3))](m)
        if not m.any():
            continue
        preds.append({"image_id": a["image_id"], "category_id": a["category_id"],
                      "segmentation": rle.encode(m), "score": float(rng.random())})
    for im in gt.images:  # false positives
        for _ in range(2):
            m = _shape(rng, im["height"], im["width"])
            preds.append({"image_id": im["id"], "category_id": int(rng.choice([1, 2, 5])),
                          "segmentation": rle.encode(m), "score": float(rng.random()) * 0.5})
    return preds


def perfect(gt: Dataset) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
             "score": 0.9} for a in gt.annotations]


def _pycocotools_stats(gt_path, pred_path, iou_type: str, max_dets: int = 100) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(str(pred_path))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def _as_list(stats: dict) -> list[float]:
    return [-1.0 if v is None else v for v in stats.values()]


# --------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def data():
    gt, masks = make_gt()
    return gt, masks, jitter(gt, masks)


def test_same_stats_as_pycocotools_on_the_same_files(data, tmp_path):
    gt, _, preds = data
    (tmp_path / "gt.json").write_text(json.dumps(gt.to_json()))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    report = evaluate(gt, preds, EvalSettings())
    assert report.iou_types == ("segm", "bbox")
    for t in ("segm", "bbox"):
        expected = _pycocotools_stats(tmp_path / "gt.json", tmp_path / "pred.json", t)
        assert list(report.coco[t].stats) == list(stat_names(100))
        assert _as_list(report.coco[t].stats) == pytest.approx(expected[:12], abs=1e-12)
    # the quality of these jittered predictions sits where it should: well above zero, below perfect
    assert 0.2 < report.mask_ap < 0.95
    assert 0.5 < report.mean_iou < 0.95


def test_faster_backend_gives_identical_stats(data):
    gt, _, preds = data
    slow = evaluate(gt, preds, EvalSettings(backend="pycocotools"))
    fast = evaluate(gt, preds, EvalSettings(backend="faster"))
    for t in ("segm", "bbox"):
        assert _as_list(fast.coco[t].stats) == pytest.approx(_as_list(slow.coco[t].stats), abs=1e-9)
        for a, b in zip(fast.coco[t].per_category, slow.coco[t].per_category, strict=True):
            assert a["id"] == b["id"] and a["AP"] == pytest.approx(b["AP"], abs=1e-9)
    assert fast.mean_iou == slow.mean_iou


def test_inputs_are_left_untouched(data):
    gt, _, preds = data
    gt_before, preds_before = copy.deepcopy(gt.to_json()), copy.deepcopy(preds)
    evaluate(gt, preds, EvalSettings(backend="faster"))
    evaluate(gt, preds, EvalSettings())
    assert gt.to_json() == gt_before and preds == preds_before


def test_perfect_predictions_score_one(data):
    gt, _, _ = data
    report = evaluate(gt, perfect(gt), EvalSettings())
    for t in ("segm", "bbox"):
        assert report.coco[t].stats["AP"] == pytest.approx(1.0)
        assert report.coco[t].stats["AR100"] == pytest.approx(1.0)
    assert report.mean_iou == pytest.approx(1.0)
    assert all(c.mean_iou == pytest.approx(1.0) for c in report.mean_iou_per_category if c.instances)


def test_empty_predictions_give_zeros_not_minus_one(data):
    gt, _, _ = data
    report = evaluate(gt, [], EvalSettings())
    assert report.iou_types == ("segm", "bbox")
    for t in ("segm", "bbox"):
        values = list(report.coco[t].stats.values())
        assert all(v is None or v == 0.0 for v in values)
        assert report.coco[t].stats["AP"] == 0.0 and report.coco[t].stats["AR100"] == 0.0
    assert report.mean_iou == 0.0
    text = json.dumps(report.to_json())
    assert "-1" not in text.replace("-1.", "")  # no pycocotools sentinel leaks into the report
    assert report.counts["predictions"] == 0


def test_missing_size_range_is_none():
    gt, masks = make_gt(seed=3, n_images=2)
    big = [a for a in gt.annotations if a["area"] > 96 ** 2]
    assert not big  # no large objects in these small images
    report = evaluate(gt, jitter(gt, masks), EvalSettings())
    assert report.coco["segm"].stats["APl"] is None and report.coco["segm"].stats["ARl"] is None


def test_class_agnostic_ignores_swapped_classes(data):
    gt, _, _ = data
    swapped = [{**p, "category_id": {1: 2, 2: 5, 5: 1}[p["category_id"]]} for p in perfect(gt)]
    aware = evaluate(gt, swapped, EvalSettings())
    agnostic = evaluate(gt, swapped, EvalSettings(class_agnostic=True))
    assert aware.mask_ap == 0.0 and aware.mean_iou < 0.1  # only chance overlaps with same-class shapes
    assert agnostic.mask_ap == pytest.approx(1.0) and agnostic.mean_iou == pytest.approx(1.0)
    # per-category IoU still groups by the ground truth's category
    assert [c.id for c in agnostic.mean_iou_per_category] == [1, 2, 5]


def test_max_dets_above_100_matters():
    h = w = 240
    images = [{"id": 1, "file_name": "crowded.png", "height": h, "width": w}]
    anns = []
    for k in range(150):  # 150 separate 8x8 squares on a 15x10 grid
        m = np.zeros((h, w), dtype=bool)
        y, x = 16 * (k // 15), 16 * (k % 15)
        m[y: y + 8, x: x + 8] = True
        anns.append(annotation(k + 1, 1, 1, rle.encode(m)))
    gt = Dataset(images, anns, [{"id": 1, "name": "dot"}])
    preds = [{**p, "score": 1.0 - i / 1000} for i, p in enumerate(perfect(gt))]
    at100 = evaluate(gt, preds, EvalSettings(iou_type="segm"))
    at300 = evaluate(gt, preds, EvalSettings(iou_type="segm", max_dets=300))
    assert at100.coco["segm"].stats["AR100"] == pytest.approx(100 / 150)
    assert at100.mask_ap < 0.7
    assert at300.coco["segm"].stats["AR300"] == pytest.approx(1.0)
    assert at300.mask_ap == pytest.approx(1.0)
    assert at100.mean_iou == at300.mean_iou == pytest.approx(1.0)  # mean IoU never drops predictions
    # the same convention as faster-coco-eval's own summary (pycocotools' fixes AP at maxDets=100)
    fast = evaluate(gt, preds, EvalSettings(iou_type="segm", max_dets=300, backend="faster"))
    assert _as_list(fast.coco["segm"].stats) == pytest.approx(_as_list(at300.coco["segm"].stats), abs=1e-9)


def test_mean_iou_by_hand():
    def square(y, x, s=4, h=10, w=10):
        m = np.zeros((h, w), dtype=bool)
        m[y: y + s, x: x + s] = True
        return rle.encode(m)

    images = [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}]
    anns = [annotation(1, 1, 1, square(0, 0)),   # predicted shifted by one column: 12 / 20 = 0.6
            annotation(2, 1, 2, square(6, 6)),   # only a wrong-class prediction covers it: 0
            annotation(3, 1, 1, square(5, 0))]   # two predictions, IoU 0.5 and 1.0: the best counts
    gt = Dataset(images, anns, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    two_rows = np.zeros((10, 10), dtype=bool)
    two_rows[5:7, 0:4] = True  # 8 px inside the 16 px GT 3: IoU 0.5
    preds = [
        {"image_id": 1, "category_id": 1, "segmentation": square(0, 1), "score": 0.9},
        {"image_id": 1, "category_id": 1, "segmentation": rle.encode(two_rows), "score": 0.8},
        {"image_id": 1, "category_id": 1, "segmentation": square(5, 0), "score": 0.7},
        {"image_id": 1, "category_id": 1, "segmentation": square(6, 6), "score": 0.6},
    ]
    report = evaluate(gt, preds, EvalSettings())
    assert report.mean_iou == pytest.approx((0.6 + 0.0 + 1.0) / 3)
    per = {c.id: c for c in report.mean_iou_per_category}
    assert per[1].mean_iou == pytest.approx(0.8) and per[1].instances == 2
    assert per[2].mean_iou == 0.0 and per[2].instances == 1
    agnostic = evaluate(gt, preds, EvalSettings(class_agnostic=True))
    assert agnostic.mean_iou == pytest.approx((0.6 + 1.0 + 1.0) / 3)


def test_retention_is_ap_over_reference(data):
    gt, _, preds = data
    frac = evaluate(gt, preds, EvalSettings(reference_ap=0.5))
    pct = evaluate(gt, preds, EvalSettings(reference_ap=50.0))
    assert frac.retention == pytest.approx(frac.mask_ap / 0.5)
    assert pct.retention == pytest.approx(frac.retention)
    assert frac.to_json()["retention"]["rate"] == pytest.approx(frac.retention)
    assert evaluate(gt, preds, EvalSettings()).retention is None


def test_boxes_only_predictions(data):
    gt, _, preds = data
    boxes = [{"image_id": p["image_id"], "category_id": p["category_id"], "score": p["score"],
              "bbox": rle.to_bbox(p["segmentation"])} for p in preds]
    report = evaluate(gt, boxes, EvalSettings())
    assert report.iou_types == ("bbox",) and report.mean_iou is None
    with_masks = evaluate(gt, preds, EvalSettings())
    assert report.box_ap == pytest.approx(with_masks.box_ap)  # tight boxes of the same masks
    with pytest.raises(BadInputError, match=r"predictions\[0\].*segmentation"):
        evaluate(gt, boxes, EvalSettings(iou_type="segm"))


def test_mixed_records_and_missing_scores(data):
    gt, _, preds = data
    # no score (counts 1.0), bbox on some records only, polygons on one: all evaluable
    mixed = [dict(p) for p in preds]
    for p in mixed:
        p.pop("score")
    mixed[0]["bbox"] = rle.to_bbox(mixed[0]["segmentation"])
    x, y, w, h = rle.to_bbox(mixed[1]["segmentation"])
    mixed[1]["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    report = evaluate(gt, mixed, EvalSettings())
    assert report.iou_types == ("segm", "bbox") and report.mask_ap > 0.2


def test_settings_are_checked():
    with pytest.raises(UsageError):
        EvalSettings(max_dets=5)
    with pytest.raises(UsageError):
        EvalSettings(reference_ap=0.0)
    with pytest.raises(UsageError):
        EvalSettings(iou_type="keypoints")  # type: ignore[arg-type]


def test_report_json_is_complete(data):
    gt, _, preds = data
    doc = json.loads(json.dumps(evaluate(gt, preds, EvalSettings(reference_ap=0.6)).to_json()))
    assert set(doc) >= {"settings", "backend", "iou_types", "segm", "bbox", "mean_iou",
                        "mean_iou_per_category", "retention", "counts"}
    assert doc["counts"]["gt_instances"] == len(gt.annotations)
    assert doc["counts"]["predictions"] == len(preds)
    assert len(doc["segm"]["stats"]) == 12
    assert [c["id"] for c in doc["segm"]["per_category"]] == [1, 2, 5]
