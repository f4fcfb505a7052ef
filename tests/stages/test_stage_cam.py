"""wsis cam, pure parts: multi-scale aggregation, normalisation, flips, Grad-CAM, training helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsis_cli.models.cam_net import CamNet
from wsis_cli.stages.cam import train as cam_train
from wsis_cli.stages.cam.stage import CamSettings, multiscale_maps, strided_size


@pytest.fixture(scope="module")
def net() -> CamNet:
    torch.manual_seed(0)
    return CamNet("resnet18", 3).eval()


def test_strided_size_is_upstreams():
    assert strided_size(64, 80) == (16, 20)
    assert strided_size(65, 81) == (17, 21)
    assert strided_size(1, 3) == (1, 1)


def test_maps_of_present_classes_normalised_per_class(net):
    images = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8)
    maps = multiscale_maps(net, images, [[0, 2], []], CamSettings(scales=(1.0, 0.5)), amp=False)
    assert maps[0].shape == (2, 13, 18) and maps[1].shape == (0, 13, 18)
    assert maps[0].dtype == torch.float32
    assert (maps[0] >= 0).all() and (maps[0] <= 1).all()
    peaks = maps[0].amax(dim=(1, 2))
    assert torch.allclose(peaks, torch.ones(2), atol=1e-3) or (peaks == 0).any()


def test_class_order_and_batching_do_not_change_a_map(net):
    images = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    s = CamSettings(scales=(1.0, 1.5))
    both = multiscale_maps(net, images, [[1, 2], [2]], s, amp=False)
    alone = multiscale_maps(net, images[1:], [[2]], s, amp=False)
    torch.testing.assert_close(both[1], alone[0], rtol=1e-4, atol=1e-5)
    swapped = multiscale_maps(net, images[:1], [[2, 1]], s, amp=False)[0]
    torch.testing.assert_close(swapped[0], both[0][1], rtol=1e-4, atol=1e-5)


def test_flip_aggregation_is_nearly_mirror_symmetric(net):
    # map(mirror(x)) vs mirror(map(x)): equal but for the strided convs' sampling grid (shifted by a pixel)
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    s = CamSettings(scales=(1.0,))
    a = multiscale_maps(net, images, [[0, 1, 2]], s, amp=False)[0]
    b = multiscale_maps(net, images.flip(-1), [[0, 1, 2]], s, amp=False)[0].flip(-1)
    corr = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
    assert corr > 0.9


def test_gradcam_matches_cam_at_one_scale(net):
    images = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8)
    cam = multiscale_maps(net, images, [[0], [1, 2]], CamSettings(scales=(1.0,)), amp=False)
    grad = multiscale_maps(net, images, [[0], [1, 2]], CamSettings(method="gradcam", scales=(1.0,)), amp=False)
    for c, g in zip(cam, grad, strict=True):
        torch.testing.assert_close(c, g, rtol=1e-3, atol=1e-3)
    s3 = multiscale_maps(net, images, [[0], [1, 2]], CamSettings(method="gradcam", gradcam_stage=3), amp=False)
    assert [m.shape for m in s3] == [m.shape for m in cam]


def test_settings_validation():
    with pytest.raises(ValueError):
        CamSettings(method="lrp")
    with pytest.raises(ValueError):
        CamSettings(scales=(0.0,))
    with pytest.raises(ValueError):
        cam_train.TrainSettings(val_fraction=1.0)
    with pytest.raises(ValueError):
        cam_train.TrainSettings(resize_long=(300, 200))


def test_geometry_scales_with_the_images():
    voc = [{"height": 375, "width": 500}] * 3
    assert cam_train.auto_geometry(voc, cam_train.TrainSettings()) == ((320, 640), 512)
    small = [{"height": 96, "width": 128}]
    assert cam_train.auto_geometry(small, cam_train.TrainSettings()) == ((82, 164), 128)
    fixed = cam_train.TrainSettings(resize_long=(100, 120), crop=64)
    assert cam_train.auto_geometry(voc, fixed) == ((100, 120), 64)


def test_validation_split_is_deterministic_and_disjoint():
    ids = list(range(100, 140))
    tr, va = cam_train.split_val(ids, 0.25, seed=3)
    assert len(va) == 10 and not set(tr) & set(va) and sorted(tr + va) == ids
    assert cam_train.split_val(list(reversed(ids)), 0.25, seed=3) == (tr, va)
    assert cam_train.split_val(ids, 0.25, seed=4)[1] != va
    assert cam_train.split_val(ids, 0.0, seed=3) == (ids, [])
    assert cam_train.split_val([1, 2], 0.5, seed=0)[0]  # never holds out everything


def test_augment_shapes_flip_and_padding():
    rgb = np.zeros((30, 60, 3), np.uint8)
    rgb[:, :30] = 255
    rng = np.random.default_rng(0)
    out = cam_train.augment(rgb, rng, (60, 60), 64)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    # the 30x60 image sits somewhere inside a zero (= mean colour) canvas of 64x64
    filled = np.abs(out).sum(0) > 0
    assert filled.sum() == 30 * 60
    big = cam_train.augment(np.full((200, 100, 3), 128, np.uint8), rng, (150, 150), 64)
    assert big.shape == (3, 64, 64) and (np.abs(big).sum(0) > 0).all()


def test_average_precision():
    assert cam_train.average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0], bool)) == 1.0
    assert cam_train.average_precision(np.array([0.9, 0.8, 0.1]), np.array([0, 0, 1], bool)) == pytest.approx(1 / 3)
    # ties count against us: a constant scorer gets the prevalence
    assert cam_train.average_precision(np.zeros(4), np.array([1, 0, 0, 0], bool)) == pytest.approx(0.25)
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.5, 0.5]])
    targets = np.array([[1, 0], [0, 1], [0, 0]], np.float32)
    assert cam_train.mean_average_precision(scores, targets) == 1.0
    assert cam_train.mean_average_precision(scores, np.zeros_like(targets)) is None
