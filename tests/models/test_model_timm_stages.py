"""The learning stages' networks on a timm backbone: CAM classifier, IRNet branches, MAL encoder, student."""

from __future__ import annotations

import pytest
import torch

from wsis_cli.models.cam_net import CamNet
from wsis_cli.models.irnet_heads import IRNet
from wsis_cli.models.registry import build

ARCH = "timm:tf_efficientnet_lite0"


def test_cam_net_on_timm_freezes_early_levels_and_maps_at_stride_16():
    net = CamNet(ARCH, num_classes=3, last_stride=1)
    frozen = [n for n, p in net.backbone.net.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in net.backbone.net.named_parameters() if p.requires_grad]
    assert frozen and trainable
    assert all(n.startswith(("conv_stem", "bn1", "blocks.0.", "blocks.1.", "blocks.2.")) for n in frozen)
    x = torch.randn(2, 3, 64, 80)
    assert net(x).shape == (2, 3)
    assert net.cams(x).shape == (2, 3, 4, 5)
    g = net.gradcams(x, [0, 2])
    assert g.shape == (2, 2, 4, 5) and torch.isfinite(g).all()
    with pytest.raises(ValueError, match="needs a ResNet"):
        net.gradcams(x, [0], stage=3)


def test_cam_net_state_loads_into_irnet_backbone():
    """irnet --weights cam rebuilds the classifier's backbone from its state dict (prefix ``backbone.``)."""
    cam = CamNet(ARCH, num_classes=2, last_stride=1)
    irnet_backbone = build(ARCH, cam.state_dict(), output_stride=16)
    for (k, v), (k2, v2) in zip(cam.backbone.state_dict().items(), irnet_backbone.state_dict().items(), strict=True):
        assert k == k2
        torch.testing.assert_close(v, v2)


def test_irnet_on_timm_backbone():
    model = IRNet(build(ARCH, None, output_stride=16)).eval()
    edge, disp = model(torch.randn(1, 3, 64, 72))
    assert edge.shape == (1, 1, 16, 18) and disp.shape == (1, 2, 16, 18)
    with pytest.raises(ValueError, match="strides 2, 4, 8, 16, 16"):
        IRNet(build(ARCH, None, output_stride=32))
