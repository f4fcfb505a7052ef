"""The demo runs every labelling path on synthetic data and scores it against the ground truth."""

from __future__ import annotations

import json

import pytest

from wsis_cli.io import coco
from wsis_cli.stages.demo.settings import DemoJob, DemoSettings
from wsis_cli.stages.demo.stage import run


def test_demo_scores_the_box_filled_floor(tmp_path):
    rows = run(DemoSettings(num_images=6, height=96, width=128, seed=3, methods=("box-filled",), students=False),
               DemoJob(tmp_path)).rows
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
    quick = DemoSettings(num_images=4, height=64, width=64, seed=1, methods=("box-filled",), students=False)
    first = run(quick, DemoJob(tmp_path)).rows
    again = run(quick, DemoJob(tmp_path)).rows
    assert first[0].report.mean_iou == again[0].report.mean_iou


def test_students_are_trained_by_default_with_retention_of_the_upper_bound(tmp_path):
    """Students are on by default: one on the ground truth (the upper bound), one per path's labels, with
    retention against the bound (a tiny 1-epoch run here; the real demo trains student.demo.DEMO_EPOCHS)."""
    rows = run(DemoSettings(num_images=4, height=64, width=64, seed=1, methods=("box-filled",), student_epochs=1),
               DemoJob(tmp_path)).rows
    assert [r.method for r in rows] == ["box-filled masks (floor)", "student ← ground truth (upper bound)",
                                        "student ← box-filled masks (floor)"]
    upper, student = rows[1].report, rows[2].report
    assert upper.mean_iou is not None and student.mean_iou is not None
    assert (tmp_path / "student-gt" / "model.pt").is_file() and (tmp_path / "student-box-filled" / "model.pt").is_file()
    if upper.mask_ap:  # retention is defined against a bound above zero
        assert student.retention is not None
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["rows"]) == 3 and report["settings"]["students"] is True


def test_unknown_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown demo methods"):
        run(DemoSettings(num_images=4, height=64, width=64, methods=("nope",)), DemoJob(tmp_path))


@pytest.mark.slow
def test_every_path_runs_and_refinement_rows_follow(tmp_path):
    """All four paths (and refine-crf on each learnt one) on a small set: every row is scored."""
    rows = run(DemoSettings(num_images=8, height=96, width=96, seed=2, student_epochs=2), DemoJob(tmp_path)).rows
    names = [r.method for r in rows]
    assert names[0].startswith("box-filled")
    for key in ("mal-label", "cam → irnet", "freemask (class-agnostic)"):
        assert key in names
    assert "mal-label + refine-crf" in names  # MAL labels every box, so its refinement row always exists
    assert all(r.report.mean_iou is not None for r in rows)
    mal = next(r for r in rows if r.method == "mal-label").report
    assert mal.mean_iou > 0.3  # a trained MAL labels boxes with real masks
    students = [n for n in names if n.startswith("student ←")]
    assert students[0] == "student ← ground truth (upper bound)" and len(students) >= 3


def test_job_pool_runs_jobs_in_workers_and_reports_their_time():
    import math
    import operator
    import os

    from wsis_cli.stages.demo.jobs import JobPool

    for jobs in (1, 2):  # 1: in this process at once; 2: two spawned workers
        with JobPool(jobs) as pool:
            a, b = pool.submit(math.prod, [2, 3, 7]), pool.submit(operator.add, 1, 2)
            bad = pool.submit(operator.truediv, 1, 0) if jobs == 2 else None
            (ra, ta), (rb, _) = a.get(), b.get()
            assert (ra, rb) == (42, 3) and ta.wall >= 0 and ta.cpu >= 0
            pid, _ = pool.submit(os.getpid).get()
            assert (pid != os.getpid()) == (jobs == 2)  # 2 jobs really run in worker processes
            if bad is not None:
                with pytest.raises(ZeroDivisionError):  # a job's error reaches the caller
                    bad.get()


def test_demo_settings_take_their_size_from_one_place():
    from wsis_cli.stages.demo.settings import FULL_IMAGES, FULL_SIZE

    base = DemoSettings()
    assert DemoSettings.make() == base
    full = DemoSettings.make(full=True)
    assert (full.num_images, (full.height, full.width), full.full) == (FULL_IMAGES, FULL_SIZE, True)
    assert DemoSettings.make(num_images=5, size=(64, 96)).num_images == 5
