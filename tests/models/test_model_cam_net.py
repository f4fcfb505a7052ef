"""CamNet: shapes at both last strides, frozen early stages, CAM = Grad-CAM at the last stage, BN calibration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops.misc import FrozenBatchNorm2d

from wsis_cli.models.cam_net import CamNet, calibrate_frozen_bn


@pytest.fixture(scope="module")
def net() -> CamNet:
    torch.manual_seed(0)
    return CamNet("resnet18", 3)


def test_shapes_at_both_strides(net):
    x = torch.randn(2, 3, 64, 80)
    assert net(x).shape == (2, 3)
    assert net.cams(x).shape == (2, 3, 4, 5)  # stride 16
    assert (net.cams(x) >= 0).all()
    coarse = CamNet("resnet18", 2, last_stride=2)
    assert coarse.cams(x).shape == (2, 2, 2, 3)  # stride 32


def test_logits_are_the_mean_of_the_linear_maps(net):
    x = torch.randn(1, 3, 64, 64)
    feats = net.features(x)
    linear = F.conv2d(feats, net.classifier.weight)  # the CAM before its ReLU
    torch.testing.assert_close(net(x), linear.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)


def test_stages_one_and_two_get_no_gradient():
    torch.manual_seed(0)
    net = CamNet("resnet18", 2)
    net(torch.randn(2, 3, 64, 64)).sum().backward()
    early = [*net.backbone.stem.parameters(), *net.backbone.layer1.parameters(), *net.backbone.layer2.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in early)
    assert all(p.grad is not None for p in net.backbone.layer3.parameters())
    assert net.classifier.weight.grad is not None
    assert net.classifier.bias is None

    free = CamNet("resnet18", 2, train_early=True)
    free(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in free.backbone.layer1.parameters())


def test_gradcam_at_the_last_stage_is_the_cam_up_to_scale(net):
    x = torch.randn(2, 3, 64, 96)
    cams = net.cams(x)[:, [0, 2]]
    grad = net.gradcams(x, [0, 2])
    assert grad.shape == cams.shape
    norm = lambda m: m / (m.amax(dim=(2, 3), keepdim=True) + 1e-8)  # noqa: E731
    torch.testing.assert_close(norm(grad), norm(cams), rtol=1e-3, atol=1e-4)
    other = net.gradcams(x, [1], stage=3)
    assert other.shape == (2, 1, 4, 6) and (other >= 0).all()
    assert net.gradcams(x, []).shape == (2, 0, 4, 6)
    with pytest.raises(ValueError):
        net.gradcams(x, [0], stage=2)


def test_state_dict_round_trip_and_backbone_access(net):
    clone = CamNet("resnet18", 3)
    clone.load_state_dict(net.state_dict())
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(clone.cams(x), net.cams(x))
    assert net.backbone.channels[-1] == net.classifier.in_channels == 512
    assert any(k.startswith("backbone.layer4.") for k in net.state_dict())


def test_calibration_normalises_random_features():
    torch.manual_seed(0)
    net = CamNet("resnet18", 2)
    x = torch.randn(4, 3, 64, 64) * 3 + 1
    n = calibrate_frozen_bn(net.backbone, x)
    assert n == sum(isinstance(m, FrozenBatchNorm2d) for m in net.backbone.modules())
    stem_out = net.backbone.stem[1](net.backbone.stem[0](x))  # conv1 -> bn1
    assert stem_out.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (stem_out.var(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-2
    assert torch.isfinite(net(x)).all()
