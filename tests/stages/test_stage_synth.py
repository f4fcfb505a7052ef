"""wsis synth: determinism, geometry of the instances, file consistency and a data-quality check."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from wsis_cli.io import coco, images, rle
from wsis_cli.runtime.errors import BadInputError
from wsis_cli.stages.synth import stage as synth
from wsis_cli.stages.synth.stage import SynthJob, SynthSettings, generate_image, run


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sample() -> list[tuple[np.ndarray, list[tuple[int, np.ndarray]]]]:
    s = SynthSettings(num_images=24, height=80, width=112, classes=4, min_instances=2, max_instances=6, seed=7)
    return [generate_image(s, i) for i in range(s.num_images)]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSettings]:
    out = tmp_path_factory.mktemp("synth") / "data"
    s = SynthSettings(num_images=6, height=48, width=72, classes=3, seed=3)
    run(s, SynthJob(out))
    return out, s


def test_same_settings_give_identical_bytes(tmp_path: Path) -> None:
    s = SynthSettings(num_images=4, height=40, width=56, seed=11)
    run(s, SynthJob(tmp_path / "a"))
    run(s, SynthJob(tmp_path / "b"))
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(a) == {"gt.json", "boxes.json", "labels.json"} | {f"images/{i:06d}.png" for i in range(1, 5)}
    assert a == b
    run(SynthSettings(num_images=4, height=40, width=56, seed=12), SynthJob(tmp_path / "c"))
    assert _files(tmp_path / "c")["images/000001.png"] != a["images/000001.png"]


def test_more_images_keep_the_first_ones(tmp_path: Path) -> None:
    run(SynthSettings(num_images=3, height=40, width=40, seed=5), SynthJob(tmp_path / "short"))
    run(SynthSettings(num_images=5, height=40, width=40, seed=5), SynthJob(tmp_path / "long"))
    short, long = _files(tmp_path / "short"), _files(tmp_path / "long")
    for i in range(1, 4):
        assert short[f"images/{i:06d}.png"] == long[f"images/{i:06d}.png"]
    gs, gl = coco.load_dataset(tmp_path / "short" / "gt.json"), coco.load_dataset(tmp_path / "long" / "gt.json")
    assert gl.annotations[: len(gs.annotations)] == gs.annotations
    assert gl.images[:3] == gs.images


@pytest.mark.parametrize("hw", [(16, 16), (32, 48), (64, 96), (120, 40), (333, 257)])
def test_any_size(hw: tuple[int, int]) -> None:
    s = SynthSettings(height=hw[0], width=hw[1], seed=1)
    for i in range(3):
        rgb, inst = generate_image(s, i)
        assert rgb.shape == (*hw, 3) and rgb.dtype == np.uint8
        for cat, m in inst:
            assert m.shape == hw and m.dtype == bool and m.any()
            assert 1 <= cat <= 3


def test_counts_and_classes_within_bounds() -> None:
    s = SynthSettings(height=96, width=96, classes=5, min_instances=1, max_instances=4, seed=2)
    seen = set()
    for i in range(30):
        _, inst = generate_image(s, i)
        assert 1 <= len(inst) <= 4
        seen |= {c for c, _ in inst}
    assert seen == {1, 2, 3, 4, 5}
    _, none = generate_image(SynthSettings(height=32, width=32, min_instances=0, max_instances=0), 0)
    assert none == []


def test_masks_are_disjoint_nonempty_and_large_enough(sample) -> None:
    h, w = sample[0][0].shape[:2]
    min_area = max(synth.MIN_AREA_PX, round(synth.MIN_AREA_FRAC * h * w))
    for _, inst in sample:
        assert 2 <= len(inst) <= 6
        stack = np.stack([m for _, m in inst])
        assert stack.sum(0).max() <= 1, "visible masks overlap"
        assert stack.sum((1, 2)).min() >= min_area


def test_same_class_instances_touch_or_occlude(sample) -> None:
    kernel = np.ones((3, 3), np.uint8)
    touching = 0
    for _, inst in sample:
        for i, (ci, mi) in enumerate(inst):
            grown = cv2.dilate(mi.astype(np.uint8), kernel).astype(bool)
            touching += sum(1 for cj, mj in inst[i + 1:] if cj == ci and (grown & mj).any())
    assert touching >= 10


def test_written_files_agree(written) -> None:
    out, s = written
    gt = coco.load_dataset(out / "gt.json", need="segmentation")
    boxes = coco.load_dataset(out / "boxes.json", need="bbox")
    labels = coco.load_dataset(out / "labels.json")
    assert gt.images == boxes.images == labels.images
    assert gt.categories == boxes.categories == labels.categories
    assert [c["name"] for c in gt.categories] == ["disc", "box", "triangle"]
    assert [im["file_name"] for im in gt.images] == [f"{i:06d}.png" for i in range(1, 7)]
    ids = [a["id"] for a in gt.annotations]
    assert ids == list(range(1, len(ids) + 1))
    for a, b in zip(gt.annotations, boxes.annotations, strict=True):
        m = rle.decode(a["segmentation"]).astype(bool)
        ys, xs = np.nonzero(m)
        tight = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        assert a["bbox"] == tight == b["bbox"]
        assert a["area"] == float(m.sum()) > 0 and a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str)
        assert (b["id"], b["image_id"], b["category_id"]) == (a["id"], a["image_id"], a["category_id"])
        assert "segmentation" not in b
    for a in labels.annotations:
        assert set(a) == {"id", "image_id", "category_id"}
    assert coco.label_sets(labels) == coco.label_sets(gt)
    for idx, im in enumerate(gt.images):
        rgb = images.load_image_for(out / "images", im, "gt.json")
        ref_rgb, inst = generate_image(s, idx)
        assert np.array_equal(rgb, ref_rgb)
        mine = [a for a in gt.annotations if a["image_id"] == im["id"]]
        assert [a["category_id"] for a in mine] == [c for c, _ in inst]
        for a, (_, m) in zip(mine, inst, strict=True):
            assert np.array_equal(rle.decode(a["segmentation"]).astype(bool), m)


def test_colour_alone_is_informative_but_not_enough() -> None:
    """A per-pixel nearest-class-mean RGB classifier (background + classes) must sit between chance and easy."""
    s = SynthSettings(height=96, width=96, classes=3, seed=21)

    def pixels(indices: range) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for i in indices:
            rgb, inst = generate_image(s, i)
            lab = np.zeros(rgb.shape[:2], np.int64)
            for c, m in inst:
                lab[m] = c
            xs.append(rgb.reshape(-1, 3).astype(np.float64))
            ys.append(lab.ravel())
        return np.concatenate(xs), np.concatenate(ys)

    xtr, ytr = pixels(range(0, 20))
    xte, yte = pixels(range(20, 40))
    means = np.stack([xtr[ytr == k].mean(0) for k in range(4)])
    pred = ((xte[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    balanced = np.mean([(pred[yte == k] == k).mean() for k in range(4)])
    assert 0.4 < balanced < 0.85, balanced  # chance is 0.25


def test_bad_settings_are_refused() -> None:
    for kw in ({"num_images": 0}, {"height": 8}, {"width": 9000}, {"classes": 0}, {"classes": 9},
               {"min_instances": 3, "max_instances": 2}):
        with pytest.raises(ValueError):
            SynthSettings(**kw)


def test_output_folder_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = SynthSettings(num_images=2, height=32, width=32)
    (tmp_path / "empty").mkdir()
    run(s, SynthJob(tmp_path / "empty"))  # an empty folder is fine
    with pytest.raises(BadInputError, match="not empty"):
        run(s, SynthJob(tmp_path / "empty"))
    run(SynthSettings(num_images=1, height=32, width=32, force=True), SynthJob(tmp_path / "empty"))
    assert sorted(p.name for p in (tmp_path / "empty" / "images").iterdir()) == ["000001.png"]
    with pytest.raises(BadInputError, match="does not exist"):
        run(s, SynthJob(tmp_path / "missing" / "out"))

    calls = []

    def boom(settings: SynthSettings, index: int):
        if calls:
            raise RuntimeError("disk on fire")
        calls.append(index)
        return generate_image(settings, index)

    monkeypatch.setattr(synth, "generate_image", boom)
    with pytest.raises(RuntimeError):
        run(s, SynthJob(tmp_path / "crash"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"], "a failed run must leave nothing behind"


def test_settings_know_the_shape_classes():
    # settings.py stays free of OpenCV, so it spells out the class count the shapes module defines
    from wsis_cli.stages.synth import settings, shapes

    assert settings.MAX_CLASSES == shapes.MAX_CLASSES == len(shapes.CLASSES)
