"""The student's construction: norm layers, trainable layers and widths follow the spec."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from wsis_cli.models.student import StudentSpec, build_student


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_from_scratch_group_norm_student_has_no_batch_norm_and_learns_everywhere() -> None:
    spec = StudentSpec(arch="resnet18-fpn", num_classes=2, min_size=64, max_size=64, group_norm=True,
                       fpn_channels=32, box_head_dim=64, mask_head_channels=16, rois_per_image=16, proposals=50)
    model, report = build_student(spec)
    assert report is None
    assert _count(model, nn.BatchNorm2d) == 0 and _count(model, FrozenBatchNorm2d) == 0
    assert _count(model, nn.GroupNorm) > 20  # body, FPN and mask head
    assert all(p.requires_grad for p in model.parameters())
    assert model.backbone.out_channels == 32 and model.rpn._post_nms_top_n["testing"] == 50
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])
    assert set(out[0]) >= {"boxes", "scores", "labels", "masks"}


def test_pretrained_layout_freezes_the_stem_and_layer1_like_torchvision() -> None:
    model, _ = build_student(StudentSpec(arch="resnet18-fpn", num_classes=1, min_size=64, max_size=64,
                                         frozen_bn=True))
    body = model.backbone.body
    assert _count(body, nn.BatchNorm2d) == 0 and _count(body, FrozenBatchNorm2d) > 0
    assert not any(p.requires_grad for p in body.conv1.parameters())
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    # torchvision's defaults otherwise: a 256-channel FPN, the 1024-d box head
    assert model.backbone.out_channels == 256 and model.roi_heads.box_head.fc7.out_features == 1024


def test_mobilenet_keeps_torchvision_fpn_width() -> None:
    with pytest.raises(ValueError, match="fpn_channels"):
        StudentSpec(arch="mobilenet-v3-fpn", fpn_channels=64)
