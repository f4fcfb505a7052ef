"""`wsis show` through real subprocesses: stdin, exit codes for bad input and usage, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wsis_cli.stages.synth.stage import SynthJob, SynthSettings
from wsis_cli.stages.synth.stage import run as synth


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("show-cli") / "d"
    synth(SynthSettings(num_images=4, height=64, width=80, seed=1), SynthJob(d))
    return d


def wsis(*args: object, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsis_cli", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def test_stdin_results_list_against_gt(data: Path, tmp_path: Path) -> None:
    gt = json.loads((data / "gt.json").read_text())
    results = [{k: v for k, v in a.items() if k != "id"} | {"score": 0.9} for a in gt["annotations"][1:]]
    out = tmp_path / "r"
    res = wsis("show", "-", "--gt", data / "gt.json", "-i", data / "images", "-o", out, "--limit", "2",
               stdin=json.dumps(results))
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""  # the report is a folder: nothing on stdout
    assert f"open {out / 'index.html'}" in res.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["sources"]["labels"] == "<stdin>" and len(rep["images"]) == 2
    assert rep["images"][0]["score"] < 1.0  # the image that lost its first instance comes first
    assert rep["images"][0]["id"] == gt["annotations"][0]["image_id"]


def test_bad_record_is_one_line_exit_3_and_nothing_written(data: Path, tmp_path: Path) -> None:
    gt = json.loads((data / "gt.json").read_text())
    gt["annotations"][2]["segmentation"] = {"size": [3, 3], "counts": "bogus"}
    (tmp_path / "bad.json").write_text(json.dumps(gt))
    res = wsis("show", tmp_path / "bad.json", "-i", data / "images", "-o", tmp_path / "r")
    assert res.returncode == 3
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.json: annotations[2]" in lines[0], res.stderr
    res = wsis("show", tmp_path / "missing.json", "-i", data / "images", "-o", tmp_path / "r")
    assert res.returncode == 3 and "missing.json: file not found" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_usage_errors_exit_2(data: Path, tmp_path: Path) -> None:
    res = wsis("show", data / "gt.json", "-i", data / "images", "-o", tmp_path / "r", "--ids", "1,x")
    assert res.returncode == 2 and "--ids" in res.stderr
    res = wsis("show", "-", "--gt", "-", "-o", tmp_path / "r", stdin="[]")
    assert res.returncode == 2 and "stdin" in res.stderr
    res = wsis("show", data / "gt.json", "-i", data / "images", "-o", tmp_path / "r", "--sort", "worst")
    assert res.returncode == 2 and "--gt or --compare" in res.stderr
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("x")
    res = wsis("show", data / "gt.json", "-i", data / "images", "-o", tmp_path / "r")
    assert res.returncode == 3 and "not empty" in res.stderr
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["keep.txt"]
