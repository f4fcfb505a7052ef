"""MAL RoI inputs: box expansion and its gates, out-of-image modes, box coverage, the two views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsis_cli.stages.mal.data import (
    TEST_MARGIN,
    RoiImageSet,
    RoiTrainSet,
    box_cover,
    colour_augment,
    crop_bounds,
    crop_image,
    expand_box,
    source_indices,
    train_margins,
    xywh_to_xyxy,
)


def test_train_margins_split_between_opposite_sides():
    rng = np.random.default_rng(0)
    for _ in range(200):
        ml, mt, mr, mb = train_margins(rng, 1.2)
        assert min(ml, mt, mr, mb) >= 0
        assert ml + mr <= 1.2 + 1e-9 and mt + mb <= 1.2 + 1e-9
    # the gates put the object anywhere: sometimes nearly flush left, sometimes flush right
    draws = np.array([train_margins(rng, 1.2) for _ in range(500)])
    share_left = draws[:, 0] / np.maximum(draws[:, 0] + draws[:, 2], 1e-9)
    assert share_left.min() < 0.05 and share_left.max() > 0.95


def test_expand_box_scales_distances_from_the_centre():
    assert expand_box((10, 20, 30, 60), (0, 0, 0, 0)) == (10, 20, 30, 60)
    # 0.3 on every side: a crop of 1.3 x the box, centred
    x0, y0, x1, y1 = expand_box((10, 20, 30, 60), (TEST_MARGIN,) * 4)
    assert (x1 - x0, y1 - y0) == pytest.approx((26, 52)) and (x0 + x1) / 2 == pytest.approx(20)
    # all of an axis' margin on one side: the other side stays flush with the box
    x0, _, x1, _ = expand_box((10, 20, 30, 60), (1.0, 0, 0, 0))
    assert (x0, x1) == pytest.approx((0, 30))


def test_crop_bounds_are_integers_and_never_empty():
    assert crop_bounds((1.2, 2.8, 3.1, 4.0)) == (1, 2, 4, 4)
    assert crop_bounds((5.0, 5.0, 5.0, 5.0)) == (5, 5, 6, 6)


def test_outside_modes():
    assert source_indices(-2, 5, 4, "wrap").tolist() == [2, 3, 0, 1, 2, 3, 0]
    assert source_indices(-2, 5, 4, "replicate").tolist() == [0, 0, 0, 1, 2, 3, 3]
    assert source_indices(-2, 6, 4, "reflect").tolist() == [1, 0, 0, 1, 2, 3, 3, 2]
    assert source_indices(-3, 3, 1, "reflect").tolist() == [0] * 6
    with pytest.raises(ValueError):
        source_indices(0, 2, 4, "zeros")  # type: ignore[arg-type]


def test_wrap_crop_fills_from_the_opposite_side():
    img = np.zeros((4, 6, 3), np.uint8)
    img[:, 0] = 10  # left column
    img[:, -1] = 200  # right column
    crop = crop_image(img, (-1, 0, 2, 4), 3, "wrap")  # one column beyond the left edge
    assert crop[:, 0, 0].tolist() == [200] * 3 and crop[:, 1, 0].tolist() == [10] * 3
    crop = crop_image(img, (-1, 0, 2, 4), 3, "replicate")
    assert crop[:, 0, 0].tolist() == [10] * 3
    assert crop_image(img, (0, 0, 6, 4), 32).shape == (32, 32, 3)
    assert crop_image(img, (2, 2, 3, 3), 16).shape == (16, 16, 3)  # a 1-pixel crop


def test_box_cover_is_exact_coverage():
    # crop 0..8 on an 8-cell grid: one cell per pixel
    cov = box_cover((2.0, 1.0, 5.0, 3.0), (0, 0, 8, 8), 8)
    assert cov.sum() == pytest.approx(6.0) and cov[1:3, 2:5].min() == 1.0
    half = box_cover((2.5, 1.0, 5.0, 3.0), (0, 0, 8, 8), 8)
    assert half[1, 2] == pytest.approx(0.5)
    # a sub-pixel box keeps a fractional, non-zero mask
    tiny = box_cover((3.2, 3.2, 3.6, 3.6), (3, 3, 4, 4), 4)
    assert tiny.max() > 0 and tiny.sum() == pytest.approx(0.16 * 16, rel=1e-5)


def test_xywh_clipped_to_the_image():
    assert xywh_to_xyxy([-0.5, 2, 10, 5], 6, 8) == (0.0, 2.0, 8.0, 6.0)


def test_colour_augment_keeps_range_and_shape():
    rng = np.random.default_rng(1)
    x = np.random.default_rng(2).random((16, 16, 3), dtype=np.float32)
    outs = [colour_augment(x.copy(), rng, 16) for _ in range(20)]
    assert all(o.shape == x.shape and o.dtype == np.float32 and o.min() >= 0 and o.max() <= 1 for o in outs)
    assert any(not np.allclose(o, x) for o in outs)


def _fake_dataset(tmp_path):
    from wsis_cli.io.images import write_image

    rng = np.random.default_rng(0)
    img = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    write_image(tmp_path / "a.png", img)
    images = {1: {"id": 1, "file_name": "a.png", "height": 40, "width": 50}}
    boxes = [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 40]},
             {"id": 8, "image_id": 1, "category_id": 1, "bbox": [10, 5, 1, 2]}]
    return images, boxes


def test_train_set_views_and_determinism(tmp_path):
    images, boxes = _fake_dataset(tmp_path)
    ds = RoiTrainSet(boxes, images, str(tmp_path), "boxes.json", 32, seed=3)
    a, b = ds[0], ds[0]
    assert a["student"].shape == a["teacher"].shape == (3, 32, 32) and a["box"].shape == (8, 8)
    torch.testing.assert_close(a["student"], b["student"])  # same (seed, epoch, index): same sample
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["teacher"], a["teacher"]) or not torch.equal(ds[0]["box"], a["box"])
    # the student view is colour-augmented, the teacher's is not (in some epochs the augmentation draws nothing)
    differs = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        item = ds[0]
        differs.append(not torch.allclose(item["student"], item["teacher"]))
    assert any(differs)
    assert int(a["bucket"]) == 1 and int(ds[1]["bucket"]) == 0  # 50x40 box: medium; 1x2: small
    # an image-filling box is never wrapped into the box mask: zero outside the image
    assert float(a["box"].sum()) <= 64


def test_image_set_covers_every_box(tmp_path):
    images, boxes = _fake_dataset(tmp_path)
    ds = RoiImageSet([1], {1: boxes}, images, str(tmp_path), "boxes.json", 32)
    item = ds[0]
    assert item["crops"].shape == (2, 3, 32, 32)
    x0, y0, x1, y1 = item["bounds"][0].tolist()
    assert (x0, y0, x1, y1) == (-8, -6, 58, 46)  # 1.3 x 50x40 around its centre, beyond the image
    assert item["buckets"].tolist() == [1, 0]
