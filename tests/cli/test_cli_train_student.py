"""``wsis train-student`` through the real CLI: train, predict, eval; bad input exits 3 with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wsis_cli.stages.synth import stage as synth

TINY = ["--arch", "resnet18-fpn", "--weights", "none", "--min-size", "64", "--max-size", "64", "--batch-size", "2",
        "--rois-per-image", "16", "--warmup-iters", "1", "--lr", "0.02", "--workers", "0", "--device", "cpu"]


def wsis(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "wsis_cli", *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-student") / "synth"
    synth.run(synth.SynthSettings(num_images=2, height=64, width=64, classes=1, min_instances=1, max_instances=2,
                                  seed=5), synth.SynthJob(root))
    return root


def test_train_predict_and_eval(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    wsis("train-student", str(data / "gt.json"), "-i", str(data / "images"), "-o", str(run), "--epochs", "1",
         "--mask-head-channels", "16", *TINY, "--batch-size", "1", "--accumulate", "2")
    settings = json.loads((run / "run.json").read_text())["settings"]
    assert settings["arch"] == "resnet18-fpn" and settings["lr"] == 0.02 and settings["mask_head_channels"] == 16
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 1 and epochs[0]["step"] == 1  # two micro-batches of one image: one optimizer step
    preds = tmp_path / "preds.json"
    wsis("train-student", "--checkpoint", str(run / "model.pt"), str(data / "gt.json"), "-i", str(data / "images"),
         "-o", str(preds), "--max-dets", "10", "--device", "cpu")
    results = json.loads(preds.read_text())
    assert isinstance(results, list)
    assert all(set(r) == {"image_id", "category_id", "segmentation", "bbox", "score"} for r in results)
    ev = wsis("eval", "--gt", str(data / "gt.json"), str(preds), "--json", "-", "--max-dets", "10")
    assert "segm" in json.loads(ev.stdout) or "bbox" in json.loads(ev.stdout)
    # a folder of images, written as a dataset that can be trained on
    ds_out = tmp_path / "pred-ds.json"
    wsis("train-student", "--checkpoint", str(run / "model.pt"), str(data / "images"), "-o", str(ds_out),
         "--format", "dataset", "--score-threshold", "0", "--device", "cpu")
    ds = json.loads(ds_out.read_text())
    assert len(ds["images"]) == 2 and ds["categories"][0]["id"] == 1
    # the run folder is not reused without --resume
    again = wsis("train-student", str(data / "gt.json"), "-i", str(data / "images"), "-o", str(run), *TINY,
                 check=False)
    assert again.returncode == 2 and "--resume" in again.stderr


@pytest.mark.parametrize("case", ["missing-image", "boxes-only", "not-a-model", "bad-category-in-val"])
def test_bad_input_exits_3_with_one_line(data: Path, tmp_path: Path, case: str) -> None:
    gt = json.loads((data / "gt.json").read_text())
    labels = tmp_path / "labels.json"
    extra: list[str] = []
    if case == "missing-image":
        gt["images"][1]["file_name"] = "nope.png"
    elif case == "boxes-only":
        for a in gt["annotations"]:
            a.pop("segmentation")
    elif case == "bad-category-in-val":
        val = json.loads(json.dumps(gt))
        val["categories"].append({"id": 7, "name": "other"})
        val["annotations"][0]["category_id"] = 7
        (tmp_path / "val.json").write_text(json.dumps(val))
        extra = ["--val", str(tmp_path / "val.json"), "--epochs", "0"]
    labels.write_text(json.dumps(gt))
    if case == "not-a-model":
        bogus = tmp_path / "model.pt"
        bogus.write_bytes(b"not a checkpoint")
        args = ["--checkpoint", str(bogus), str(labels), "-i", str(data / "images"), "-o", str(tmp_path / "p.json")]
    else:
        args = [str(labels), "-i", str(data / "images"), "-o", str(tmp_path / "run"), *TINY, *extra]
    proc = wsis("train-student", *args, check=False)
    assert proc.returncode == 3, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("wsis: error:")]
    assert len(lines) == 1, proc.stderr
    assert {"missing-image": "nope.png", "boxes-only": "has no segmentation", "not-a-model": "model.pt",
            "bad-category-in-val": "category 7"}[case] in lines[0]
    assert not (tmp_path / "run" / "model.pt").exists() and not (tmp_path / "p.json").exists()
