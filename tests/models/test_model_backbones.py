"""Backbones: strides, frozen BN, checkpoint layouts (torchvision, MoCo/DenseCL prefixes, timm/DINO ViTs)."""

import pytest
import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

from wsis_cli.models.backbones import ResNetFeatures, ViTFeatures, build, normalize, timm_to_torchvision_vit
from wsis_cli.runtime.errors import BadInputError


@pytest.mark.parametrize(("arch", "last_stride", "strides"), [
    ("resnet18", 1, [4, 8, 16, 16]), ("resnet18", 2, [4, 8, 16, 32]), ("resnet50", 1, [4, 8, 16, 16]),
])
def test_resnet_output_strides_and_channels(arch, last_stride, strides):
    net = ResNetFeatures(arch, last_stride=last_stride).eval()
    outs = net(torch.randn(1, 3, 96, 128))
    assert net.strides == strides
    for out, s, c in zip(outs, strides, net.channels, strict=True):
        assert out.shape == (1, c, 96 // s, 128 // s)


def test_frozen_bn_has_no_trainable_statistics():
    net = ResNetFeatures("resnet18", frozen_bn=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
    before = [b.clone() for b in net.buffers()]
    net.train()(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers(), strict=True))


def test_stages_limits_outputs():
    net = ResNetFeatures("resnet18", stages=2)
    assert len(net(torch.randn(1, 3, 64, 64))) == 2 and net.strides == [4, 8]


@pytest.mark.parametrize("prefix", ["", "module.", "module.encoder_q.", "backbone."])
def test_resnet_loads_prefixed_ssl_checkpoints(prefix):
    ref = torchvision.models.resnet18()
    raw = {"state_dict": {prefix + k: v for k, v in ref.state_dict().items()}}
    raw["state_dict"]["module.encoder_k.conv1.weight"] = torch.zeros(64, 3, 7, 7)  # MoCo's key encoder
    net = ResNetFeatures("resnet18", raw)
    assert torch.equal(net.stem[0].weight, ref.conv1.weight)
    assert torch.equal(net.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)


def test_checkpoint_for_another_architecture_is_bad_input():
    raw = torchvision.models.resnet50().state_dict()
    with pytest.raises(BadInputError, match="r50.pth"):
        ResNetFeatures("resnet18", raw, source="r50.pth")


def _timm_vit(dim=192, depth=12, mlp=768, grid=14):
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g)

    sd = {"cls_token": r(1, 1, dim), "pos_embed": r(1, 1 + grid * grid, dim),
          "patch_embed.proj.weight": r(dim, 3, 16, 16), "patch_embed.proj.bias": r(dim),
          "norm.weight": r(dim), "norm.bias": r(dim), "head.weight": r(10, dim)}
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": r(dim), p + "norm1.bias": r(dim), p + "attn.qkv.weight": r(3 * dim, dim),
                   p + "attn.qkv.bias": r(3 * dim), p + "attn.proj.weight": r(dim, dim), p + "attn.proj.bias": r(dim),
                   p + "norm2.weight": r(dim), p + "norm2.bias": r(dim), p + "mlp.fc1.weight": r(mlp, dim),
                   p + "mlp.fc1.bias": r(mlp), p + "mlp.fc2.weight": r(dim, mlp), p + "mlp.fc2.bias": r(dim)})
    return sd


def test_vit_features_any_grid_and_timm_dino_layout():
    sd = _timm_vit()
    net = ViTFeatures("vit_tiny", {"teacher": {"backbone." + k: v for k, v in sd.items()}}).eval()
    assert torch.equal(net.class_token, sd["cls_token"])
    assert torch.equal(net.layers[3].self_attention.in_proj_weight, sd["blocks.3.attn.qkv.weight"])
    out = net(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 192, 4, 6)
    with pytest.raises(ValueError, match="multiple"):
        net(torch.randn(1, 3, 60, 64))


def test_vit_pos_embedding_from_another_grid_is_interpolated():
    sd = _timm_vit(grid=8)  # trained at 128 px
    net = ViTFeatures("vit_tiny", sd)
    assert net.pos_embedding.shape == (1, 197, 192)
    assert torch.equal(net.pos_embedding[:, 0], sd["pos_embed"][:, 0])


def test_timm_rename_is_bijective_on_block_keys():
    sd = _timm_vit(depth=2)
    renamed = timm_to_torchvision_vit(sd)
    assert "encoder.layers.encoder_layer_1.mlp.3.weight" in renamed and len(renamed) == len(sd)


def test_build_by_name_and_normalize():
    assert isinstance(build("resnet18"), ResNetFeatures)
    with pytest.raises(ValueError):
        build("alexnet")
    x = normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(x[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))


def test_a_wsis_backbone_state_loads_through_weights():
    trained = ResNetFeatures("resnet18")
    with torch.no_grad():
        trained.stem[0].weight.add_(1.0)
    wrapped = {"model": {"backbone." + k: v for k, v in trained.state_dict().items()}}  # e.g. a CamNet model.pt
    net = ResNetFeatures("resnet18", wrapped)
    assert torch.equal(net.stem[0].weight, trained.stem[0].weight)
    assert torch.equal(net.layer3[0].conv1.weight, trained.layer3[0].conv1.weight)
