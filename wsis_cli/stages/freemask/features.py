"""Dense features for Free Mask: the backbone, input resizing, batched extraction, COCO annotations.

Images are resized on the device (short side to ``short_side``, long side at most ``max_size``, like
detectron2's test resize that FreeSOLO uses), ImageNet-normalised and run through the backbone in batches
of equal-size images; Free Mask then runs per image on the features of the chosen stage, and its masks
are upsampled to the *original* image size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsis_cli.io import coco
from wsis_cli.io import rle as rle_utils
from wsis_cli.models import registry
from wsis_cli.models.backbones import ResNetFeatures, normalize
from wsis_cli.runtime.device import autocast
from wsis_cli.stages.freemask.masks import FreeMaskParams, FreeMasks, free_masks
from wsis_cli.stages.freemask.settings import MAX_TOP_K, BackboneSpec


def build_backbone(spec: BackboneSpec, *, weights: str | None = None) -> nn.Module:
    """The feature network of ``spec`` (``weights`` overrides ``spec.weights``, e.g. ``"none"`` before
    loading a fine-tuned state)."""
    from wsis_cli.stages.backbone import build_backbone as build

    w = spec.weights if weights is None else weights
    return build(spec.arch, w, stages=spec.stage, output_stride=16 if spec.last_stride == 1 else 32, frozen_bn=True)


def features_of(net: nn.Module, x: Tensor) -> Tensor:
    """``(B, E, h, w)`` dense features of a normalised ``(B, 3, H, W)`` batch: a ResNet's last built stage
    or a ViT's patch tokens."""
    out = net(x)
    return out[-1] if isinstance(out, (list, tuple)) else out


def target_size(h: int, w: int, spec: BackboneSpec, multiple: int = 1) -> tuple[int, int]:
    """Network input size for an ``h x w`` image (rounded to ``multiple``, e.g. a ViT's patch)."""
    if spec.short_side > 0:
        scale = spec.short_side / min(h, w)
        if max(h, w) * scale > spec.max_size:
            scale = spec.max_size / max(h, w)
        h, w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if multiple > 1:
        h, w = max(multiple, round(h / multiple) * multiple), max(multiple, round(w / multiple) * multiple)
    return h, w


def prepare(image: np.ndarray, spec: BackboneSpec, device: torch.device, multiple: int = 1) -> Tensor:
    """``(H, W, 3)`` uint8 RGB → ``(3, h, w)`` float normalised network input on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float().div_(255.0)
    size = target_size(image.shape[0], image.shape[1], spec, multiple)
    if size != tuple(x.shape[2:]):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    return normalize(x)[0]


def patch_multiple(net: nn.Module) -> int:
    return registry.input_multiple(net)


@torch.no_grad()
def generate(net: nn.Module, images: Iterable[tuple[int, np.ndarray]], spec: BackboneSpec,
             params: FreeMaskParams, device: torch.device, *, batch_size: int = 8, amp: bool = True,
             dense: bool = False) -> Iterator[tuple[int, FreeMasks]]:
    """Free Mask for each ``(image_id, RGB image)``: yields ``(image_id, FreeMasks)`` in input order.

    Images are batched ``batch_size`` at a time; within a batch, equal network input sizes share one
    backbone pass (pad-free, so a border never changes the features).
    """
    net.eval()
    mult = patch_multiple(net)
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> Iterator[tuple[int, FreeMasks]]:
        inputs = [prepare(img, spec, device, mult) for _, img in pending]
        feats: list[Tensor | None] = [None] * len(pending)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x.shape), []).append(i)
        for members in groups.values():
            with autocast(device, amp):
                f = features_of(net, torch.stack([inputs[i] for i in members]))
            for i, fi in zip(members, f.float(), strict=True):
                feats[i] = fi
        for (image_id, img), fi in zip(pending, feats, strict=True):
            assert fi is not None
            yield image_id, free_masks(fi, (img.shape[0], img.shape[1]), params, dense=dense)

    for item in images:
        pending.append(item)
        if len(pending) >= batch_size:
            yield from flush()
            pending = []
    if pending:
        yield from flush()


def annotations_for(image_id: int, result: FreeMasks, category_id: int = 1) -> list[dict[str, Any]]:
    """COCO annotations of one image's masks: RLE, tight XYWH box, mask area, ``score`` = decayed maskness.

    Ids are ``image_id * 1000 + rank`` (rank from 1), stable across shards and resumed runs.
    """
    masks = result.masks.cpu().numpy()
    rles = rle_utils.encode_many(masks.astype(np.uint8)) if len(masks) else []
    return [coco.annotation(image_id * (MAX_TOP_K + 1) + r + 1, image_id, category_id, rle, score=float(s))
            for r, (rle, s) in enumerate(zip(rles, result.scores.tolist(), strict=True))]


def load_backbone_state(net: nn.Module, state: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Load a backbone state saved by ``freemask --labeled`` or ``--pretrain`` into ``net`` (keys matched
    like ``--weights``: a live-BatchNorm state fits the frozen-BatchNorm network)."""
    from wsis_cli.models.weights import match_state_dict

    matched, _ = match_state_dict(state, net, source=source, min_fraction=1.0)
    net.load_state_dict(matched, strict=False)


__all__ = ["MAX_TOP_K", "BackboneSpec", "ResNetFeatures", "annotations_for", "build_backbone", "features_of",
           "generate", "load_backbone_state", "prepare", "target_size"]
