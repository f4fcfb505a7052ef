"""`wsis eval` through real subprocesses: stdout hygiene, JSON report, bad input → exit 3, and the tables."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from wsis_cli.io import rle
from wsis_cli.io.coco import Dataset, annotation
from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate


def _disc(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _gt_and_preds() -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(7)
    h, w = 60, 80
    images, anns, preds = [], [], []
    for i in range(3):
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        for k in range(4):
            cy, cx, r = int(rng.integers(12, 48)), int(rng.integers(12, 68)), int(rng.integers(3, 11))
            cat = 1 + k % 2
            anns.append(annotation(len(anns) + 1, i + 1, cat, rle.encode(_disc(h, w, cy, cx, r))))
            if k < 3:  # one miss per image; the rest slightly off
                m = _disc(h, w, cy + int(rng.integers(-2, 3)), cx + int(rng.integers(-2, 3)), r)
                preds.append({"image_id": i + 1, "category_id": cat, "segmentation": rle.encode(m),
                              "score": float(rng.random())})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    return gt, preds


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("eval")
    gt, preds = _gt_and_preds()
    (d / "gt.json").write_text(json.dumps(gt))
    (d / "pred.json").write_text(json.dumps(preds))
    ds = {"images": gt["images"], "categories": gt["categories"],
          "annotations": [annotation(i + 1, p["image_id"], p["category_id"], p["segmentation"], score=p["score"])
                          for i, p in enumerate(preds)]}
    (d / "pred_dataset.json").write_text(json.dumps(ds))
    return {"dir": d, "gt": d / "gt.json", "pred": d / "pred.json", "pred_ds": d / "pred_dataset.json"}


def wsis(*args: object, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsis_cli", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_stdin_to_json_stdout_only(files):
    p = wsis("eval", "-", "--gt", files["gt"], "--json", "-", stdin=files["pred"].read_text())
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)  # nothing but the JSON on stdout
    assert "COCO evaluation" in p.stderr and "mean mask IoU" in p.stderr
    assert doc["iou_types"] == ["segm", "bbox"]
    assert doc["sources"] == {"gt": str(files["gt"]), "predictions": "<stdin>"}
    # the same numbers as the stage on the same data
    gt, preds = _gt_and_preds()
    report = evaluate(Dataset(gt["images"], gt["annotations"], gt["categories"]), preds, EvalSettings())
    assert doc["segm"]["stats"] == pytest.approx(report.coco["segm"].stats)
    assert doc["mean_iou"] == pytest.approx(report.mean_iou)
    assert 0.3 < doc["mean_iou"] < 1.0


def test_json_file_and_dataset_form(files, tmp_path):
    out = tmp_path / "report.json"
    p = wsis("eval", files["pred_ds"], "--gt", files["gt"], "--json", out, "--reference-ap", "50", "-q")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and p.stderr == ""  # --quiet: no table
    doc = json.loads(out.read_text())
    plain = wsis("eval", files["pred"], "--gt", files["gt"], "--json", "-")
    assert json.loads(plain.stdout)["segm"]["stats"] == doc["segm"]["stats"]
    assert doc["retention"]["rate"] == pytest.approx(doc["segm"]["stats"]["AP"] / 0.5)
    assert "retention" not in plain.stderr  # only shown against a reference AP


def test_options_reach_the_stage(files):
    p = wsis("eval", files["pred"], "--gt", files["gt"], "--json", "-", "--iou-type", "bbox",
             "--class-agnostic", "--max-dets", "300", "--backend", "faster")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["iou_types"] == ["bbox"] and doc["mean_iou"] is None
    assert doc["settings"] == {"iou_type": "bbox", "class_agnostic": True, "max_dets": 300,
                               "reference_ap": None, "backend": "faster"}
    assert "AR300" in doc["bbox"]["stats"] and "AR@300" in p.stderr


def test_usage_errors_exit_2(files):
    assert wsis("eval", files["pred"], "--gt", files["gt"], "--max-dets", "5").returncode == 2
    assert wsis("eval", files["pred"], "--gt", files["gt"], "--iou-type", "keypoints").returncode == 2
    assert wsis("eval", "-", "--gt", "-", stdin="[]").returncode == 2


def _bad(files, tmp_path, name: str, content: object, *, as_gt: bool = False, raw: str | None = None):
    path = tmp_path / name
    path.write_text(raw if raw is not None else json.dumps(content))
    args = ("eval", files["pred"], "--gt", path) if as_gt else ("eval", path, "--gt", files["gt"])
    p = wsis(*args, "--json", tmp_path / "out.json")
    assert p.returncode == 3, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert str(path) in lines[0]
    assert not (tmp_path / "out.json").exists()
    return lines[0]


def test_bad_predictions_exit_3(files, tmp_path):
    preds = json.loads(files["pred"].read_text())
    gt = json.loads(files["gt"].read_text())

    assert "malformed JSON" in _bad(files, tmp_path, "p1.json", None, raw='[{"image_id": 1,')
    assert "neither" in _bad(files, tmp_path, "p2.json", {"predictions": []})
    assert "neither" in _bad(files, tmp_path, "p3.json", 42)

    unknown_image = copy.deepcopy(preds)
    unknown_image[1]["image_id"] = 999
    assert "results[1]" in _bad(files, tmp_path, "p4.json", unknown_image)

    unknown_cat = copy.deepcopy(preds)
    unknown_cat[2]["category_id"] = 77
    line = _bad(files, tmp_path, "p5.json", unknown_cat)
    assert "results[2]" in line and "category" in line

    wrong_size = copy.deepcopy(preds)
    wrong_size[0]["segmentation"] = rle.encode(np.ones((10, 10), dtype=bool))
    line = _bad(files, tmp_path, "p6.json", wrong_size)
    assert "results[0]" in line and "size" in line

    for i, box in enumerate(([5, 5, 0, 4], [5, 5, -3, 4], [70, 50, 30, 30])):
        bad_box = copy.deepcopy(preds)
        bad_box[3]["bbox"] = box
        assert "results[3]" in _bad(files, tmp_path, f"p7{i}.json", bad_box)

    # the dataset form names the annotation record
    ds = {**gt, "annotations": [{**a, "image_id": 999} if a["id"] == 2 else a for a in gt["annotations"]]}
    assert "annotations[1] (id 2)" in _bad(files, tmp_path, "p8.json", ds)


def test_bad_ground_truth_exit_3(files, tmp_path):
    gt = json.loads(files["gt"].read_text())
    dup = copy.deepcopy(gt)
    dup["annotations"][3]["id"] = dup["annotations"][0]["id"]
    line = _bad(files, tmp_path, "g1.json", dup, as_gt=True)
    assert "annotations[3]" in line and "duplicate" in line

    beyond = copy.deepcopy(gt)
    beyond["annotations"][2]["bbox"] = [60.0, 40.0, 50.0, 50.0]
    assert "annotations[2]" in _bad(files, tmp_path, "g2.json", beyond, as_gt=True)

    assert "results list" in _bad(files, tmp_path, "g3.json", [], as_gt=True)

    p = wsis("eval", files["pred"], "--gt", tmp_path / "missing.json")
    assert p.returncode == 3 and "missing.json" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_json_into_missing_folder_exit_3_without_work(files, tmp_path):
    target = tmp_path / "nope" / "report.json"
    p = wsis("eval", files["pred"], "--gt", files["gt"], "--json", target)
    assert p.returncode == 3
    assert "nope" in p.stderr and "COCO evaluation" not in p.stderr  # failed before evaluating
    assert not target.exists() and not target.parent.exists()


def test_empty_results_list(files):
    p = wsis("eval", "-", "--gt", files["gt"], "--json", "-", stdin="[]")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["segm"]["stats"]["AP"] == 0.0 and doc["mean_iou"] == 0.0
    assert doc["segm"]["stats"]["APl"] is None


# ------------------------------------------------------------------------------------------- tables


def _render(fn, *args) -> str:
    buf = io.StringIO()
    fn(*args, console=Console(file=buf, width=120, color_system=None))
    return buf.getvalue()


def test_tables_render_reports():
    from wsis_cli.cli.tables import render_comparison, render_eval

    gt, preds = _gt_and_preds()
    ds = Dataset(gt["images"], gt["annotations"], gt["categories"])
    report = evaluate(ds, preds, EvalSettings(reference_ap=0.6))
    text = _render(render_eval, report)
    assert "AP @[.50:.95]" in text and "AR@100" in text and "retention" in text
    assert f"{100 * report.mask_ap:.1f}" in text and "–" in text  # no large objects: a dash, not -1
    boxes = evaluate(ds, [], EvalSettings(iou_type="bbox"))
    text = _render(render_comparison, [("jittered", report), ("nothing", boxes)], "Pseudo-labels")
    assert "Pseudo-labels" in text and "jittered" in text and "nothing" in text
    assert f"{100 * report.retention:.1f}%" in text and f"{100 * report.mean_iou:.1f}" in text


def test_faster_backend_missing_exit_2(files):
    # simulate an install without the fast-eval extra: the import of faster_coco_eval fails
    code = ("import sys; sys.modules['faster_coco_eval'] = None; from wsis_cli.cli.app import main; "
            f"main(['eval', {str(files['pred'])!r}, '--gt', {str(files['gt'])!r}, '--backend', 'faster'])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "wsis[fast-eval]" in p.stderr


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    """Five synthetic images; predictions: the ground truth without image 3's instances, as a results list."""
    from wsis_cli.stages.synth.settings import SynthJob, SynthSettings
    from wsis_cli.stages.synth.stage import run as synth

    d = tmp_path_factory.mktemp("eval-report") / "d"
    synth(SynthSettings(num_images=5, height=64, width=80, seed=2), SynthJob(d))
    gt = json.loads((d / "gt.json").read_text())
    results = [{k: v for k, v in a.items() if k != "id"} | {"score": 0.9}
               for a in gt["annotations"] if a["image_id"] != 3]
    (d / "results.json").write_text(json.dumps(results))
    return d


def test_report_draws_the_worst_images_from_stdin(synth_data, tmp_path):
    d, out = synth_data, tmp_path / "worst"
    p = wsis("eval", "-", "--gt", d / "gt.json", "-i", d / "images", "--report", out, "--report-limit", "3",
             "--json", "-", stdin=(d / "results.json").read_text())
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["sources"]["predictions"] == "<stdin>"  # stdout: the JSON only
    rep = json.loads((out / "report.json").read_text())
    assert rep["sort"] == "worst" and rep["sources"] == {"labels": "<stdin>", "gt": str(d / "gt.json")}
    assert [im["id"] for im in rep["images"]][0] == 3 and rep["images"][0]["score"] == 0.0
    assert len(rep["images"]) == 3 and [im["score"] for im in rep["images"][1:]] == [1.0, 1.0]
    assert "<h1>wsis eval: the worst images of &lt;stdin&gt;</h1>" in (out / "index.html").read_text()
    assert (out / "img" / "3.labels.png").is_file()
    assert (out / "img" / "3.gt.png").is_file()


def test_report_bad_input_is_one_line_and_writes_nothing(synth_data, tmp_path):
    d = synth_data
    empty = tmp_path / "no-images"
    empty.mkdir()
    out, js = tmp_path / "r", tmp_path / "e.json"
    p = wsis("eval", d / "results.json", "--gt", d / "gt.json", "-i", empty, "--report", out, "--json", js, "-q")
    assert p.returncode == 3
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "image file not found" in lines[0], p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["no-images"]  # no report, no partial folder, no JSON
    out.mkdir()
    (out / "keep.txt").write_text("x")
    p = wsis("eval", d / "results.json", "--gt", d / "gt.json", "-i", d / "images", "--report", out)
    assert p.returncode == 3 and "not empty" in p.stderr and "COCO evaluation" not in p.stderr
    assert [x.name for x in out.iterdir()] == ["keep.txt"]
    p = wsis("eval", d / "results.json", "--gt", d / "gt.json", "--report", out, "--report-limit", "0")
    assert p.returncode == 2 and "--report-limit" in p.stderr
    p = wsis("eval", d / "results.json", "--gt", d / "gt.json", "--report", "-")
    assert p.returncode == 2 and "--report writes a folder" in p.stderr and "COCO evaluation" not in p.stderr
