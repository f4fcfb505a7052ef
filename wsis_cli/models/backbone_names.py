"""Backbone names and defaults, torch-free so the command line can show and check them before torch loads."""

from __future__ import annotations

TIMM_PREFIX = "timm:"
# the stages' default backbone: its ImageNet weights install with wsis (io.weights.PACKAGED), so a laptop,
# an offline cluster node and CI compute the same features
DEFAULT_ARCH = "timm:tf_efficientnet_lite0"
DEFAULT_WEIGHTS = "imagenet"
ARCH_HELP = "resnet18..152, vit_* (torchvision layout), or timm:NAME (any timm model, e.g. timm:convnext_tiny)"

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VITS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14", "vit_tiny", "vit_small")


def check_cnn_name(arch: str, flag: str = "--arch") -> str:
    """``arch`` if it can name a CNN backbone (a torchvision ResNet or ``timm:NAME``), else ValueError.

    Torch-free: whether a timm name exists is checked when the model is built (with close names).
    """
    if arch in RESNETS or (arch.startswith(TIMM_PREFIX) and len(arch) > len(TIMM_PREFIX)):
        return arch
    raise ValueError(f"{flag} {arch!r}: choose resnet18..152 or timm:NAME (a CNN, e.g. {DEFAULT_ARCH})")
