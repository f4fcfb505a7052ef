"""The chunked eval backend reproduces pycocotools' COCOeval arrays and statistics exactly.

Random cases cover what changes a match: crowd regions, duplicate ground truths (equal IoUs: the last
one wins), tied scores (input order breaks them), every size range, several categories, truncation at
maxDets, class-agnostic matching, boxes and masks, detections whose area comes from their box (loadRes
takes the box form when the first record has a bbox), and chunks of a few images.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from wsis_cli.io import rle
from wsis_cli.io.coco import Dataset
from wsis_cli.stages.evaluate import stage as eval_stage
from wsis_cli.stages.evaluate.chunked import evaluate_chunked
from wsis_cli.stages.evaluate.mean_iou import mean_instance_iou
from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate

CATS = [{"id": 2, "name": "a"}, {"id": 7, "name": "b"}, {"id": 3, "name": "c"}]


def _box_mask(h: int, w: int, x: int, y: int, bw: int, bh: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y: y + bh, x: x + bw] = True
    return m


def random_case(seed: int, n_images: int = 7, h: int = 120, w: int = 140, dense: bool = False):
    """GT with crowd regions and duplicates; predictions jittered, duplicated, tied and false."""
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], []
    for i in range(n_images):
        iid = 50 - 3 * i  # ids not in file order
        images.append({"id": iid, "file_name": f"{i}.png", "height": h, "width": w})
        n = int(rng.integers(0, 25 if dense else 9))
        for _ in range(n):
            size = int(rng.choice([4, 20, 40, 100]))
            bw, bh = min(size + int(rng.integers(0, 6)), w - 1), min(size, h - 1)
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            m = _box_mask(h, w, x, y, bw, bh)
            cat = int(rng.choice([2, 7, 3]))
            crowd = int(rng.random() < 0.1)
            copies = 2 if rng.random() < 0.1 else 1  # duplicate GT: equal IoUs
            for _ in range(copies):
                anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": cat, "iscrowd": crowd,
                             "segmentation": rle.encode(m), "area": float(m.sum()), "bbox": [x, y, bw, bh]})
            for _ in range(int(rng.integers(0, 3))):  # 0, 1 or 2 detections per object
                dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
                pm = _box_mask(h, w, max(x + dx, 0), max(y + dy, 0), bw, bh)
                pcat = cat if rng.random() < 0.9 else int(rng.choice([2, 7, 3]))
                preds.append({"image_id": iid, "category_id": pcat, "segmentation": rle.encode(pm),
                              "score": float(np.round(rng.random(), 1))})  # rounded: many ties
        for _ in range(int(rng.integers(0, 4))):  # false positives
            s = int(rng.choice([5, 30, 70]))
            x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
            preds.append({"image_id": iid, "category_id": int(rng.choice([2, 7, 3])),
                          "segmentation": rle.encode(_box_mask(h, w, x, y, s, s)),
                          "score": float(np.round(rng.random(), 1))})
    order = rng.permutation(len(preds))
    preds = [preds[k] for k in order]
    return Dataset(images, anns, [dict(c) for c in CATS], source="gt.json"), preds


def pycocotools_arrays(gt: Dataset, preds: list[dict], iou_type: str, max_dets: int, agnostic: bool):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_json, _ = eval_stage._prepare_gt(gt, agnostic)
    dts, _ = eval_stage._prepare_predictions(preds, gt, agnostic, "predictions")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_json
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dts), iou_type)
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    return np.asarray(ev.eval["precision"]), np.asarray(ev.eval["recall"])


CASES = [
    # seed, iou type, max dets, class agnostic, prediction form, chunk size
    (0, "segm", 100, False, "masks", 2),
    (1, "bbox", 100, False, "masks", 3),
    (2, "segm", 10, False, "masks", 1),
    (3, "bbox", 10, True, "masks", 4),
    (4, "segm", 100, True, "masks", 100),
    (5, "segm", 100, False, "masks+box", 2),  # first record has a bbox: areas are box areas
    (6, "bbox", 100, False, "boxes", 2),
    (7, "bbox", 12, False, "boxes", 5),
]


@pytest.mark.parametrize(("seed", "iou_type", "max_dets", "agnostic", "form", "chunk"), CASES)
def test_arrays_equal_pycocotools(seed, iou_type, max_dets, agnostic, form, chunk):
    gt, preds = random_case(seed, dense=max_dets < 100)
    if form == "boxes":
        preds = [{"image_id": p["image_id"], "category_id": p["category_id"], "score": p["score"],
                  "bbox": rle.to_bbox(p["segmentation"])} for p in preds]
    elif form == "masks+box":
        preds = [{**p, "bbox": rle.to_bbox(p["segmentation"])} if k % 2 == 0 else p for k, p in enumerate(preds)]
    want_p, want_r = pycocotools_arrays(gt, preds, iou_type, max_dets, agnostic)
    got = evaluate_chunked(gt, preds, iou_type, max_dets, class_agnostic=agnostic, chunk_images=chunk)
    assert got.precision.shape == want_p.shape and got.recall.shape == want_r.shape
    np.testing.assert_array_equal(got.recall, want_r)
    np.testing.assert_array_equal(got.precision, want_p)
    assert (want_p > 0).any()  # the case is not degenerate


@pytest.mark.parametrize(("seed", "iou_type", "max_dets", "agnostic", "form", "chunk"),
                         [c for c in CASES if c[1] == "segm"])
def test_mean_iou_from_the_chunked_pass_equals_mean_instance_iou(seed, iou_type, max_dets, agnostic, form, chunk):
    """Same floats as the separate pass, per category too; maxDets does not drop predictions from it."""
    gt, preds = random_case(seed, dense=max_dets < 100)
    if form == "masks+box":
        preds = [{**p, "bbox": rle.to_bbox(p["segmentation"])} if k % 2 == 0 else p for k, p in enumerate(preds)]
    got = evaluate_chunked(gt, preds, iou_type, max_dets, class_agnostic=agnostic, chunk_images=chunk).mean_iou
    assert got == mean_instance_iou(gt, preds, class_agnostic=agnostic)
    assert got is not None and 0 < got.mean_iou < 1
    assert evaluate_chunked(gt, preds, "bbox", max_dets, class_agnostic=agnostic).mean_iou is None


def test_ground_truth_id_zero_counts_as_no_match_like_pycocotools():
    gt, preds = random_case(11)
    gt.annotations[0]["id"] = 0  # pycocotools reads dtMatches == 0 as "unmatched"
    want_p, want_r = pycocotools_arrays(gt, preds, "bbox", 100, False)
    got = evaluate_chunked(gt, preds, "bbox", 100, chunk_images=3)
    np.testing.assert_array_equal(got.precision, want_p)
    np.testing.assert_array_equal(got.recall, want_r)


@pytest.mark.parametrize(("max_dets", "agnostic"), [(100, False), (10, False), (300, True)])
def test_stage_report_matches_pycocotools_backend(max_dets, agnostic):
    gt, preds = random_case(20, dense=True)
    slow = evaluate(gt, preds, EvalSettings(backend="pycocotools", max_dets=max_dets, class_agnostic=agnostic))
    fast = evaluate(gt, preds, EvalSettings(backend="chunked", max_dets=max_dets, class_agnostic=agnostic))
    assert fast.iou_types == slow.iou_types == ("segm", "bbox")
    for t in fast.iou_types:
        assert list(fast.coco[t].stats) == list(slow.coco[t].stats)
        for name, v in fast.coco[t].stats.items():
            assert v == pytest.approx(slow.coco[t].stats[name], abs=1e-9) if v is not None else \
                slow.coco[t].stats[name] is None
        assert fast.coco[t].per_category == slow.coco[t].per_category
    assert fast.mean_iou == slow.mean_iou
    assert fast.counts == slow.counts


def test_inputs_untouched_and_empty_predictions():
    import copy

    gt, preds = random_case(30)
    before = (copy.deepcopy(gt.to_json()), copy.deepcopy(preds))
    evaluate(gt, preds, EvalSettings(backend="chunked"))
    assert (gt.to_json(), preds) == before
    empty = evaluate(gt, [], EvalSettings(backend="chunked"))
    ref = evaluate(gt, [], EvalSettings(backend="pycocotools"))
    for t in ("segm", "bbox"):
        assert empty.coco[t].stats == ref.coco[t].stats


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_equal_ious_go_to_the_last_ground_truth(iou_type):
    """A detection exactly between two ground truths takes the later one (pycocotools' ``>=``), which
    decides what the next detection can still match."""
    h, w = 20, 30
    gts = [(0, 0, 10, 10), (2, 0, 10, 10)]
    dts = [((1, 0, 10, 10), 0.9), ((2, 0, 10, 10), 0.8), ((0, 0, 10, 10), 0.7)]
    images = [{"id": 1, "file_name": "a.png", "height": h, "width": w}]
    anns = [{"id": k + 1, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": list(b), "area": 100.0,
             "segmentation": rle.encode(_box_mask(h, w, *b))} for k, b in enumerate(gts)]
    preds = [{"image_id": 1, "category_id": 2, "score": s, "bbox": list(b),
              "segmentation": rle.encode(_box_mask(h, w, *b))} for b, s in dts]
    gt = Dataset(images, anns, [dict(c) for c in CATS])
    want_p, want_r = pycocotools_arrays(gt, preds, iou_type, 100, False)
    got = evaluate_chunked(gt, preds, iou_type, 100)
    np.testing.assert_array_equal(got.precision, want_p)
    np.testing.assert_array_equal(got.recall, want_r)
