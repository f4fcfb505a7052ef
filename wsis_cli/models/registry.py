"""One place that turns a backbone name into a dense feature extractor.

Names: torchvision ResNets (``resnet18`` … ``resnet152``), torchvision-layout ViTs (``vit_b_16``,
``vit_small`` …) and any timm model as ``timm:NAME``. Every extractor takes an ImageNet-normalised
``(B, 3, H, W)`` batch and has ``.channels`` and ``.strides`` per level and ``.input_multiple`` (the size
inputs must be a multiple of); CNNs return a list of levels, ViTs their patch tokens. Stages ask this
module and never branch on families.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from wsis_cli.models.backbone_names import ARCH_HELP, DEFAULT_ARCH, DEFAULT_WEIGHTS, TIMM_PREFIX
from wsis_cli.models.backbones import RESNETS, VITS, ResNetFeatures, ViTFeatures
from wsis_cli.models.timm_features import TimmFeatures, is_timm, timm_name


def check_arch(arch: str) -> str:
    """``arch`` if it names a backbone we can build, else ValueError (with close timm names)."""
    if arch in RESNETS or arch in VITS:
        return arch
    if is_timm(arch):
        timm_name(arch)
        return arch
    raise ValueError(f"unknown backbone {arch!r}: choose {ARCH_HELP}")


def build(arch: str, state: Any = None, *, source: str = "weights", stages: int = 4, output_stride: int = 32,
          frozen_bn: bool = True, strict: bool = False) -> nn.Module:
    """The feature extractor ``arch`` with raw weights ``state`` (``None``: random initialisation).

    ``stages``: a ResNet's stages 1..4 (strides 4, 8, 16, 16|32); for timm CNNs the same strides are
    its levels 2..5, so ``stages=k`` keeps the levels up to stride ``2**(k+1)`` (its stride-2 level first).
    ``output_stride`` 16 or 32 (the last stage dilated or strided). ``strict``: every tensor must match.
    """
    check_arch(arch)
    if arch in VITS:
        return ViTFeatures(arch, state, source=source)
    if arch in RESNETS:
        return ResNetFeatures(arch, state, source=source, last_stride=1 if output_stride == 16 else 2,
                              frozen_bn=frozen_bn, stages=stages)
    return TimmFeatures(arch, state, stages=stages + 1, output_stride=output_stride, frozen_bn=frozen_bn,
                        source=source, strict=strict)


def input_multiple(net: nn.Module) -> int:
    """The size a network's inputs must be a multiple of (a ViT's patch), 1 for CNNs."""
    patch = getattr(net, "patch", None)
    return int(patch) if patch else int(getattr(net, "input_multiple", 1))


__all__ = ["ARCH_HELP", "DEFAULT_ARCH", "DEFAULT_WEIGHTS", "TIMM_PREFIX", "build", "check_arch", "input_multiple",
           "is_timm"]
