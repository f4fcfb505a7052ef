"""MAL network and losses: decoder shapes and scale buckets, MIL/Dice on hand-made cases, CRF via our kernel."""

from __future__ import annotations

import pytest
import torch

from wsis_cli.models import mal_losses
from wsis_cli.models.backbones import ViTFeatures
from wsis_cli.models.mal import MalDecoder, MalEncoder, MalNet, box_buckets, bucket_sizes, output_size
from wsis_cli.models.mal_losses import crf_loss, crf_targets, dice_loss, mil_loss
from wsis_kernels.crf import mal_crf_params


def test_buckets_follow_coco_area_edges():
    areas = torch.tensor([1.0, 32 * 32 - 1, 32 * 32 + 1, 96 * 96 - 1, 96 * 96 + 1, 1e6], dtype=torch.float64)
    assert box_buckets(areas).tolist() == [0, 0, 1, 1, 2, 2]


def test_bucket_sizes_scale_with_the_crop():
    assert bucket_sizes(512) == (16, 32, 64) and output_size(512) == 128  # upstream
    assert bucket_sizes(128) == (4, 8, 16) and output_size(128) == 32
    assert bucket_sizes(32) == (1, 2, 4)


def test_decoder_shapes_and_bucket_routing():
    torch.manual_seed(0)
    dec = MalDecoder(in_channels=24, crop_size=128, dim=16)
    feats = torch.randn(5, 24, 8, 8)
    buckets = torch.tensor([2, 0, 1, 0, 2])
    logits = dec(feats, buckets)
    assert logits.shape == (5, 32, 32)
    # each RoI is decoded at its own bucket's scale, independently of the others in the batch
    for i in range(5):
        alone = dec(feats[i : i + 1], buckets[i : i + 1])
        torch.testing.assert_close(alone[0], logits[i], rtol=1e-4, atol=1e-5)
    # different buckets give different masks for the same features
    assert not torch.allclose(dec(feats[:1], torch.tensor([0])), dec(feats[:1], torch.tensor([2])))
    assert dec(feats, None).shape == (5, 32, 32)


def test_logits_are_query_value_inner_products():
    torch.manual_seed(0)
    dec = MalDecoder(in_channels=8, crop_size=64, dim=4, scale_buckets=False)
    feats = torch.randn(2, 8, 8, 8)
    value = dec.pixel(feats)  # 8x8 grid -> x2 -> 16 = 64/4: no final resize
    query = dec.instance(feats)
    torch.testing.assert_close(dec(feats), (query[:, :, None, None] * value).sum(1))


def test_vit_encoder_grid_and_depth():
    vit = ViTFeatures("vit_tiny")
    enc = MalEncoder(vit, depth=1)
    assert len(enc.backbone.layers) == 1 and enc.channels == 192 and enc.stride == 16
    net = MalNet(enc, crop_size=64, dim=8)
    assert net(torch.randn(2, 3, 64, 64), torch.tensor([0, 2])).shape == (2, 16, 16)
    with pytest.raises(ValueError):
        MalNet(enc, crop_size=72)
    with pytest.raises(ValueError):
        MalEncoder(ViTFeatures("vit_tiny"), depth=13)


def test_patch_override_gives_a_finer_grid():
    vit = ViTFeatures("vit_tiny")
    flat = torch.full((1, 3, 32, 32), 0.5)
    before = vit.conv_proj(flat)[0, :, 0, 0]
    enc = MalEncoder(vit, depth=1, patch=8)
    assert enc.stride == 8 and enc(torch.randn(1, 3, 64, 64)).shape == (1, 192, 8, 8)
    # a flat patch embeds (nearly) as before: the kernel was resampled, not re-initialised
    torch.testing.assert_close(vit.conv_proj(flat)[0, :, 0, 0], before, rtol=0.05, atol=0.02)


def test_conv_stem_replaces_the_patch_embedding():
    from wsis_cli.models.mal import ConvStem

    stem = ConvStem(768, 16)  # upstream's: 96, 192, 384, 768 channels, four stride-2 convs, then 1x1
    widths = [m.out_channels for m in stem.body if isinstance(m, torch.nn.Conv2d)]
    assert widths == [96, 192, 384, 768] and stem.proj.kernel_size == (1, 1)
    assert all(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 1 for m in stem.body[1::3])
    assert stem(torch.randn(1, 3, 64, 64)).shape == (1, 768, 4, 4)
    enc = MalEncoder(ViTFeatures("vit_tiny"), depth=1, patch=4, conv_stem=True)
    assert isinstance(enc.backbone.conv_proj, ConvStem) and enc.stride == 4
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 192, 8, 8)
    with pytest.raises(ValueError, match="power-of-2"):
        ConvStem(192, 14)


def test_dice_eps_form():
    a = torch.tensor([[1.0, 0.0, 1.0]])
    assert dice_loss(a, a).item() == pytest.approx(1 - 4 / (4 + 0.002), rel=1e-3)
    assert dice_loss(a, torch.zeros_like(a)).item() == pytest.approx(1.0)
    # both empty: 1 - 0 / 0.002
    assert dice_loss(torch.zeros(1, 3), torch.zeros(1, 3)).item() == pytest.approx(1.0)


def test_mil_loss_hand_made():
    box = torch.zeros(1, 6, 6)
    box[:, 1:4, 2:5] = 1
    # a mask inside the box touching every row and column of it: projections equal the box's
    cross = torch.zeros(1, 6, 6)
    cross[:, 2, 2:5] = 1
    cross[:, 1:4, 3] = 1
    perfect = 2 * (1 - 2 * 3 / (3 + 3 + 0.002))
    assert mil_loss(cross, box).item() == pytest.approx(perfect, abs=1e-5)
    assert mil_loss(box, box).item() == pytest.approx(perfect, abs=1e-5)
    # missing a row of the box costs; leaking outside it costs
    partial = cross.clone()
    partial[:, 3, 3] = 0
    assert mil_loss(partial, box).item() > perfect + 0.05
    leak = cross.clone()
    leak[:, 5, 0] = 1
    assert mil_loss(leak, box).item() > perfect + 0.05
    assert mil_loss(torch.zeros(1, 6, 6), box).item() == pytest.approx(2.0)


def test_crf_loss_uses_the_kernel_with_mal_params(monkeypatch):
    calls = []
    real = mal_losses.mean_field_crf

    def spy(image, probs, box, params):
        calls.append((image.shape, probs.shape, box.shape, params))
        return real(image, probs, box, params)

    monkeypatch.setattr(mal_losses, "mean_field_crf", spy)
    image = torch.zeros(2, 3, 8, 8)
    image[:, :, 2:6, 2:6] = 2.0  # a bright square on a dark background
    box = torch.zeros(2, 8, 8)
    box[:, 1:7, 1:7] = 1
    student = torch.full((2, 8, 8), 0.6, requires_grad=True)
    loss = crf_loss(image, student, torch.full((2, 8, 8), 0.6), box)
    assert calls and calls[0][1] == (2, 1, 8, 8) and calls[0][2] == (2, 1, 8, 8)
    assert calls[0][3] == mal_crf_params()
    assert loss.shape == (2,)
    loss.sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    target = crf_targets(image, torch.full((2, 8, 8), 0.7) * box, box)
    assert set(target.unique().tolist()) <= {0.0, 1.0}
    assert target[:, 0, :].sum() == 0 and target[:, :, 0].sum() == 0  # never outside the box


def test_resnet_encoder_keeps_only_the_stages_it_runs():
    from wsis_cli.models.backbones import ResNetFeatures

    enc = MalEncoder(ResNetFeatures("resnet18", stages=2, frozen_bn=False))
    assert enc.stride == 8 and enc.channels == 128
    net = MalNet(enc, crop_size=64, dim=8)
    net(torch.randn(2, 3, 64, 64), torch.tensor([1, 2])).sum().backward()
    # every parameter takes part in the loss (DistributedDataParallel refuses unused ones)
    assert all(p.grad is not None for p in net.parameters())
