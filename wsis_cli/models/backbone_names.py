"""Backbone names and defaults, torch-free so the command line can show and check them before torch loads."""

from __future__ import annotations

TIMM_PREFIX = "timm:"
# the stages' default backbone: its ImageNet weights install with wsis (io.weights.PACKAGED), so a laptop,
# an offline cluster node and CI compute the same features
DEFAULT_ARCH = "timm:tf_efficientnet_lite0"
DEFAULT_WEIGHTS = "imagenet"
ARCH_HELP = "resnet18..152, vit_* (torchvision layout), or timm:NAME (any timm model, e.g. timm:convnext_tiny)"
