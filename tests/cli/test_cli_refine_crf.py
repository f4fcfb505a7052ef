"""`wsis refine-crf` through real processes: pipes, and bad input with exit 3."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wsis_cli.io import coco
from wsis_cli.stages.baselines.degrade import degrade_dataset
from wsis_cli.stages.synth import stage as synth

WSIS = [sys.executable, "-m", "wsis_cli"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-refine") / "d"
    synth.run(synth.SynthSettings(num_images=3, height=64, width=80, seed=5), synth.SynthJob(root))
    bad = degrade_dataset(coco.load_dataset(root / "gt.json"), "dilate", radius=2)
    coco.write_dataset(bad, root / "bad.json")
    return root


def test_pipes_refine_into_eval(data):
    with open(data / "bad.json") as src:
        refine = subprocess.Popen([*WSIS, "refine-crf", "-", "-i", str(data / "images"), "-o", "-", "-q"],
                                  stdin=src, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ev = subprocess.run([*WSIS, "eval", "-", "--gt", str(data / "gt.json"), "--json", "-", "-q"],
                            stdin=refine.stdout, capture_output=True, text=True)
    refine.stdout.close()
    assert refine.wait() == 0, refine.stderr.read()
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    # dilated input 0.559; above 0.75 refined with the default guard, 0.924 with --guard none
    assert report["mean_iou"] > 0.75


def test_missing_image_file_is_bad_input(data, tmp_path):
    out = tmp_path / "o.json"
    r = subprocess.run([*WSIS, "refine-crf", str(data / "bad.json"), "-i", str(tmp_path), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 3
    assert "image file not found" in r.stderr and "image id 1" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()  # only the .partial checkpoint (never mistaken for output) may remain for --resume


def test_output_in_missing_folder_fails_before_work(data, tmp_path):
    r = subprocess.run([*WSIS, "refine-crf", str(data / "bad.json"), "-i", str(data / "images"),
                        "-o", str(tmp_path / "nope" / "o.json")], capture_output=True, text=True)
    assert r.returncode == 3 and "does not exist" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_parameters_are_usage_errors(data):
    r = subprocess.run([*WSIS, "refine-crf", str(data / "bad.json"), "--confidence", "0.3"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    r = subprocess.run([*WSIS, "refine-crf", str(data / "bad.json"), "--kernel-size", "4"],
                       capture_output=True, text=True)
    assert r.returncode == 2


def _maps(data, path, file_names=True):
    import numpy as np

    from wsis_cli.io.h5 import H5Writer

    gt = coco.load_dataset(data / "gt.json")
    with H5Writer(path, "cam", {}, {}) as w:
        for im in gt.images:
            attrs = {"height": im["height"], "width": im["width"]}
            if file_names:
                attrs["file_name"] = im["file_name"]
            cams = np.random.default_rng(im["id"]).random((2, 16, 20)).astype(np.float32)
            w.put(im["id"], {"cams": cams}, attrs=attrs, dataset_attrs={"cams": {"stride": 4, "category_ids": [1, 2]}})


def test_score_maps_in_hdf5_out(data, tmp_path):
    _maps(data, tmp_path / "cams.h5")
    r = subprocess.run([*WSIS, "refine-crf", str(tmp_path / "cams.h5"), "-i", str(data / "images"),
                        "-o", str(tmp_path / "ref.h5"), "-q", "--device", "cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from wsis_cli.io.h5 import H5Reader

    with H5Reader(tmp_path / "ref.h5", expect_stage="refine-crf") as ref:
        assert len(ref) == 3
        got = ref.get(ref.ids()[0])
        assert got["labels"].shape == (64, 80) and set(got["labels"].ravel()) <= {0, 1, 2}
    r = subprocess.run([*WSIS, "refine-crf", str(tmp_path / "cams.h5"), "-i", str(data / "images"), "-o", "-"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "HDF5" in r.stderr


def test_score_maps_without_names_exit_3(data, tmp_path):
    _maps(data, tmp_path / "bare.h5", file_names=False)
    r = subprocess.run([*WSIS, "refine-crf", str(tmp_path / "bare.h5"), "-i", str(data / "images"),
                        "-o", str(tmp_path / "o.h5"), "-q"], capture_output=True, text=True)
    assert r.returncode == 3 and "--dataset" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.h5").exists()
