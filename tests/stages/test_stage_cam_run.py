"""wsis cam end to end (in-process): the cams.h5 layout, model.pt, metrics, exact resume, bad inputs."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from wsis_cli.io import coco
from wsis_cli.io.h5 import H5Reader
from wsis_cli.io.run_dir import read_model
from wsis_cli.io.stdio import read_json, write_json
from wsis_cli.runtime.errors import BadInputError, UsageError
from wsis_cli.stages.cam import stage as cam_stage
from wsis_cli.stages.cam.stage import CamJob, CamSettings
from wsis_cli.stages.cam.train import TrainSettings
from wsis_cli.stages.synth import stage as synth

TRAIN = TrainSettings(arch="resnet18", weights="none", epochs=1, batch_size=4, crop=48, resize_long=(40, 56),
                      val_fraction=0.25, seed=1)
MAPS = CamSettings(scales=(1.0, 0.5), train=TRAIN)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam-run") / "d"
    synth.run(synth.SynthSettings(num_images=8, height=48, width=56, classes=2, min_instances=1, max_instances=2,
                                  seed=2), synth.SynthJob(root))
    # one image without labels: it must get K = 0 maps
    labels = read_json(root / "labels.json")
    labels["annotations"] = [a for a in labels["annotations"] if a["image_id"] != 8]
    write_json(labels, root / "labels.json")
    return root


def _job(data, out, **kw):
    return CamJob(labels=str(data / "labels.json"), images=str(data / "images"), out=str(out), device="cpu",
                  batch_size=3, **kw)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cam-out") / "cams.h5"
    summary = cam_stage.run(MAPS, _job(data, out))
    return out, summary


def test_cams_h5_layout(data, trained):
    out, summary = trained
    assert summary.trained and summary.images == 8
    labels = coco.label_sets(coco.load_dataset(data / "labels.json"))
    with H5Reader(out, "cam") as r:
        assert r.ids() == list(range(1, 9))
        assert r.inputs["labels"] == str((data / "labels.json").resolve())
        assert r.inputs["checkpoint"] == str((out.parent / "cams.cam-run" / "model.pt").resolve())
        assert r.settings["method"] == "cam" and r.settings["arch"] == "resnet18"
        assert r.settings["scales"] == [1.0, 0.5]
        for image_id in r.ids():
            cams = r.get(image_id)["cams"]
            attrs = r.dataset_attrs(image_id, "cams")
            assert cams.dtype == np.float16 and cams.shape[1:] == (12, 14)
            assert attrs["stride"] == 4 and attrs["image_size"] == [48, 56]
            assert attrs["category_ids"] == sorted(labels[image_id])
            assert r.attrs(image_id) == {"height": 48, "width": 56}
            assert cams.shape[0] == len(labels[image_id])
            if cams.size:
                assert cams.min() >= 0 and cams.max() <= 1
                peaks = cams.reshape(len(cams), -1).max(1)
                assert np.all((peaks > 0.99) | (peaks == 0))
        assert r.get(8)["cams"].shape == (0, 12, 14)


def test_run_folder_and_model(trained):
    out, summary = trained
    run = out.parent / "cams.cam-run"
    model = read_model(run / "model.pt", "cam")
    assert model["category_ids"] == [1, 2]
    assert model["settings"]["arch"] == "resnet18" and model["settings"]["last_stride"] == 1
    net, cats = cam_stage.build_model(model, "model.pt")
    assert cats == [1, 2] and net.backbone.arch == "resnet18"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"val_map"' in lines[0]


def test_predict_from_checkpoint_gradcam_and_shards(data, trained, tmp_path):
    out, _ = trained
    ckpt = str(out.parent / "cams.cam-run" / "model.pt")
    s0 = cam_stage.run(replace(MAPS, method="gradcam"), _job(data, tmp_path / "g.h5", checkpoint=ckpt,
                                                                      shard="0/2"))
    assert not s0.trained and s0.output.name == "g.shard-0-of-2.h5"
    with H5Reader(s0.output, "cam") as r:
        assert r.ids() == [1, 3, 5, 7] and r.settings["method"] == "gradcam"
        assert r.inputs["checkpoint"] == str((out.parent / "cams.cam-run" / "model.pt").resolve())
    # training under a plain --shard would train one model per shard: refused
    with pytest.raises(UsageError):
        cam_stage.run(MAPS, _job(data, tmp_path / "x.h5", shard="1/2"))


def test_training_resume_is_exact(data, tmp_path, preempted_after_first_checkpoint):
    two = replace(TRAIN, epochs=2, val_fraction=0.0)
    whole = cam_stage.run(replace(MAPS, train=two), _job(data, tmp_path / "a.h5"))
    with preempted_after_first_checkpoint():
        cam_stage.run(replace(MAPS, train=two), _job(data, tmp_path / "b.h5"))
    resumed = cam_stage.run(replace(MAPS, train=two), _job(data, tmp_path / "b.h5", resume=True))
    lines = (tmp_path / "b.cam-run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    a = torch.load(whole.model, weights_only=False)["model"]
    b = torch.load(resumed.model, weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    with H5Reader(tmp_path / "a.h5", "cam") as ra, H5Reader(tmp_path / "b.h5", "cam") as rb:
        for image_id in ra.ids():
            np.testing.assert_array_equal(ra.get(image_id)["cams"], rb.get(image_id)["cams"])


def test_interrupted_maps_resume(data, trained, tmp_path, monkeypatch):
    out, _ = trained
    ckpt = str(out.parent / "cams.cam-run" / "model.pt")
    target = tmp_path / "r.h5"
    real = cam_stage.multiscale_maps
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cam_stage, "multiscale_maps", dying)
    with pytest.raises(KeyboardInterrupt):
        cam_stage.run(MAPS, _job(data, target, checkpoint=ckpt))
    assert not target.exists() and target.with_name("r.h5.partial").exists()
    monkeypatch.setattr(cam_stage, "multiscale_maps", real)
    summary = cam_stage.run(MAPS, _job(data, target, checkpoint=ckpt, resume=True))
    assert summary.images == 5  # the first batch of 3 was kept
    with H5Reader(target, "cam") as r, H5Reader(out, "cam") as ref:
        assert r.ids() == ref.ids()
        for image_id in r.ids():
            np.testing.assert_array_equal(r.get(image_id)["cams"], ref.get(image_id)["cams"])


def test_bad_inputs(data, trained, tmp_path):
    empty = read_json(data / "labels.json")
    empty["annotations"] = []
    write_json(empty, tmp_path / "empty.json")
    with pytest.raises(BadInputError, match="no annotations"):
        cam_stage.run(MAPS, replace(_job(data, tmp_path / "o.h5"), labels=str(tmp_path / "empty.json")))
    missing = read_json(data / "labels.json")
    missing["images"][2]["file_name"] = "nope.png"
    write_json(missing, tmp_path / "missing.json")
    with pytest.raises(BadInputError, match="nope.png"):
        cam_stage.run(MAPS, replace(_job(data, tmp_path / "o.h5"), labels=str(tmp_path / "missing.json")))
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match="corrupt.pt"):
        cam_stage.run(MAPS, _job(data, tmp_path / "o.h5", checkpoint=str(tmp_path / "corrupt.pt")))
    assert not (tmp_path / "o.h5").exists()


def test_non_finite_weights_are_refused(data, trained, tmp_path):
    out, _ = trained
    obj = torch.load(out.parent / "cams.cam-run" / "model.pt", weights_only=False)
    obj["model"]["classifier.weight"][:] = float("nan")
    torch.save(obj, tmp_path / "nan.pt")
    with pytest.raises(BadInputError, match="non-finite"):
        cam_stage.run(MAPS, _job(data, tmp_path / "n.h5", checkpoint=str(tmp_path / "nan.pt")))
    assert not (tmp_path / "n.h5").exists()


def test_diverging_training_stops_with_one_line(data, tmp_path):
    from wsis_cli.runtime.errors import WsisError

    with pytest.raises(WsisError, match="diverged"):
        cam_stage.run(replace(MAPS, train=replace(TRAIN, lr=1e6, epochs=2)), _job(data, tmp_path / "d.h5"))
