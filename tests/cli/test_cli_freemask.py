"""`wsis freemask` through real processes: output, sidecar, few labels, bad input (exit 3), resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import h5py
import pytest

from wsis_cli.io import coco
from wsis_cli.stages.synth import stage as synth

WSIS = [sys.executable, "-m", "wsis_cli"]
# a tiny random backbone at the images' own size: fast, no network
FAST = ["--arch", "resnet18", "--weights", "none", "--stage", "2", "--short-side", "0", "--min-score", "0",
        "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-freemask") / "d"
    synth.run(synth.SynthSettings(num_images=4, height=48, width=48, seed=3), synth.SynthJob(root))
    return root


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*WSIS, "freemask", *args], capture_output=True, text=True)


def test_folder_to_coco_with_embeddings(data, tmp_path):
    out, emb = tmp_path / "coarse.json", tmp_path / "emb.h5"
    r = _run(str(data / "images"), "-o", str(out), "--embeddings", str(emb), "--category", "thing", *FAST)
    assert r.returncode == 0, r.stderr
    ds = coco.load_dataset(out)
    assert [c["name"] for c in ds.categories] == ["thing"] and len(ds.images) == 4
    assert ds.annotations and all("emb" not in a and 0 < a["score"] <= 1 for a in ds.annotations)
    with h5py.File(emb) as f:
        g = f["images"]["1"]
        ids = [a["id"] for a in ds.annotations if a["image_id"] == 1]
        assert g["embeddings"].shape == (len(ids), 128) and list(g["annotation_ids"][()]) == ids


def test_stdout_and_coco_listing_input(data, tmp_path):
    r = _run(str(data / "gt.json"), "--images", str(data / "images"), "-o", "-", "--shard", "1/2", *FAST)
    assert r.returncode == 0, r.stderr
    ds = json.loads(r.stdout)
    assert [im["id"] for im in ds["images"]] == [2, 4]


def test_empty_folder_is_bad_input(tmp_path):
    (tmp_path / "imgs").mkdir()
    r = _run(str(tmp_path / "imgs"), "-o", str(tmp_path / "o.json"), *FAST)
    assert r.returncode == 3 and "no images found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_unreadable_image_is_bad_input(data, tmp_path):
    imgs = tmp_path / "imgs"
    shutil.copytree(data / "images", imgs)
    (imgs / "000002.png").write_bytes(b"not a png")
    r = _run(str(imgs), "-o", str(tmp_path / "o.json"), *FAST)
    assert r.returncode == 3 and "000002.png" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.json").exists()


def test_labeled_file_without_masks_is_bad_input(data, tmp_path):
    boxes = tmp_path / "boxes.json"
    shutil.copy(data / "boxes.json", boxes)
    r = _run(str(data / "images"), "-o", str(tmp_path / "o.json"), "--labeled", str(boxes), *FAST)
    assert r.returncode == 3 and "boxes.json" in r.stderr and "segmentation" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_labeled_fine_tunes_checkpoints_and_reuses(data, tmp_path):
    gt = coco.load_dataset(data / "gt.json")
    few = gt.with_annotations([a for a in gt.annotations if a["image_id"] == 1])
    few = coco.Dataset([im for im in gt.images if im["id"] == 1], few.annotations, gt.categories)
    coco.write_dataset(few, tmp_path / "few.json")
    out, run = tmp_path / "l.json", tmp_path / "run"
    r = _run(str(data / "images"), "-o", str(out), "--labeled", str(tmp_path / "few.json"), "--epochs", "1",
             "--run", str(run), *FAST)
    assert r.returncode == 0, r.stderr
    assert (run / "model.pt").exists() and (run / "last.pt").exists()
    again = tmp_path / "again.json"
    r = _run(str(data / "images"), "-o", str(again), "--checkpoint", str(run / "model.pt"), *FAST)
    assert r.returncode == 0, r.stderr
    assert json.loads(again.read_text())["annotations"] == json.loads(out.read_text())["annotations"]


def test_pretrain_writes_weights_that_weights_loads(data, tmp_path):
    """--pretrain trains on the inputs without labels; its model.pt goes back in through --weights and gives
    the same masks; a second --pretrain into the same run folder needs --resume."""
    out, run = tmp_path / "p.json", tmp_path / "run"
    fast = [a for a in FAST if a not in ("--weights", "none")]
    r = _run(str(data / "images"), "-o", str(out), "--pretrain", "--pretrain-epochs", "1", "--regions", "4", "--pretrain-side", "32",
             "--run", str(run), "--weights", "none", *fast)
    assert r.returncode == 0, r.stderr
    model = run / "pretrain" / "model.pt"
    assert model.exists() and (run / "pretrain" / "last.pt").exists()
    again = tmp_path / "again.json"
    r = _run(str(data / "images"), "-o", str(again), "--weights", str(model), *fast)
    assert r.returncode == 0, r.stderr
    assert json.loads(again.read_text())["annotations"] == json.loads(out.read_text())["annotations"]
    r = _run(str(data / "images"), "-o", str(out), "--pretrain", "--pretrain-epochs", "1", "--run", str(run),
             "--weights", "none", *fast)
    assert r.returncode == 2 and "--resume" in r.stderr
