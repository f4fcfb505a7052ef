"""`mal-label` stage: paste-back, record keeping, EMA start, resume, bad boxes, and the quality it reaches."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from wsis_cli.io import coco
from wsis_cli.io import rle as rle_utils
from wsis_cli.runtime.errors import BadInputError
from wsis_cli.runtime.training import EMA
from wsis_cli.stages.baselines import floors as baselines
from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate
from wsis_cli.stages.mal.stage import DEMO_SETTINGS, MalJob, check_boxes, demo_mal, paste_mask, run
from wsis_cli.stages.mal.train import build_model
from wsis_cli.stages.mal.writeback import exclusive_masks, image_records
from wsis_cli.stages.synth import stage as synth

# the smallest network that runs the whole path: for plumbing tests, not quality
TINY = replace(DEMO_SETTINGS, crop_size=32, encoder_depth=1, decoder_dim=8, epochs=2, batch_size=4,
               crf_iterations=3, min_train_area=16.0)


# ---------------------------------------------------------------------------------------------- paste


def test_paste_tiny_box():
    prob = np.full((8, 8), 0.9, np.float32)
    mask, score = paste_mask(prob, (10, 10, 12, 12), [10.0, 10.0, 1.0, 1.0], 20, 20, 0.5)
    assert mask.sum() == 1 and mask[10, 10] == 1 and score == pytest.approx(0.9)


def test_paste_clips_at_the_image_edges():
    prob = np.zeros((16, 16), np.float32)
    prob[:, :8] = 1.0  # left half of the crop window, most of it outside the image
    mask, _ = paste_mask(prob, (-6, -6, 14, 14), [0.0, 0.0, 10.0, 10.0], 12, 12, 0.5)
    assert mask.shape == (12, 12)
    assert mask[:, 4:].sum() == 0 and mask[:10, :4].all() and mask[10:].sum() == 0


def test_paste_image_filling_box():
    prob = np.ones((16, 16), np.float32)
    mask, _ = paste_mask(prob, (-3, -3, 23, 23), [0.0, 0.0, 20.0, 20.0], 20, 20, 0.5)
    assert mask.all()


def test_paste_never_empty():
    prob = np.full((8, 8), 0.1, np.float32)
    prob[3:5, 3:5] = 0.3
    mask, _ = paste_mask(prob, (0, 0, 8, 8), [1.0, 1.0, 6.0, 6.0], 8, 8, 0.5)
    assert mask.sum() > 0 and mask[3:5, 3:5].all() and mask[0].sum() == 0
    mask, _ = paste_mask(np.zeros((4, 4), np.float32), (0, 0, 8, 8), [1.0, 1.0, 2.0, 2.0], 8, 8, 0.5)
    assert mask.sum() == 4  # nothing at all: the box itself


def test_exclusive_pixels_go_to_the_most_confident_box():
    # box A covers columns 0-5, box B columns 4-9 of one 4x10 image: they share columns 4-5
    anns = [{"bbox": [0.0, 0.0, 6.0, 4.0]}, {"bbox": [4.0, 0.0, 6.0, 4.0]}]
    image = {"height": 4, "width": 10}
    probs = np.zeros((2, 8, 8), np.float32)
    probs[0] = 0.9  # A: sure everywhere, B: surer in the shared row 0, exactly as sure in row 1
    probs[1] = 0.8
    bounds = np.array([[0, 0, 6, 4], [4, 0, 10, 4]])  # windows equal to the boxes: a flat resize
    probs[1, :2] = 0.95
    probs[1, 2:4] = 0.9
    both = image_records(probs, bounds, anns, image, 0.5, exclusive=False)
    a, b = (rle_utils.decode(r["segmentation"]) for r in both)
    assert a[:, :6].all() and b[:, 4:].all()  # overlapping
    a, b = (rle_utils.decode(r["segmentation"]) for r in image_records(probs, bounds, anns, image, 0.5))
    assert (a & b).sum() == 0 and (a | b)[:, :10].all()
    assert b[0, 4:6].all() and a[1, 4:6].all() and a[2:, 4:6].all()  # surer wins; a tie goes to the first box
    # a box that would lose every pixel keeps its own mask
    regions = [(0, 0, 4, 4), (0, 0, 4, 4)]
    maps = [np.full((4, 4), 0.9, np.float32), np.full((4, 4), 0.7, np.float32)]
    kept = exclusive_masks(maps, regions, [m >= 0.5 for m in maps])
    assert kept[0].all() and kept[1].all()


def test_a_box_nested_in_another_keeps_the_pixels_its_mask_claims():
    # a large box (a potted plant, 10x10) holds a small one (a vase, columns/rows 3-6); the large box's map
    # is surer than the small one's everywhere, the vase's own object included, as on real photos
    regions = [(0, 0, 10, 10), (3, 3, 7, 7)]
    large = np.full((10, 10), 0.95, np.float32)
    small = np.full((4, 4), 0.2, np.float32)
    small[1:, :] = 0.6  # the vase claims its lower three rows
    masks = [large >= 0.5, small >= 0.5]
    kept_large, kept_small = exclusive_masks([large, small], regions, masks)
    assert kept_small[1:].all() and not kept_small[0].any()  # its claim, and no more
    assert not kept_large[4:7, 3:7].any()  # the large box gives up what the small one claims ...
    assert kept_large[3, 3:7].all() and kept_large.sum() == 100 - 12  # ... and keeps the rest
    # side by side (overlap under half of the smaller box) the surer map still decides
    regions = [(0, 0, 10, 10), (9, 0, 13, 4)]
    kept_large, kept_small = exclusive_masks([large, np.full((4, 4), 0.6, np.float32)], regions,
                                             [large >= 0.5, np.ones((4, 4), bool)])
    assert kept_large[0:4, 9].all() and not kept_small[:, 0].any() and kept_small[:, 1:].all()


def test_ema_teacher_starts_as_the_student():
    model = build_model(TINY.model_spec())
    teacher = EMA(model, TINY.ema_momentum).teacher
    for (k, a), (_, b) in zip(model.state_dict().items(), teacher.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in teacher.parameters())


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("mal") / "d"
    synth.run(synth.SynthSettings(num_images=4, height=64, width=64, seed=3), synth.SynthJob(root))
    boxes = coco.load_dataset(root / "boxes.json")
    anns = [dict(a, score=0.25 + 0.01 * i) if i % 2 else dict(a) for i, a in enumerate(boxes.annotations)]
    coco.write_dataset(boxes.with_annotations(anns), root / "scored.json")
    return root


def _job(small, tmp_path, **kw):
    base = {"boxes": str(small / "scored.json"), "images": str(small / "images"), "out": str(tmp_path / "m.json"),
            "run": str(tmp_path / "run"), "device": "cpu"}
    return MalJob(**{**base, **kw})


def test_records_keep_ids_categories_scores_and_area_is_mask_area(small, tmp_path):
    summary = run(TINY, _job(small, tmp_path))
    src = coco.load_dataset(small / "scored.json")
    out = coco.load_dataset(tmp_path / "m.json")
    assert summary.boxes == len(src.annotations) and (tmp_path / "run" / "model.pt").exists()
    assert len(out.annotations) == len(src.annotations)
    for a, b in zip(src.annotations, out.annotations, strict=True):
        assert (a["id"], a["image_id"], a["category_id"], a["bbox"]) == (b["id"], b["image_id"], b["category_id"],
                                                                         b["bbox"])
        if "score" in a:
            assert b["score"] == a["score"]
        else:
            assert 0 < b["score"] <= 1
        assert b["area"] == rle_utils.area(b["segmentation"]) > 0
        inside = rle_utils.box_mask(a["bbox"], *b["segmentation"]["size"])
        assert (rle_utils.decode(b["segmentation"]) <= inside).all()  # never outside its box
    # --checkpoint labels without training, identically
    again = tmp_path / "again.json"
    run(TINY, _job(small, tmp_path, out=str(again), run=None, checkpoint=str(tmp_path / "run" / "model.pt")))
    assert coco.load_dataset(again).annotations == out.annotations


def test_training_resumes_to_the_same_result(small, tmp_path, preempted_after_first_checkpoint):
    run(TINY, _job(small, tmp_path, out=str(tmp_path / "full.json"), run=str(tmp_path / "full")))
    with preempted_after_first_checkpoint():
        run(TINY, _job(small, tmp_path, out=str(tmp_path / "cut.json"), run=str(tmp_path / "cut")))
    assert not (tmp_path / "cut.json").exists()
    run(TINY, _job(small, tmp_path, out=str(tmp_path / "cut.json"), run=str(tmp_path / "cut"), resume=True))
    full = coco.load_dataset(tmp_path / "full.json").annotations
    assert coco.load_dataset(tmp_path / "cut.json").annotations == full


def test_labelling_resumes_from_partial(small, tmp_path, monkeypatch):
    from wsis_cli.io.checkpoint import ImageCheckpoint

    run(TINY, _job(small, tmp_path, out=str(tmp_path / "ref.json"), run=str(tmp_path / "r")))
    model = str(tmp_path / "r" / "model.pt")
    real = ImageCheckpoint.add
    seen = []

    def add_then_die(self, image_id, records):
        real(self, image_id, records)
        seen.append(image_id)
        if len(seen) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ImageCheckpoint, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(TINY, _job(small, tmp_path, checkpoint=model))
    monkeypatch.setattr(ImageCheckpoint, "add", real)
    assert (tmp_path / "m.json.partial").exists() and not (tmp_path / "m.json").exists()
    calls = []
    monkeypatch.setattr(ImageCheckpoint, "add", lambda self, i, r: (calls.append(i), real(self, i, r)))
    run(TINY, _job(small, tmp_path, checkpoint=model, resume=True))
    assert len(calls) == 2  # only the images not finished before
    ref = coco.load_dataset(tmp_path / "ref.json").annotations
    assert coco.load_dataset(tmp_path / "m.json").annotations == ref


def test_shards_and_batch_neighbours_do_not_change_a_box(tmp_path, monkeypatch):
    """Issue 17 item 11: a box's probabilities (its score, its mask) must not depend on which other boxes
    share its forward pass, so two shards, merged, equal one run bit for bit. Every forward has the same
    shape and one scale bucket (partial batches are padded with copies, which are dropped)."""
    from dataclasses import asdict

    from wsis_cli.models.mal import MalNet

    root = tmp_path / "d"
    synth.run(synth.SynthSettings(num_images=8, height=64, width=64, seed=5), synth.SynthJob(root))
    # untrained weights: before the fix, one of these 27 scores differed in its last bits (batch 5 whole,
    # forwards of 1-3 boxes at the shards' ends); a trained network's did not at this size
    settings = replace(TINY, batch_size=5, decoder_dim=32, scale_buckets=True)
    torch.manual_seed(0)
    state = build_model(settings.model_spec(), "none").state_dict()
    model = tmp_path / "model.pt"
    torch.save({"wsis_stage": "mal-label", "spec": asdict(settings.model_spec()), "model": state,
                "teacher": state}, model)
    shapes = []
    real = MalNet.forward

    def recording(self, images, buckets=None):
        shapes.append((tuple(images.shape), None if buckets is None else len(torch.unique(buckets))))
        return real(self, images, buckets)

    monkeypatch.setattr(MalNet, "forward", recording)
    base = {"boxes": str(root / "boxes.json"), "images": str(root / "images"), "device": "cpu",
            "checkpoint": str(model)}
    run(settings, MalJob(**base, out=str(tmp_path / "whole.json")))
    for i in range(2):
        run(settings, MalJob(**base, out=str(tmp_path / f"part{i}.json"), shard=f"{i}/2"))
    whole = {a["id"]: a for a in coco.load_dataset(tmp_path / "whole.json").annotations}
    parts = {a["id"]: a for i in range(2) for a in coco.load_dataset(tmp_path / f"part{i}.json").annotations}
    assert parts.keys() == whole.keys() and len(whole) == 27
    for k, a in whole.items():
        assert (parts[k]["score"], parts[k]["segmentation"]) == (a["score"], a["segmentation"]), k
    assert {s for s, _ in shapes} == {(5, 3, 32, 32)} and {k for _, k in shapes} == {1}


def test_box_outside_the_image_is_bad_input(small):
    ds = coco.load_dataset(small / "boxes.json")
    anns = [dict(a) for a in ds.annotations]
    anns[1]["bbox"] = [64.2, 3.0, 0.5, 4.0]  # within io.coco's 1-pixel tolerance, yet outside the image
    with pytest.raises(BadInputError, match=r"annotations\[1\] \(id \d+\).*outside"):
        check_boxes(ds.with_annotations(anns))


# --------------------------------------------------------------------------------------------- quality


def test_quality_beats_box_filled_masks(tmp_path):
    """Trained on the boxes only, MAL's masks must clearly beat filling each box (mean IoU and mask AP)."""
    threads = torch.get_num_threads()
    # one thread: the figures below were measured so, and two spin-waiting threads cost ~10x the CPU on a
    # shared machine
    torch.set_num_threads(1)
    try:
        _check_quality(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _check_quality(tmp_path):
    root = tmp_path / "syn"
    synth.run(synth.SynthSettings(num_images=40, height=256, width=256, seed=0), synth.SynthJob(root))
    boxes = coco.load_dataset(root / "boxes.json")
    gt = coco.load_dataset(root / "gt.json")
    labelled = demo_mal(root / "images", boxes, tmp_path / "work")
    settings = EvalSettings(iou_type="segm")
    ours = evaluate(gt, labelled.annotations, settings)
    floor = evaluate(gt, baselines.box_filled_masks(boxes).annotations, settings)
    # measured on this set: mean IoU 0.926 vs 0.620, mask AP 0.905 vs 0.228 (auto crop 96², nested write-back;
    # 48² crops: 0.886 / 0.812; the ResNet-18-from-scratch recipe 0.849 / 0.692, the first configuration
    # 0.659 / 0.295: bench/NOTES.md)
    assert ours.mean_iou >= floor.mean_iou + 0.22, (ours.mean_iou, floor.mean_iou)
    assert ours.mask_ap >= floor.mask_ap + 0.50, (ours.mask_ap, floor.mask_ap)
    recorded = json.loads((tmp_path / "work" / "mal-label-run" / "run.json").read_text())["settings"]
    assert recorded["crop_size"] == 96  # auto, resolved before the run folder records it: median side 54 px


def test_flip_mirrors_the_second_map_back(small):
    """A network whose logits fall from left to right: alone it labels the left part of each crop; averaged with
    its map of the mirrored crop, mirrored back, every pixel gets sigmoid(r)/2 + sigmoid(-r)/2 = 0.5 (a map left
    unmirrored would be the first one again)."""
    from wsis_cli.stages.mal.data import RoiImageSet
    from wsis_cli.stages.mal.stage import label_images

    class Ramp(torch.nn.Module):
        def forward(self, x, buckets):
            ramp = torch.linspace(3.0, -3.0, x.shape[-1])
            return ramp.expand(x.shape[0], x.shape[-2], x.shape[-1]).clone()

    ds = coco.load_dataset(small / "boxes.json")
    by_image = ds.annotations_by_image()
    big = [a for a in ds.annotations if a["bbox"][2] >= 12]  # boxes wide enough to have a left half
    ids = sorted({a["image_id"] for a in big})
    data = RoiImageSet(ids, by_image, ds.image_index, str(small / "images"), ds.source, 32)

    def filled(flip):
        out = {}
        for _, records in label_images(Ramp(), data, torch.device("cpu"), 4, 0.4, amp=False, exclusive=False,
                                       channels_last=False, flip=flip):
            for r in records:
                box = rle_utils.box_mask(r["bbox"], *r["segmentation"]["size"]).sum()
                out[r["id"]] = rle_utils.area(r["segmentation"]) / box
        return np.array([out[a["id"]] for a in big])

    assert np.median(filled(False)) < 0.8  # the left part only
    assert (filled(True) > 0.95).all()  # the whole box
