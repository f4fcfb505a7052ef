"""refine-crf must repair typical pseudo-label damage on real (synthetic) images, shard and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsis_cli.io import coco
from wsis_cli.stages.baselines.degrade import KINDS, degrade_dataset
from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate
from wsis_cli.stages.refine import stage as refine_crf
from wsis_cli.stages.synth import stage as synth


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine") / "data"
    synth.run(synth.SynthSettings(num_images=8, height=128, width=160, seed=11), synth.SynthJob(root))
    return root, coco.load_dataset(root / "gt.json")


def _mean_iou(gt, ds):
    return evaluate(gt, ds.annotations, EvalSettings(iou_type="segm")).mean_iou


@pytest.mark.parametrize("kind", KINDS)
def test_refinement_repairs_degraded_masks(data, tmp_path, kind):
    root, gt = data
    bad = degrade_dataset(gt, kind, radius=3, seed=1)
    coco.write_dataset(bad, tmp_path / "bad.json")
    job = refine_crf.RefineJob(str(tmp_path / "bad.json"), str(root / "images"), str(tmp_path / "ref.json"),
                               device="cpu")
    stats = refine_crf.run(refine_crf.RefineSettings(), job)
    refined = coco.load_dataset(tmp_path / "ref.json")
    before, after = _mean_iou(gt, bad), _mean_iou(gt, refined)
    assert after > before + 0.08, (kind, before, after)
    # a tiny, badly eroded mask can vanish under the CRF: then the input mask is kept
    assert stats.refined + stats.kept_empty + stats.kept_guard == len(bad.annotations)
    # the guard keeps a few: repairing a small eroded mask moves much of it, and big moves need strong edges
    assert stats.refined >= 0.65 * len(bad.annotations)
    # ids, classes and every other key survive; boxes and areas follow the new masks
    assert [(a["id"], a["category_id"]) for a in refined.annotations] == \
        [(a["id"], a["category_id"]) for a in bad.annotations]
    for a in refined.annotations:
        assert a["area"] > 0 and a["bbox"][2] > 0


def test_good_masks_stay_good(data, tmp_path):
    root, gt = data
    job = refine_crf.RefineJob(str(root / "gt.json"), str(root / "images"), str(tmp_path / "o.json"), device="cpu")
    refine_crf.run(refine_crf.RefineSettings(), job)
    assert _mean_iou(gt, coco.load_dataset(tmp_path / "o.json")) > 0.95


def test_shards_cover_the_dataset_once(data, tmp_path):
    root, gt = data
    parts = []
    for i in range(3):
        out = tmp_path / f"part{i}.json"
        refine_crf.run(refine_crf.RefineSettings(iterations=2),
                       refine_crf.RefineJob(str(root / "gt.json"), str(root / "images"), str(out),
                                            device="cpu", shard=f"{i}/3"))
        parts.append(coco.load_dataset(out))
    ids = sorted(im["id"] for p in parts for im in p.images)
    assert ids == sorted(im["id"] for im in gt.images)
    assert sorted(a["id"] for p in parts for a in p.annotations) == sorted(a["id"] for a in gt.annotations)


def test_resume_continues_an_interrupted_run(data, tmp_path, monkeypatch):
    root, gt = data
    settings = refine_crf.RefineSettings(iterations=3)
    job = refine_crf.RefineJob(str(root / "gt.json"), str(root / "images"), str(tmp_path / "o.json"), device="cpu")
    refine_crf.run(settings, job)
    expected = json.loads((tmp_path / "o.json").read_text())
    (tmp_path / "o.json").unlink()

    real = refine_crf.refine_image
    calls = {"n": 0}

    def crash_after_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(refine_crf, "refine_image", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        refine_crf.run(settings, job)
    assert not (tmp_path / "o.json").exists() and (tmp_path / "o.json.partial").exists()

    calls["n"] = -100  # no more crashes; count how many images the resumed run still refines
    refine_crf.run(settings, refine_crf.RefineJob(**{**job.__dict__, "resume": True}))
    assert calls["n"] == -100 + len(gt.images) - 3
    assert json.loads((tmp_path / "o.json").read_text()) == expected
    assert not (tmp_path / "o.json.partial").exists()


def test_resume_with_other_settings_is_refused(data, tmp_path, monkeypatch):
    from wsis_cli.runtime.errors import BadInputError

    root, _ = data
    job = refine_crf.RefineJob(str(root / "gt.json"), str(root / "images"), str(tmp_path / "o.json"), device="cpu")
    monkeypatch.setattr(refine_crf, "refine_image", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        refine_crf.run(refine_crf.RefineSettings(), job)
    with pytest.raises(BadInputError, match="same settings"):
        refine_crf.run(refine_crf.RefineSettings(iterations=3), refine_crf.RefineJob(**{**job.__dict__, "resume": True}))


def test_crop_window_stays_inside_and_rounds_to_buckets():
    s = refine_crf.RefineSettings(bucket=16)
    for box in ([0, 0, 5, 5], [90, 50, 10, 30], [3.5, 7.2, 150, 110]):
        y0, y1, x0, x1 = refine_crf.crop_window(box, 120, 160, s)
        assert 0 <= y0 < y1 <= 120 and 0 <= x0 < x1 <= 160
        assert (y1 - y0) % 16 == 0 or y1 - y0 == 120
        assert (x1 - x0) % 16 == 0 or x1 - x0 == 160
        assert x0 <= box[0] and y0 <= box[1] and x1 >= box[0] + box[2] and y1 >= box[1] + box[3]
    assert np.isclose(s.crf_params().theta_beta, 0.06)


def _disc_scene():
    import cv2
    import torch

    img = np.full((64, 64, 3), 40, np.uint8)
    cv2.circle(img, (32, 32), 14, (200, 180, 60), -1)
    disc = np.zeros((64, 64), np.uint8)
    cv2.circle(disc, (32, 32), 14, 1, -1)
    crops = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    return crops, torch.from_numpy(disc.astype(bool))[None]


def test_guard_accepts_a_move_onto_the_object_edge():
    crops, disc = _disc_scene()
    box = np.zeros((1, 64, 64), bool)
    box[:, 18:47, 18:47] = True
    edges = refine_crf.edge_strength(crops)
    assert refine_crf.guard_accepts(edges, torch_bool(box), disc, 0.5).item()
    s = refine_crf.RefineSettings()
    assert refine_crf.guard_accepts(edges, torch_bool(box), disc, 0.5, s.guard_gain, s.guard_slope).item()
    assert not refine_crf.guard_accepts(edges, disc, disc, 0.5, 1.25).item()  # no gain, no change


def test_guard_rejects_a_move_off_the_edge_or_onto_another_object():
    import cv2

    crops, disc = _disc_scene()
    edges = refine_crf.edge_strength(crops)
    grown = cv2.dilate(disc[0].numpy().astype(np.uint8), np.ones((9, 9), np.uint8))[None].astype(bool)
    assert not refine_crf.guard_accepts(edges, disc, torch_bool(grown), 0.5).item()  # leaks into flat background
    small = np.zeros((1, 64, 64), bool)
    small[:, 30:34, 30:34] = True
    assert not refine_crf.guard_accepts(edges, disc, torch_bool(small), 0.5).item()  # IoU far below 0.5
    assert refine_crf.guard_accepts(edges, disc, torch_bool(small), 0.0).item() is False  # no edge there either


def test_guard_slope_asks_bigger_changes_for_stronger_edges():
    import cv2
    import torch

    def disc(r):
        m = np.zeros((64, 64), np.uint8)
        cv2.circle(m, (32, 32), r, 1, -1)
        return torch_bool(m.astype(bool)[None])

    before = disc(16)
    edges = torch.full((1, 64, 64), 1.5)  # every candidate boundary 1.5x as strong as the input's
    edges[refine_crf.boundary_band(before)] = 1.0
    small, big = disc(13), disc(12)  # IoU with the input 0.66 and 0.55
    for after in (small, big):  # with no slope both clear gain 1.1
        assert refine_crf.guard_accepts(edges, before, after, 0.5, 1.1, 0.0).item()
    assert refine_crf.guard_accepts(edges, before, small, 0.5, 1.1, 1.0).item()  # needs 1.1 + 0.34
    assert not refine_crf.guard_accepts(edges, before, big, 0.5, 1.1, 1.0).item()  # needs 1.1 + 0.45


def torch_bool(a):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))
