"""`wsis cam` through real processes: train then predict from the checkpoint; bad input exits 3 in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wsis_cli.io.h5 import H5Reader
from wsis_cli.io.stdio import read_json, write_json
from wsis_cli.stages.synth import stage as synth

WSIS = [sys.executable, "-m", "wsis_cli"]
TINY = ["--arch", "resnet18", "--weights", "none", "--epochs", "1", "--batch-size", "4", "--scales", "1,0.5",
        "--crop", "48", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-cam") / "d"
    synth.run(synth.SynthSettings(num_images=6, height=48, width=48, classes=2, min_instances=1, max_instances=2,
                                  seed=4), synth.SynthJob(root))
    return root


def _cam(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*WSIS, "cam", *args], capture_output=True, text=True, **kw)


def test_train_then_predict_with_gradcam(data, tmp_path):
    out = tmp_path / "cams.h5"
    p = _cam(str(data / "labels.json"), "-i", str(data / "images"), "-o", str(out), *TINY)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "cams.cam-run" / "model.pt").is_file()
    p = _cam(str(data / "labels.json"), "-i", str(data / "images"), "-o", str(tmp_path / "g.h5"), "--checkpoint",
             str(tmp_path / "cams.cam-run" / "model.pt"), "--method", "gradcam", "--scales", "1", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    with H5Reader(tmp_path / "g.h5", "cam") as r:
        assert len(r) == 6 and r.settings["method"] == "gradcam"


@pytest.mark.parametrize("case", ["no-labels", "missing-image", "corrupt-checkpoint"])
def test_bad_input_exits_3_with_one_line(data, tmp_path, case):
    labels = read_json(data / "labels.json")
    extra: list[str] = []
    if case == "no-labels":
        labels["annotations"] = []
    elif case == "missing-image":
        labels["images"][1]["file_name"] = "gone.png"
    else:
        (tmp_path / "model.pt").write_bytes(b"\x00garbage")
        extra = ["--checkpoint", str(tmp_path / "model.pt")]
    write_json(labels, tmp_path / "labels.json")
    out = tmp_path / "cams.h5"
    p = _cam(str(tmp_path / "labels.json"), "-i", str(data / "images"), "-o", str(out), *TINY, *extra)
    assert p.returncode == 3, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsis: error:"), p.stderr
    assert not out.exists()


def test_bad_option_values_are_usage_errors(data, tmp_path):
    p = _cam(str(data / "labels.json"), "-o", str(tmp_path / "c.h5"), "--scales", "1,x")
    assert p.returncode == 2
    p = _cam(str(data / "labels.json"), "-o", str(tmp_path / "c.h5"), "--resize-long", "100")
    assert p.returncode == 2
