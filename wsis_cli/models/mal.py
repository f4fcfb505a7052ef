"""MAL's mask auto-labeler network: an image encoder and the attention (query · value) mask decoder.

Lan et al., "Vision Transformers Are Good Mask Auto-Labelers" (CVPR 2023); the defaults follow the
official implementation (``../shared/reference/upstream-implementations.md`` §2.2):

* encoder: a ViT (default ``vit_b_16``) without its head, position embeddings interpolated to the crop,
  giving a ``(B, C, S/p, S/p)`` token grid for an ``S x S`` crop; or a ResNet's last stage;
* instance-aware head ("K head"): mean over the whole grid → Linear → ReLU → Linear: one query per RoI;
* pixel-wise head ("V head"): four 3x3 conv + ReLU layers with a bilinear x2 upsample before the fourth;
* mask logits: the inner product of the query with the value vector at every pixel;
* scale buckets: the grid is first resized by the *original* box area (< 32², 32²–96², > 96² pixels) to
  ``S/32``, ``S/16``, ``S/8`` (16², 32², 64² for upstream's 512² crops), so small objects are decoded
  coarsely and large ones finely; every mask is then resized to the output grid ``S/4`` (128² at 512).

Pure modules: no file access. Weights reach the encoder through :mod:`wsis_cli.stages.backbone`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# box-area bucket edges in original image pixels (COCO's small/medium/large)
BUCKET_EDGES = (32.0 * 32.0, 96.0 * 96.0)
# decoder grid per bucket and output grid, as divisors of the crop side (upstream: 512 → 16/32/64 and 128)
BUCKET_DIVISORS = (32, 16, 8)
OUTPUT_DIVISOR = 4


def box_buckets(areas: torch.Tensor) -> torch.Tensor:
    """Scale bucket (0 small, 1 medium, 2 large) of each box from its original area ``(N,)`` in pixels²."""
    edges = torch.tensor(BUCKET_EDGES, dtype=areas.dtype, device=areas.device)
    return torch.bucketize(areas, edges, right=False)


def bucket_sizes(crop_size: int) -> tuple[int, int, int]:
    """Decoder grid side of each bucket for ``crop_size`` crops (at least 1)."""
    return tuple(max(1, crop_size // d) for d in BUCKET_DIVISORS)  # type: ignore[return-value]


def output_size(crop_size: int) -> int:
    """Side of the mask logits for ``crop_size`` crops: ``crop_size // 4``."""
    return max(1, crop_size // OUTPUT_DIVISOR)


class MalEncoder(nn.Module):
    """Wrap a backbone so it returns one ``(B, C, h, w)`` feature grid.

    ``ViTFeatures`` already does; for ``ResNetFeatures`` (which returns every stage) the last stage is
    taken. ``depth`` > 0 keeps only the first ``depth`` transformer blocks of a ViT (a cheap encoder for
    laptops and tests; pretrained weights of the kept blocks still apply); a ResNet's stages are chosen
    when it is built. ``patch`` > 0 replaces the
    ViT's patch embedding by one of that patch size (its kernel resized from the original): a finer token
    grid for small crops. ``conv_stem`` replaces the patch embedding by MAL's :class:`ConvStem` (of the
    same stride: the ViT's patch size or ``patch``), trained from scratch as upstream.
    """

    def __init__(self, backbone: nn.Module, depth: int = 0, patch: int = 0, conv_stem: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.is_vit = hasattr(backbone, "patch")
        if (patch > 0 or conv_stem) and not self.is_vit:
            raise ValueError("a patch size or conv stem applies to ViT encoders only")
        if conv_stem:
            backbone.patch = patch or backbone.patch
            backbone.conv_proj = ConvStem(backbone.channels, backbone.patch)
        elif patch > 0 and patch != backbone.patch:
            backbone.conv_proj = _resized_patch_embedding(backbone.conv_proj, patch)
            backbone.patch = patch
        if depth > 0:
            if not self.is_vit:
                raise ValueError("pass the stages of a ResNet to its constructor")
            layers = backbone.layers
            if depth > len(layers):
                raise ValueError(f"encoder depth {depth} exceeds the {len(layers)} blocks of {backbone.arch}")
            backbone.layers = nn.Sequential(*list(layers)[:depth])
        if not self.is_vit:
            # stages a ResNet does not run would hold parameters without gradients (DDP refuses those)
            for i in range(getattr(backbone, "num_stages", 4) + 1, 5):
                setattr(backbone, f"layer{i}", nn.Identity())
        ch = backbone.channels
        self.channels = int(ch[-1] if isinstance(ch, (list, tuple)) else ch)
        self.stride = int(backbone.patch if self.is_vit else backbone.strides[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(x)
        return out[-1] if isinstance(out, (list, tuple)) else out


def _resized_patch_embedding(conv: nn.Conv2d, patch: int) -> nn.Conv2d:
    """A stride-``patch`` patch embedding whose kernel is the old one resampled to ``patch x patch``,
    scaled so that a flat patch gives the same embedding."""
    new = nn.Conv2d(conv.in_channels, conv.out_channels, patch, stride=patch, bias=conv.bias is not None)
    with torch.no_grad():
        old = conv.weight.shape[-1]
        w = F.interpolate(conv.weight, size=(patch, patch), mode="bilinear", align_corners=False)
        new.weight.copy_(w * (old * old) / (patch * patch))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


class ConvStem(nn.Module):
    """MAL's convolutional stem for a ViT (after Xiao et al., "Early convolutions help transformers see
    better"): ``log2(stride)`` layers of (conv3x3 stride 2, GroupNorm(1), GELU) whose widths double up to
    ``dim`` (upstream at stride 16 and 768: 96, 192, 384, 768), then a 1x1 conv to ``dim``.

    Forward: ``(B, 3, H, W)`` → ``(B, dim, H/stride, W/stride)``, a drop-in for the patch embedding.
    """

    def __init__(self, dim: int, stride: int = 16) -> None:
        super().__init__()
        layers = int(math.log2(stride)) if stride > 1 else 0
        if layers < 1 or 2**layers != stride:
            raise ValueError(f"the conv stem needs a power-of-2 stride, got {stride}")
        widths = [max(dim >> (layers - 1 - i), 1) for i in range(layers)]
        convs: list[nn.Module] = []
        for i, width in enumerate(widths):
            convs += [nn.Conv2d(3 if i == 0 else widths[i - 1], width, 3, stride=2, padding=1, bias=False),
                      nn.GroupNorm(1, width), nn.GELU()]
        self.body = nn.Sequential(*convs)
        self.proj = nn.Conv2d(widths[-1], dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(x))


class InstanceHead(nn.Module):
    """MAL's "K head": global mean over the grid (no box masking, as upstream) → MLP → one query vector."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_channels, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` → ``(B, dim)``."""
        return self.mlp(feats.mean(dim=(2, 3)))


class PixelHead(nn.Module):
    """MAL's "V head": 3 x (conv3x3 + ReLU), bilinear x``scale`` upsample, conv3x3 + ReLU."""

    def __init__(self, in_channels: int, dim: int, scale: float = 2.0) -> None:
        super().__init__()
        convs = []
        for i in range(4):
            convs += [nn.Conv2d(in_channels if i == 0 else dim, dim, 3, padding=1), nn.ReLU(inplace=True)]
        self.before = nn.Sequential(*convs[:6])
        self.after = nn.Sequential(*convs[6:])
        self.scale = scale

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` → ``(B, dim, h·scale, w·scale)``."""
        x = self.before(feats)
        x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.after(x)


class MalDecoder(nn.Module):
    """Attention decoder: mask logits = query · value, decoded at the RoI's scale bucket.

    Forward: ``feats (B, C, h, w)``, ``buckets (B,)`` int64 in {0, 1, 2} (or ``None``: decode on the
    encoder grid itself) → logits ``(B, S/4, S/4)`` float for ``S = crop_size``.
    """

    def __init__(self, in_channels: int, crop_size: int, dim: int = 256, scale_buckets: bool = True) -> None:
        super().__init__()
        self.instance = InstanceHead(in_channels, dim)
        self.pixel = PixelHead(in_channels, dim)
        self.sizes = bucket_sizes(crop_size)
        self.out = output_size(crop_size)
        self.scale_buckets = scale_buckets

    def forward(self, feats: torch.Tensor, buckets: torch.Tensor | None = None) -> torch.Tensor:
        query = self.instance(feats)
        if buckets is None or not self.scale_buckets:
            return self._decode(feats, query)
        parts, order = [], []
        for b in torch.unique(buckets).tolist():
            idx = (buckets == b).nonzero(as_tuple=True)[0]
            size = self.sizes[int(b)]
            grid = F.interpolate(feats[idx], size=(size, size), mode="bilinear", align_corners=False)
            parts.append(self._decode(grid, query[idx]))
            order.append(idx)
        logits = torch.cat(parts)[torch.argsort(torch.cat(order))]
        return logits

    def _decode(self, grid: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        value = self.pixel(grid)
        logits = torch.einsum("bc,bchw->bhw", query, value)
        if logits.shape[-1] != self.out or logits.shape[-2] != self.out:
            logits = F.interpolate(logits[:, None], size=(self.out, self.out), mode="bilinear",
                                   align_corners=False)[:, 0]
        return logits


class MalNet(nn.Module):
    """Encoder + decoder. Forward: ImageNet-normalised crops ``(B, 3, S, S)`` and scale buckets ``(B,)``
    → mask logits ``(B, S/4, S/4)``. One RoI per crop: the network is class-agnostic."""

    def __init__(self, encoder: MalEncoder, crop_size: int, dim: int = 256, scale_buckets: bool = True) -> None:
        super().__init__()
        if crop_size % encoder.stride:
            raise ValueError(f"crop size {crop_size} is not a multiple of the encoder stride {encoder.stride}")
        self.encoder = encoder
        self.decoder = MalDecoder(encoder.channels, crop_size, dim, scale_buckets)
        self.crop_size = crop_size

    def forward(self, images: torch.Tensor, buckets: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.encoder(images), buckets)
