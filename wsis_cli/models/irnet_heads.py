"""IRNet's two branches on a frozen ResNet: the class-boundary (edge) branch and the displacement branch.

Upstream ``resnet50_irn.Net``: the backbone (strides 2,2,2,1, so output stride 16) is fully frozen, and
both branches read its five levels ``x1`` (stem, stride 4), ``x2`` (layer1, 4), ``x3`` (layer2, 8),
``x4`` (layer3, 16) and ``x5`` (layer4, 16) through 1x1 convolutions with GroupNorm:

* edge: each level → 32 channels (x3 upsampled x2, x4 and x5 x4), concatenated at stride 4 (160 channels)
  → one boundary logit;
* displacement: x1..x5 → 64/128/256/256/256 channels; x4 and x5 are upsampled x2 and fused with x3 at
  stride 8 (→ 256), upsampled x2 and fused with x1 and x2 at stride 4 (→ 256) → 2 channels (dy, dx) in
  stride-4 pixels, minus a stored mean shift at inference.

Upsampled maps are cropped to the finer level's size, so any input size works (``ceil(H/4)`` outputs).

``scale`` (an extension; upstream works at 1): the image is upsampled by this factor before the backbone,
so the branches work at stride ``4 / scale`` of the image (outputs ``ceil(scale·H/4)``, displacement in
those finer cells). :func:`infer_maps` pools both maps back to the CAMs' stride-4 grid. On small objects
(a few stride-4 cells across) the radius-10 training pairs otherwise span several objects, and the maps
are too coarse to draw a boundary between them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsis_cli.models.backbones import ResNetFeatures

SCALES = (1, 2, 4)


def _block(cin: int, cout: int, groups: int, up: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(groups, cout)]
    if up > 1:
        layers.append(nn.Upsample(scale_factor=up, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _crop(x: Tensor, like: Tensor) -> Tensor:
    return x[..., : like.shape[-2], : like.shape[-1]]


class EdgeBranch(nn.Module):
    """Five levels → ``(B, 1, h4, w4)`` boundary logits at stride 4."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        ups = [1, 1, 2, 4, 4]
        self.levels = nn.ModuleList(_block(c, 32, 4, u) for c, u in zip(channels, ups, strict=True))
        self.out = nn.Conv2d(32 * 5, 1, 1, bias=True)

    def forward(self, feats: list[Tensor]) -> Tensor:
        ref = feats[1]
        maps = [_crop(level(f), ref) for level, f in zip(self.levels, feats, strict=True)]
        return self.out(torch.cat(maps, 1))


class DisplacementBranch(nn.Module):
    """Five levels → ``(B, 2, h4, w4)`` displacement (dy, dx) in stride-4 pixels."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.dp1 = _block(channels[0], 64, 8)
        self.dp2 = _block(channels[1], 128, 8)
        self.dp3 = _block(channels[2], 256, 16)
        self.dp4 = _block(channels[3], 256, 16, up=2)
        self.dp5 = _block(channels[4], 256, 16, up=2)
        self.dp6 = _block(768, 256, 16, up=2)
        self.dp7 = nn.Sequential(_block(64 + 128 + 256, 256, 16), nn.Conv2d(256, 2, 1, bias=False))

    def forward(self, feats: list[Tensor]) -> Tensor:
        x1, x2, x3, x4, x5 = feats
        d3 = self.dp3(x3)
        mid = torch.cat([d3, _crop(self.dp4(x4), d3), _crop(self.dp5(x5), d3)], 1)
        d2 = self.dp2(x2)
        fine = torch.cat([_crop(self.dp1(x1), d2), d2, _crop(self.dp6(mid), d2)], 1)
        return self.dp7(fine)


class IRNet(nn.Module):
    """A frozen backbone (a :class:`ResNetFeatures` or another CNN of the registry) plus :class:`EdgeBranch` and :class:`DisplacementBranch`.

    ``forward(x)`` takes ``(B, 3, H, W)`` normalised images and returns ``(edge_logits (B,1,h,w),
    displacement (B,2,h,w))`` with ``h = ceil(H/4)``; the displacement has the mean shift subtracted
    in eval mode only (training learns it up to a constant). The backbone never trains: it stays in
    eval mode and its features are computed without gradients. With ``scale > 1`` the images are
    upsampled by ``scale`` first, so ``h = ceil(scale·H/4)`` (see the module docstring).
    """

    def __init__(self, backbone: nn.Module, scale: int = 1) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale}")
        self.scale = scale
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.is_resnet = isinstance(backbone, ResNetFeatures)
        if self.is_resnet:
            channels = [backbone.stem[0].out_channels, *backbone.channels]
        else:
            # other CNNs give five levels at strides 2, 4, 8, 16, 16 (output stride 16): the first is
            # pooled to stride 4, where a ResNet's stem output lies
            channels = list(backbone.channels)
            if list(backbone.strides) != [2, 4, 8, 16, 16]:
                raise ValueError(f"IRNet needs five feature levels at strides 2, 4, 8, 16, 16 (output stride 16); "
                                 f"{getattr(backbone, 'arch', 'this backbone')} gives {backbone.strides}")
        if len(channels) != 5:
            raise ValueError("IRNet needs a backbone with all four stages")
        self.level_channels = channels  # of the five levels the branches read (strides 4, 4, 8, 16, 16)
        self.edge = EdgeBranch(channels)
        self.displacement = DisplacementBranch(channels)
        self.register_buffer("mean_shift", torch.zeros(2))

    def train(self, mode: bool = True) -> IRNet:
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, x: Tensor) -> list[Tensor]:
        with torch.no_grad():
            b = self.backbone
            if self.scale > 1:
                x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
            if self.is_resnet:
                x1 = b.stem(x)
                x2 = b.layer1(x1)
                x3 = b.layer2(x2)
                x4 = b.layer3(x3)
                x5 = b.layer4(x4)
            else:
                x1, x2, x3, x4, x5 = b(x)
                x1 = F.avg_pool2d(x1, 2, ceil_mode=True)
        return [t.detach() for t in (x1, x2, x3, x4, x5)]

    def forward(self, x: Tensor | None = None, feats: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Images ``x``, or the backbone's five levels ``feats`` when they were computed beforehand."""
        if feats is None:
            if x is None:
                raise ValueError("IRNet needs images or features")
            feats = self.features(x)
        edge = self.edge(feats)
        disp = self.displacement(feats)
        if not self.training:
            disp = disp - self.mean_shift.view(1, 2, 1, 1).to(disp.dtype)
        return edge, disp

    def head_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(edge params, displacement params)``: upstream trains them at lr 0.1 and 1.0."""
        return list(self.edge.parameters()), list(self.displacement.parameters())


@torch.no_grad()
def infer_maps(model: IRNet, image: Tensor) -> tuple[Tensor, Tensor]:
    """Upstream ``EdgeDisplacement`` without its 512 crop: one normalised ``(3, H, W)`` image →
    ``(edge (h, w) probabilities, displacement (2, h, w))`` on the stride-4 grid (``h = ceil(H/4)``);
    edge logits averaged over a horizontal flip, displacement from the unflipped pass (minus the mean
    shift). A model working at ``scale > 1`` has its maps pooled back to stride 4: the boundary by its max
    over each ``scale x scale`` block (a thin boundary survives), the displacement by the block mean,
    divided by ``scale`` into stride-4 cells."""
    model.eval()
    width = image.shape[-1]
    if width % 4:
        # the flipped pass must put its grid cells where the unflipped pass has them: pad to a multiple of 4
        image = F.pad(image, (0, 4 - width % 4))
    batch = torch.stack([image, image.flip(-1)])
    edge, disp = model(batch)
    logits = (edge[0, 0] + edge[1, 0].flip(-1)) / 2
    prob, disp = torch.sigmoid(logits.float()), disp[0].float()
    h4, w4 = -(-image.shape[-2] // 4), -(-width // 4)
    if model.scale == 1:
        return prob[:h4, :w4], disp[:, :h4, :w4]
    s = model.scale
    prob = F.max_pool2d(prob[None, None], s, ceil_mode=True)[0, 0, :h4, :w4]
    disp = F.avg_pool2d(disp[None], s, ceil_mode=True)[0, :, :h4, :w4] / s
    return prob, disp
