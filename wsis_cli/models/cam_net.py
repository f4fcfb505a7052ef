"""The CAM classifier: a ResNet, global average pooling and a bias-free 1x1 convolution (IRNet's CAM net).

Class activation maps come straight out of the classifier: because the head is linear after GAP, the
score of class ``c`` is the spatial mean of ``w_c · f(x, y)``, so ``relu(w_c · f)`` (the CAM) shows where
the evidence for ``c`` sits. As upstream, the first two stages get no gradient (their output is detached,
and their parameters are frozen), the BN layers are frozen, and the last stage runs at stride 1 by default
so the maps have output stride 16.

Grad-CAM (Selvaraju et al.) is available on the same network: the channel weights are the spatially
averaged gradients of a class score w.r.t. a stage's features. At the last stage of this architecture
the gradient of a GAP-linear score is ``w_c / (h*w)`` everywhere, so Grad-CAM there equals the CAM up to
a per-image factor (a useful sanity check); at stage 3 it differs.

Pure modelling code: no file access.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from wsis_cli.models import registry
from wsis_cli.models.backbones import ResNetFeatures, normalize
from wsis_cli.models.timm_features import parameters_through

__all__ = ["CamNet", "calibrate_frozen_bn", "normalize"]


@torch.no_grad()
def calibrate_frozen_bn(module: nn.Module, x: torch.Tensor) -> int:
    """Set every frozen BN's statistics to those of its input on the batch ``x``, in one forward pass.

    A randomly initialised network with frozen BN has identity normalisation, and its activations grow
    layer after layer until training diverges (figures: bench/NOTES.md, "CAM network: frozen-BN
    calibration"). Each BN gets a pre-hook that stores the batch mean and variance of its input before
    it normalises, so later layers already see calibrated inputs. For ``--weights none`` only: pretrained
    statistics are kept. Returns the number of layers calibrated.
    """
    def pre(m: FrozenBatchNorm2d, inputs: tuple[torch.Tensor, ...]) -> None:
        t = inputs[0].float()
        m.running_mean.copy_(t.mean(dim=(0, 2, 3)))
        m.running_var.copy_(t.var(dim=(0, 2, 3), unbiased=False))

    from timm.layers import FrozenBatchNormAct2d

    frozen = (FrozenBatchNorm2d, FrozenBatchNormAct2d)  # torchvision's and timm's (with its activation)
    hooks = [m.register_forward_pre_hook(pre) for m in module.modules() if isinstance(m, frozen)]
    try:
        module(x)
    finally:
        for h in hooks:
            h.remove()
    return len(hooks)


class CamNet(nn.Module):
    """ResNet features + GAP + 1x1 conv classifier without bias.

    ``arch``: any backbone name of :mod:`wsis_cli.models.registry` (resnet18..152, ``timm:NAME``). ``state``: a raw backbone state dict (torchvision, self-supervised,
    ...) or ``None`` for random initialisation; ``source`` names it in messages. ``train_early`` lets
    stages 1-2 learn too (upstream freezes them, which suits pretrained weights; from scratch they would
    stay random). ``last_stride``: 1 (output stride 16, IRNet) or 2.
    Inputs are ImageNet-normalised float images ``(B, 3, H, W)`` (see :func:`normalize`).
    """

    def __init__(self, arch: str = "resnet50", num_classes: int = 1, state: dict | None = None,
                 last_stride: int = 1, *, source: str = "weights", train_early: bool = False,
                 strict: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.arch = arch
        self.num_classes = num_classes
        self.last_stride = last_stride
        self.backbone = registry.build(arch, state, source=source, output_stride=16 if last_stride == 1 else 32,
                                       frozen_bn=True, strict=strict)
        self.is_resnet = isinstance(self.backbone, ResNetFeatures)
        self.channels = self.backbone.channels[-1]
        self.classifier = nn.Conv2d(self.channels, num_classes, 1, bias=False)
        # Upstream initialises the new head with Xavier-uniform; it trains ~10x faster than the backbone.
        nn.init.xavier_uniform_(self.classifier.weight)
        self.train_early = train_early
        if not train_early:
            for p in self._early_parameters():
                p.requires_grad_(False)

    def _early_parameters(self) -> list[nn.Parameter]:
        """The parameters up to the stride-8 features (a ResNet's stem and stages 1-2), which upstream
        freezes: for other families, every parameter registered before the stride-8 level's output."""
        b = self.backbone
        if self.is_resnet:
            return [p for m in (b.stem, b.layer1, b.layer2) for p in m.parameters()]
        return parameters_through(b.net, 8)

    # ------------------------------------------------------------------ features

    def stage3(self, x: torch.Tensor) -> torch.Tensor:
        """Layer-3 features ``(B, C3, H/16, W/16)``; stages 1-2 run without autograd (IRNet detaches them)."""
        if not self.is_resnet:
            raise ValueError(f"stage-3 features need a ResNet, not {self.arch}")
        b = self.backbone
        if self.train_early:
            return b.layer3(b.layer2(b.layer1(b.stem(x))))
        with torch.no_grad():
            x = b.layer2(b.layer1(b.stem(x)))
        return b.layer3(x.detach())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage features ``(B, C, h, w)``: stride 16 with ``last_stride=1``, else 32."""
        if self.is_resnet:
            return self.backbone.layer4(self.stage3(x))
        return self.backbone(x)[-1]

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, K)`` from last-stage features (GAP then the 1x1 classifier)."""
        pooled = feats.mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-label logits ``(B, K)`` (train with ``F.multilabel_soft_margin_loss``)."""
        return self.head(self.features(x))

    # ------------------------------------------------------------------ maps

    def cams_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        """``relu(w · f)``: unnormalised CAMs ``(B, K, h, w)`` of every class."""
        return F.relu(F.conv2d(feats, self.classifier.weight))

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised CAMs ``(B, K, h, w)`` of every class at the feature stride."""
        return self.cams_from_features(self.features(x))

    def gradcams(self, x: torch.Tensor, classes: list[int], stage: int = 4) -> torch.Tensor:
        """Grad-CAM maps ``(B, len(classes), h, w)`` of the logits of ``classes`` w.r.t. stage 3 or 4.

        Each map is ``relu(sum_k alpha_k A_k)`` with ``alpha_k`` the spatial mean of ``d score / d A_k``.
        Needs autograd even in inference (call it outside ``torch.no_grad``); returns detached maps.
        """
        if stage not in (3, 4):
            raise ValueError(f"Grad-CAM stage must be 3 or 4, got {stage}")
        if not self.is_resnet:
            if stage == 3:
                raise ValueError(f"Grad-CAM at stage 3 needs a ResNet, not {self.arch}")
            with torch.enable_grad():
                target = self.features(x).detach().requires_grad_(True)
                logits = self.head(target)
                return self._gradcam_maps(logits, target, classes, x)
        with torch.enable_grad():
            f3 = self.stage3(x)
            if stage == 3:
                target = f3.detach().requires_grad_(True)
                logits = self.head(self.backbone.layer4(target))
            else:
                target = self.backbone.layer4(f3).detach().requires_grad_(True)
                logits = self.head(target)
            return self._gradcam_maps(logits, target, classes, x)

    @staticmethod
    def _gradcam_maps(logits: torch.Tensor, target: torch.Tensor, classes: list[int], x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            maps = []
            for i, c in enumerate(classes):
                # images are independent, so the gradient of the batch sum is each image's own gradient
                (grad,) = torch.autograd.grad(logits[:, c].sum(), target, retain_graph=i + 1 < len(classes))
                alpha = grad.mean(dim=(2, 3), keepdim=True)
                maps.append(F.relu((alpha * target).sum(dim=1)).detach())
        if not maps:
            return x.new_zeros((x.shape[0], 0, *target.shape[2:]))
        return torch.stack(maps, dim=1)
