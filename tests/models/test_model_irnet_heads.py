"""IRNet's heads: output shapes at stride 4 for any input size, a frozen backbone, the mean shift."""

from __future__ import annotations

import pytest
import torch

from wsis_cli.models.backbones import ResNetFeatures
from wsis_cli.models.irnet_heads import IRNet, infer_maps
from wsis_cli.models.irnet_loss import irnet_losses


@pytest.fixture(scope="module")
def model() -> IRNet:
    torch.manual_seed(0)
    return IRNet(ResNetFeatures("resnet18", None, last_stride=1))


@pytest.mark.parametrize("size", [(64, 64), (83, 121)])
def test_shapes_at_stride_4(model: IRNet, size: tuple[int, int]) -> None:
    h, w = size
    model.train()
    edge, disp = model(torch.randn(2, 3, h, w))
    assert edge.shape == (2, 1, -(-h // 4), -(-w // 4))
    assert disp.shape == (2, 2, -(-h // 4), -(-w // 4))
    e, d = infer_maps(model, torch.randn(3, h, w))
    assert e.shape == (-(-h // 4), -(-w // 4)) and d.shape == (2, -(-h // 4), -(-w // 4))
    assert float(e.min()) >= 0 and float(e.max()) <= 1


@pytest.mark.parametrize("size", [(64, 64), (83, 121)])
def test_scale_2_works_at_stride_2_and_infers_at_stride_4(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = IRNet(ResNetFeatures("resnet18", None, last_stride=1), scale=2)
    h, w = size
    net.train()
    edge, disp = net(torch.randn(1, 3, h, w))
    assert edge.shape == (1, 1, -(-h // 2), -(-w // 2)) and disp.shape == (1, 2, -(-h // 2), -(-w // 2))
    net.mean_shift.zero_()
    x = torch.randn(3, h, w)
    e, d = infer_maps(net, x)
    assert e.shape == (-(-h // 4), -(-w // 4)) and d.shape == (2, -(-h // 4), -(-w // 4))
    # pooled back: the boundary is the block max, the displacement the block mean in stride-4 cells
    net.eval()
    with torch.no_grad():
        pad = torch.nn.functional.pad(x, (0, (-w) % 4))
        e2, d2 = net(torch.stack([pad, pad.flip(-1)]))
    fine = torch.sigmoid((e2[0, 0] + e2[1, 0].flip(-1)) / 2)
    assert torch.isclose(e[0, 0], fine[:2, :2].max(), atol=1e-5)
    assert torch.allclose(d[:, 0, 0], d2[0, :, :2, :2].mean((1, 2)) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="scale"):
        IRNet(ResNetFeatures("resnet18", None, last_stride=1), scale=3)


def test_backbone_frozen_and_mean_shift_only_at_eval(model: IRNet) -> None:
    model.train()
    assert not model.backbone.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    edge_p, dp_p = model.head_parameters()
    assert edge_p and dp_p and all(p.requires_grad for p in edge_p + dp_p)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, d_train = model(x)
        model.mean_shift.copy_(torch.tensor([1.5, -2.0]))
        _, d_train2 = model(x)
        model.eval()
        _, d_eval = model(x)
        model.mean_shift.zero_()
    assert torch.allclose(d_train, d_train2)
    assert torch.allclose(d_eval[0, 0], d_train[0, 0] - 1.5, atol=1e-5)
    assert torch.allclose(d_eval[0, 1], d_train[0, 1] + 2.0, atol=1e-5)


def test_losses_backpropagate_into_heads_only(model: IRNet) -> None:
    model.train()
    model.zero_grad()
    edge, disp = model(torch.randn(2, 3, 96, 96))
    labels = torch.zeros(2, 24, 24, dtype=torch.int64)
    labels[:, 6:18, 6:18] = 1
    labels[:, 0] = 255
    losses = irnet_losses(edge, disp, labels)
    assert torch.isfinite(losses.total)
    losses.total.backward()
    assert all(p.grad is not None for p in model.edge.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())
