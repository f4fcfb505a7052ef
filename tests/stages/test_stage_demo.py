"""The demo runs every labelling path on synthetic data and scores it against the ground truth."""

from __future__ import annotations

import json

from wsis_cli.io import coco
from wsis_cli.stages.demo import DemoSettings, run


def test_demo_scores_the_box_filled_floor(tmp_path):
    rows = run(DemoSettings(num_images=6, height=96, width=128, seed=3), tmp_path)
    assert [r.supervision for r in rows] == ["boxes"]
    box = rows[0].report
    # Filled boxes are exact boxes (box AP 1) but poor masks: the floor for box supervision.
    assert box.box_ap is not None and box.box_ap > 0.99
    assert box.mean_iou is not None and 0.4 < box.mean_iou < 0.9
    assert box.mask_ap is not None and box.mask_ap < 0.6
    # Every intermediate file is kept and readable.
    labelled = coco.load_dataset(rows[0].output)
    gt = coco.load_dataset(tmp_path / "data" / "gt.json")
    assert len(labelled.annotations) == len(gt.annotations)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rows"][0]["report"]["mean_iou"] == box.mean_iou


def test_demo_reruns_into_the_same_folder(tmp_path):
    first = run(DemoSettings(num_images=4, height=64, width=64, seed=1), tmp_path)
    again = run(DemoSettings(num_images=4, height=64, width=64, seed=1), tmp_path)
    assert first[0].report.mean_iou == again[0].report.mean_iou
