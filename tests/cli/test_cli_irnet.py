"""``wsis irnet`` through the real command line: output, errors as one line with exit 3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
from irnet_fakes import write_fake_cams  # noqa: E402

from wsis_cli.io.h5 import H5Writer  # noqa: E402
from wsis_cli.stages.synth import stage as synth  # noqa: E402

FAST = ["--weights", "none", "--arch", "resnet18", "--epochs", "1", "--batch-size", "2", "--walk-steps", "8",
        "--crf-iterations", "2", "--device", "cpu", "-q"]


def wsis(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wsis_cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_irnet")
    synth.run(synth.SynthSettings(num_images=2, height=84, width=80, classes=2, min_instances=2, max_instances=3,
                                  seed=5), synth.SynthJob(root / "data"))
    write_fake_cams(root / "data" / "gt.json", root / "cams.h5")
    return root


def test_writes_a_coco_dataset_and_its_run(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "pseudo.json"
    r = wsis("irnet", str(data / "cams.h5"), "-i", str(data / "data" / "images"), "-o", str(out), *FAST,
             "--train-radius", "7", "--basin-threshold", "0.5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ds = json.loads(out.read_text())
    assert [im["id"] for im in ds["images"]] == [1, 2]
    assert all("score" in a and "segmentation" in a for a in ds["annotations"])
    assert (tmp_path / "pseudo.irnet-run" / "model.pt").is_file()
    settings = json.loads((tmp_path / "pseudo.irnet-run" / "run.json").read_text())["settings"]
    assert settings["train_radius"] == 7 and settings["basin_threshold"] == 0.5
    r = wsis("irnet", str(data / "cams.h5"), "-i", str(data / "data" / "images"), "-o", "-", "--checkpoint",
             str(tmp_path / "pseudo.irnet-run" / "model.pt"), "--walk-steps", "8", "-q", "--device", "cpu",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["annotations"] == ds["annotations"]


def test_cams_of_another_stage_exit_3(data: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with H5Writer(other, "freemask", {}, {}) as w:
        w.put(1, {"x": np.zeros(2)})
    r = wsis("irnet", str(other), "-i", str(data / "data" / "images"), "-o", str(tmp_path / "p.json"), *FAST,
             cwd=tmp_path)
    assert r.returncode == 3
    assert len(r.stderr.strip().splitlines()) == 1 and "expected 'cam'" in r.stderr


def test_missing_images_exit_3(data: Path, tmp_path: Path) -> None:
    r = wsis("irnet", str(data / "cams.h5"), "-i", str(tmp_path), "-o", str(tmp_path / "p.json"), *FAST,
             cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "image file not found" in r.stderr
    assert not (tmp_path / "p.json").exists()
