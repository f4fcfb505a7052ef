"""Build a backbone from ``--arch`` and ``--weights``: the glue between :mod:`wsis_cli.io.weights` (reading)
and :mod:`wsis_cli.models.registry` (matching and constructing). Every stage builds its backbone here."""

from __future__ import annotations

from typing import Any

from torch import nn

from wsis_cli.io.weights import PACKAGED_NAME, load_weights
from wsis_cli.models import registry
from wsis_cli.runtime.log import get_logger

log = get_logger("backbones")


def build_backbone(arch: str, weights: str = "none", **kwargs: Any) -> nn.Module:
    """The feature extractor ``arch`` with the weights ``weights`` names (keyword arguments: see
    :func:`wsis_cli.models.registry.build`). The packaged ImageNet weights must match completely."""
    state = load_weights(weights, arch)
    net = registry.build(arch, state, source=weights, strict=weights.strip().lower() == PACKAGED_NAME, **kwargs)
    log.info("backbone: %s, weights %s", arch, weights)
    return net


def build_resnet(arch: str = "resnet50", weights: str = "none", *, last_stride: int = 1, **kwargs: Any) -> nn.Module:
    """A ResNet-style extractor (``last_stride`` 1: output stride 16)."""
    return build_backbone(arch, weights, output_stride=16 if last_stride == 1 else 32, **kwargs)


def build_vit(arch: str = "vit_b_16", weights: str = "none") -> nn.Module:
    return build_backbone(arch, weights)
