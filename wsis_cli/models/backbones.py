"""Backbones shared by the stages: torchvision ResNets and ViTs as dense feature extractors.

Weights arrive as a raw state dict of any layout (torchvision, DenseCL, MoCo, DINO, MAE, timm) and are
matched by :func:`wsis_cli.models.weights.match_state_dict`; reading the file is :mod:`wsis_cli.io.weights`'s
job. Inputs are float images normalised with :func:`normalize`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm
from torchvision.ops.misc import FrozenBatchNorm2d

from wsis_cli.models.weights import match_state_dict
from wsis_cli.runtime.log import get_logger

log = get_logger("backbones")

from wsis_cli.models.backbone_names import RESNETS, VITS  # noqa: E402

# compact ViTs torchvision lacks (DeiT-tiny/small shapes), for laptops and tests
_SMALL_VITS = {"vit_tiny": (16, 12, 3, 192, 768), "vit_small": (16, 12, 6, 384, 1536)}

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise a (B,3,H,W) batch given as uint8 [0,255] or float [0,1]."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = IMAGENET_MEAN.to(x.device).view(1, 3, 1, 1)
    std = IMAGENET_STD.to(x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` with a FrozenBatchNorm2d holding the same statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def _wsis_resnet_keys(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our own :class:`ResNetFeatures` layout (``stem.0`` = conv1, ``stem.1`` = bn1) → torchvision's, so a
    backbone fine-tuned by one stage loads into another through ``--weights``."""
    return {re.sub(r"(^|\.)stem\.1\.", r"\1bn1.", re.sub(r"(^|\.)stem\.0\.", r"\1conv1.", k)): v
            for k, v in flat.items()}


def _load(module: nn.Module, state: Any, source: str) -> None:
    if state is None:
        return
    matched, report = match_state_dict(state, module, source=source, rename=_wsis_resnet_keys)
    module.load_state_dict(matched, strict=False)
    log.info("%s: loaded %d/%d tensors (prefix %r)", source, report.matched, report.total, report.prefix)


class ResNetFeatures(nn.Module):
    """A torchvision ResNet without its head, returning the outputs of ``layer1..layer<stages>``.

    ``last_stride=1`` gives IRNet's strides (2,2,2,1): outputs at strides [4, 8, 16, 16] (no dilation);
    ``last_stride=2`` the standard [4, 8, 16, 32]. ``frozen_bn`` fixes BatchNorm statistics and affine
    parameters (small weakly supervised batches would wreck them). Forward: (B,3,H,W) float →
    list of (B, C_i, H/s_i, W/s_i).
    """

    def __init__(self, arch: str = "resnet50", state: Any = None, *, last_stride: int = 1,
                 frozen_bn: bool = True, stages: int = 4, source: str = "weights") -> None:
        super().__init__()
        if arch not in RESNETS:
            raise ValueError(f"unknown ResNet {arch!r}; choose from {', '.join(RESNETS)}")
        if last_stride not in (1, 2) or not 1 <= stages <= 4:
            raise ValueError("last_stride must be 1 or 2 and stages 1..4")
        net = getattr(tvm, arch)(weights=None)
        _load(net, state, source)
        if last_stride == 1:
            block = net.layer4[0]
            # torchvision puts the stride in conv2 of a Bottleneck (ResNet v1.5), conv1 of a BasicBlock
            conv = block.conv2 if hasattr(block, "conv3") else block.conv1
            conv.stride = (1, 1)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_stages = stages
        width = 1 if arch in ("resnet18", "resnet34") else 4
        self.channels = [64 * width, 128 * width, 256 * width, 512 * width][:stages]
        self.strides = [4, 8, 16, 16 if last_stride == 1 else 32][:stages]
        self.arch = arch
        if frozen_bn:
            freeze_batchnorm(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4)[: self.num_stages]:
            x = layer(x)
            outs.append(x)
        return outs


_TIMM_RULES = [
    (r"^cls_token$", "class_token"),
    (r"^pos_embed$", "encoder.pos_embedding"),
    (r"^patch_embed\.proj\.", "conv_proj."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.encoder_layer_\1.ln_1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.encoder_layer_\1.ln_2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.weight$", r"encoder.layers.encoder_layer_\1.self_attention.in_proj_weight"),
    (r"^blocks\.(\d+)\.attn\.qkv\.bias$", r"encoder.layers.encoder_layer_\1.self_attention.in_proj_bias"),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.encoder_layer_\1.self_attention.out_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"encoder.layers.encoder_layer_\1.mlp.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"encoder.layers.encoder_layer_\1.mlp.3."),
    (r"^(fc_)?norm\.", "encoder.ln."),
]


def timm_to_torchvision_vit(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename timm-layout ViT keys (DINO, MAE, DeiT releases) to torchvision's ``VisionTransformer``."""
    out = {}
    for key, value in state.items():
        stem = key
        prefix = ""
        m = re.match(r"^(.*?)(cls_token|pos_embed|patch_embed\..*|blocks\..*|(fc_)?norm\..*)$", key)
        if m:
            prefix, stem = m.group(1), m.group(2)
        for pattern, repl in _TIMM_RULES:
            new, n = re.subn(pattern, repl, stem)
            if n:
                stem = new
                break
        out[prefix + stem] = value
    return out


def _resize_pos_embedding(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1+n², C) position embeddings → (1, 1+gh·gw, C), bicubic on the patch grid; class token kept."""
    cls, patches = pos[:, :1], pos[:, 1:]
    n = int(round(math.sqrt(patches.shape[1])))
    if (n, n) == tuple(grid):
        return pos
    p = patches.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    p = F.interpolate(p.float(), size=grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([cls, p.flatten(2).transpose(1, 2)], dim=1)


class ViTFeatures(nn.Module):
    """A torchvision ViT without its head: (B,3,H,W) → (B, C, H/p, W/p) final-LayerNorm patch tokens.

    H and W must be multiples of the patch size ``p``; the position embeddings (learnt for 224²) are
    interpolated bicubically to the input's patch grid, so any crop size works.
    """

    def __init__(self, arch: str = "vit_b_16", state: Any = None, *, source: str = "weights") -> None:
        super().__init__()
        if arch not in VITS:
            raise ValueError(f"unknown ViT {arch!r}; choose from {', '.join(VITS)}")
        if arch in _SMALL_VITS:
            patch, layers, heads, dim, mlp = _SMALL_VITS[arch]
            net = tvm.VisionTransformer(image_size=224, patch_size=patch, num_layers=layers, num_heads=heads,
                                        hidden_dim=dim, mlp_dim=mlp)
        else:
            net = getattr(tvm, arch)(weights=None)
        if state is not None:
            matched, report = match_state_dict(state, net, source=source, rename=_rename_checkpoint)
            if "encoder.pos_embedding" in report.missing:
                pos = _find_pos(state)
                if pos is not None:
                    grid = int(round(math.sqrt(net.encoder.pos_embedding.shape[1] - 1)))
                    matched["encoder.pos_embedding"] = _resize_pos_embedding(pos, (grid, grid))
            net.load_state_dict(matched, strict=False)
            log.info("%s: loaded %d/%d tensors (prefix %r)", source, report.matched, report.total, report.prefix)
        self.conv_proj = net.conv_proj
        self.class_token = net.class_token
        self.pos_embedding = net.encoder.pos_embedding
        self.dropout = net.encoder.dropout
        self.layers = net.encoder.layers
        self.ln = net.encoder.ln
        self.patch = net.patch_size
        self.channels = net.hidden_dim
        self.arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {self.patch}")
        gh, gw = h // self.patch, w // self.patch
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(b, -1, -1), tokens], dim=1)
        tokens = tokens + _resize_pos_embedding(self.pos_embedding, (gh, gw))
        tokens = self.ln(self.layers(self.dropout(tokens)))
        return tokens[:, 1:].transpose(1, 2).reshape(b, self.channels, gh, gw)


def _rename_checkpoint(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return timm_to_torchvision_vit(flat)


def _find_pos(state: Any) -> torch.Tensor | None:
    from wsis_cli.models.weights import unwrap

    for key, value in timm_to_torchvision_vit(unwrap(state)).items():
        if key.endswith("encoder.pos_embedding") and value.dim() == 3:
            return value
    return None


def build(arch: str, state: Any = None, *, source: str = "weights", **kwargs: Any) -> nn.Module:
    """A ResNet or ViT feature extractor by name (keyword arguments go to the ResNet constructor)."""
    if arch in RESNETS:
        return ResNetFeatures(arch, state, source=source, **kwargs)
    if arch in VITS:
        return ViTFeatures(arch, state, source=source)
    raise ValueError(f"unknown backbone {arch!r}; choose from {', '.join(RESNETS + VITS)}")
