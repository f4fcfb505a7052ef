"""``wsis irnet`` as a stage: output format, --checkpoint, --resume, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from irnet_fakes import write_fake_cams

from wsis_cli.io import coco, rle
from wsis_cli.io.h5 import H5Writer
from wsis_cli.io.images import read_image
from wsis_cli.runtime.errors import BadInputError
from wsis_cli.stages.irnet.stage import IRNetJob, IRNetSettings, run
from wsis_cli.stages.synth import stage as synth

FAST = IRNetSettings(weights="none", arch="resnet18", epochs=1, batch_size=4, walk_steps=16, refine_steps=50,
                     crf_iterations=3, amp=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("irnet")
    synth.run(synth.SynthSettings(num_images=4, height=88, width=92, classes=2, min_instances=2, max_instances=3,
                                  seed=3), synth.SynthJob(root / "data"))
    write_fake_cams(root / "data" / "gt.json", root / "cams.h5")
    return root


def job(root: Path, out: str, **kw: object) -> IRNetJob:
    return IRNetJob(cams=str(root / "cams.h5"), out=out, images=str(root / "data" / "images"), device="cpu",
                    **kw)  # type: ignore[arg-type]


def test_trains_predicts_and_reuses_the_checkpoint(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "pseudo.json"
    res = run(FAST, job(small, str(out), run=str(tmp_path / "run")))
    ds = coco.load_dataset(out)
    assert res.images == 4 and len(ds.images) == 4
    gt = coco.load_dataset(small / "data" / "gt.json")
    assert ds.categories == gt.categories
    for a in ds.annotations:
        assert a["segmentation"]["size"] == [88, 92] and isinstance(a["segmentation"]["counts"], str)
        assert a["area"] == rle.area(a["segmentation"]) and len(a["bbox"]) == 4 and 0 < a["score"] <= 1
        assert a["category_id"] in {c["id"] for c in gt.categories}
    assert len({a["id"] for a in ds.annotations}) == len(ds.annotations)
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "last.pt").is_file()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1 and np.isfinite(json.loads(metrics[0])["total"])

    again = tmp_path / "again.json"
    sem = tmp_path / "sem"
    sem.mkdir()
    run(FAST, job(small, str(again), checkpoint=str(tmp_path / "run" / "model.pt"), semantic=str(sem)))
    assert json.loads(again.read_text())["annotations"] == json.loads(out.read_text())["annotations"]
    assert sorted(p.name for p in sem.iterdir()) == ["000001.png", "000002.png", "000003.png", "000004.png"]
    lab = read_image(sem / "000001.png")
    assert lab.shape[:2] == (88, 92) and set(np.unique(lab)) <= {0, 1, 2}

    # a finished run resumed predicts with its model.pt; a longer run resumed continues from last.pt
    resumed = tmp_path / "resumed.json"
    run(FAST, job(small, str(resumed), run=str(tmp_path / "run"), resume=True))
    assert json.loads(resumed.read_text())["annotations"] == json.loads(out.read_text())["annotations"]


def test_resume_continues_training(small: Path, tmp_path: Path, preempted_after_first_checkpoint) -> None:
    import torch

    # batches of 1: four per epoch, so the resumed epoch must draw the shuffle an uninterrupted run draws
    longer = IRNetSettings(**{**FAST.to_json(), "epochs": 2, "batch_size": 1})
    with preempted_after_first_checkpoint():
        run(longer, job(small, str(tmp_path / "b.json"), run=str(tmp_path / "r")))
    run(longer, job(small, str(tmp_path / "b.json"), run=str(tmp_path / "r"), resume=True))
    state = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert state["epoch"] == 2
    # one metrics line per epoch: the preempted run logged epoch 1 before its checkpoint
    assert [json.loads(x)["epoch"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    # the per-epoch checkpoint holds only the heads; the frozen backbone is rebuilt from the seed, so the
    # resumed run ends where an uninterrupted one does: the same masks
    assert not any(k.startswith("backbone.") for k in state["model"])
    run(longer, job(small, str(tmp_path / "c.json"), run=str(tmp_path / "straight")))
    resumed, straight = (json.loads((tmp_path / n).read_text())["annotations"] for n in ("b.json", "c.json"))
    assert [a["segmentation"] for a in resumed] == [a["segmentation"] for a in straight]
    # and the same scores up to float rounding (seen 1e-6 apart)
    assert [a["score"] for a in resumed] == pytest.approx([a["score"] for a in straight], abs=1e-4)


def test_cams_from_another_stage_is_bad_input(small: Path, tmp_path: Path) -> None:
    bad = tmp_path / "other.h5"
    with H5Writer(bad, "freemask", {}, {}) as w:
        w.put(1, {"x": np.zeros(3)})
    with pytest.raises(BadInputError, match="expected 'cam'"):
        run(FAST, IRNetJob(cams=str(bad), out=str(tmp_path / "p.json"), images=str(small / "data" / "images")))


def test_missing_images_is_bad_input(small: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match="image file not found"):
        run(FAST, IRNetJob(cams=str(small / "cams.h5"), out=str(tmp_path / "p.json"), images=str(empty),
                           run=str(tmp_path / "r"), device="cpu"))
    assert not (tmp_path / "p.json").exists()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        IRNetSettings(fg_threshold=0.01, bg_threshold=0.2)
    with pytest.raises(ValueError):
        IRNetSettings(walk_radius=1)
