"""wsis synth through a real subprocess: files, exit codes, one-line errors, logs on stderr only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from wsis_cli.io import coco, images


def _wsis(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wsis_cli", *args], capture_output=True, text=True, timeout=120)


def test_writes_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _wsis("synth", str(out), "--num-images", "3", "--size", "64x96", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "3 images" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["boxes.json", "gt.json", "images", "labels.json"]
    gt = coco.load_dataset(out / "gt.json", need="segmentation")
    assert len(gt.images) == 3 and gt.annotations
    for im in gt.images:
        assert images.load_image_for(out / "images", im, "gt.json").shape == (64, 96, 3)
    assert not list(tmp_path.glob("*.partial-*"))


def test_height_width_and_quiet(tmp_path: Path) -> None:
    out = tmp_path / "hw"
    r = _wsis("synth", str(out), "-n", "2", "--height", "40", "--width", "56", "--classes", "5", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    gt = coco.load_dataset(out / "gt.json")
    assert {(im["height"], im["width"]) for im in gt.images} == {(40, 56)}
    assert len(gt.categories) == 5


def test_existing_nonempty_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = _wsis("synth", str(out), "-n", "1", "--size", "32x32")
    assert r.returncode == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0]
    assert (out / "keep.txt").read_text() == "mine"
    r = _wsis("synth", str(out), "-n", "1", "--size", "32x32", "--force")
    assert r.returncode == 0, r.stderr
    assert not (out / "keep.txt").exists() and (out / "gt.json").is_file()


def test_missing_parent_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "out"
    r = _wsis("synth", str(out), "-n", "1")
    assert r.returncode == 3
    assert len(r.stderr.strip().splitlines()) == 1 and str(out) in r.stderr
    r = _wsis("synth", str(tmp_path / "no" / "out"), "-n", "1")
    assert r.returncode == 3
    assert not (tmp_path / "no").exists()


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for args in (["--size", "64by96"], ["--classes", "9"], ["--min-instances", "4", "--max-instances", "2"]):
        r = _wsis("synth", str(tmp_path / "x"), "-n", "1", *args)
        assert r.returncode == 2, (args, r.stderr)
    assert not (tmp_path / "x").exists()
