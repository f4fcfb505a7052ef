"""Build a backbone from ``--arch`` and ``--weights``: the glue between :mod:`wsis_cli.io.weights` (reading)
and :mod:`wsis_cli.models.backbones` (matching and constructing)."""

from __future__ import annotations

from typing import Any

from wsis_cli.io.weights import load_weights
from wsis_cli.models.backbones import RESNETS, VITS, ResNetFeatures, ViTFeatures, build


def build_resnet(arch: str = "resnet50", weights: str = "none", **kwargs: Any) -> ResNetFeatures:
    """A :class:`ResNetFeatures` with the weights ``weights`` names (keyword arguments to its constructor)."""
    if arch not in RESNETS:
        raise ValueError(f"unknown ResNet {arch!r}")
    return ResNetFeatures(arch, load_weights(weights, arch), source=weights, **kwargs)


def build_vit(arch: str = "vit_b_16", weights: str = "none") -> ViTFeatures:
    """A :class:`ViTFeatures` with the weights ``weights`` names."""
    if arch not in VITS:
        raise ValueError(f"unknown ViT {arch!r}")
    return ViTFeatures(arch, load_weights(weights, arch), source=weights)


def build_backbone(arch: str, weights: str = "none", **kwargs: Any):
    """Either kind by name."""
    return build(arch, load_weights(weights, arch), source=weights, **kwargs)
