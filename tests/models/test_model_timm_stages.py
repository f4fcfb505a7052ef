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


def test_student_on_timm_backbone_trains_one_step_with_packaged_weights():
    from wsis_cli.io.weights import load_weights
    from wsis_cli.models.student import StudentSpec, build_student

    spec = StudentSpec(arch=ARCH, num_classes=2, min_size=64, max_size=64, frozen_bn=True)
    model, report = build_student(spec, load_weights("imagenet", ARCH), source="imagenet")
    assert report is not None and report.matched == report.total  # every backbone tensor from the package
    frozen = [n for n, p in model.backbone.body.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("net.conv_stem", "net.bn1", "net.blocks.0.", "net.blocks.1.")) for n in frozen)
    model.train()
    images = [torch.rand(3, 64, 64)]
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 10:40, 12:44] = 1
    targets = [{"boxes": torch.tensor([[12.0, 10.0, 44.0, 40.0]]), "labels": torch.tensor([1]), "masks": masks}]
    losses = model(images, targets)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)


def test_mal_encoder_on_timm_backbone():
    from wsis_cli.stages.mal.settings import ModelSpec, encoder_stride
    from wsis_cli.stages.mal.train import build_model

    assert encoder_stride(ARCH) == 16 and encoder_stride(ARCH, depth=2) == 8
    spec = ModelSpec(encoder=ARCH, crop_size=64)
    net = build_model(spec, "none")
    assert net.encoder.stride == 16
