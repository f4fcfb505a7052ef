"""The student: torchvision's Mask R-CNN with a selectable FPN backbone and a pluggable mask loss.

No detector code of our own: the backbone is torchvision's ResNet in its ``BackboneWithFPN`` (what
``resnet_fpn_backbone`` builds, with a choice of norm and FPN width) or ``mobilenet_backbone``, the detector is ``torchvision.models.detection.MaskRCNN``. What we add is
:class:`StudentRoIHeads`, a ``RoIHeads`` whose *training* mask loss can be swapped for FreeSOLO's
projection + pairwise losses (:mod:`wsis_cli.models.student_losses`); inference is torchvision's.

Anchor sizes: torchvision's (32..512 px, one size per FPN level) are meant for images resized to a short
side of 800. With a smaller ``min_size`` they are scaled by ``min_size / 800`` (at least 1/4), so the
anchors keep the same size relative to the resized image (``min_size=128`` gives 8..128 px).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, mobilenet_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, project_masks_on_boxes
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d, roi_align
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from wsis_cli.io.weights import PACKAGED_NAME
from wsis_cli.models.backbone_names import TIMM_PREFIX
from wsis_cli.models.student_losses import ProjectionLossWeights, projection_mask_loss
from wsis_cli.models.timm_features import TimmFeatures, load_into, parameters_through
from wsis_cli.models.weights import MatchReport, match_state_dict

# CLI name -> (torchvision backbone family, torchvision model name used for --weights)
ARCHES: dict[str, tuple[str, str]] = {
    "resnet50-fpn": ("resnet", "resnet50"),
    "resnet18-fpn": ("resnet", "resnet18"),
    "mobilenet-v3-fpn": ("mobilenet", "mobilenet_v3_large"),
}
MASK_LOSSES = ("standard", "projection")


def weights_arch(arch: str) -> str:
    """The torchvision classification model whose weights initialise ``arch``'s backbone (a timm
    backbone's own name)."""
    return arch if arch.startswith(TIMM_PREFIX) else ARCHES[arch][1]


@dataclass(frozen=True)
class StudentSpec:
    """Everything needed to rebuild a student (stored in ``model.pt``)."""

    arch: str = "resnet50-fpn"
    num_classes: int = 1  # object categories, background excluded
    min_size: int = 800
    max_size: int = 1333
    frozen_bn: bool = False  # FrozenBatchNorm2d (pretrained backbones) or trainable BatchNorm2d (scratch)
    mask_loss: str = "standard"
    rois_per_image: int = 512  # sampled RoIs per training image (torchvision's 512; fewer is much cheaper on CPUs)
    mask_head_channels: int = 256  # width of the 4-conv mask head (torchvision's 256; most of a CPU step's cost)
    # GroupNorm in the backbone (when trained from scratch), the FPN and the mask head: batch statistics of
    # one or two images, and running averages that lag weights changing fast from scratch, are what BN
    # would otherwise use (Wu & He 2018; "Rethinking ImageNet pre-training" trains from scratch with GN)
    group_norm: bool = False
    fpn_channels: int = 256  # FPN width (torchvision's 256); the FPN and RPN convs cost more than a ResNet-18 at 128 px
    box_head_dim: int = 1024  # the box head's MLP width (torchvision's 1024)
    proposals: int = 1000  # RPN proposals kept after NMS at inference (twice as many while training)

    def __post_init__(self) -> None:
        if self.arch not in ARCHES and not self.arch.startswith(TIMM_PREFIX):
            raise ValueError(f"unknown arch {self.arch!r}; choose from {', '.join(ARCHES)}")
        if self.mask_loss not in MASK_LOSSES:
            raise ValueError(f"mask loss must be one of {', '.join(MASK_LOSSES)}, got {self.mask_loss!r}")
        if self.num_classes < 1 or self.min_size < 16 or self.max_size < self.min_size or self.rois_per_image < 4 \
                or self.mask_head_channels < 8 or self.fpn_channels < 8 or self.box_head_dim < 8 or self.proposals < 1:
            raise ValueError("need num_classes >= 1, min_size >= 16, max_size >= min_size, rois_per_image >= 4, "
                             "mask_head_channels, fpn_channels and box_head_dim >= 8 and proposals >= 1")
        if ARCHES.get(self.arch, ("timm", ""))[0] == "mobilenet" and self.fpn_channels != 256:
            raise ValueError("the MobileNetV3 FPN has torchvision's fixed width: fpn_channels must be 256")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> StudentSpec:
        return cls(**{k: obj[k] for k in cls.__dataclass_fields__ if k in obj})


class ProjectionMaskLoss:
    """FreeSOLO's coarse-mask loss on the positive RoIs of one batch (see :mod:`.student_losses`).

    Targets are cropped to each proposal and resized to the ``M×M`` logit grid exactly as torchvision's
    standard loss does (``roi_align`` of the binary mask); the Lab colour crops come from each target's
    ``"lab"`` image ``(3, H0, W0)``, kept at the original resolution by the detector's transform, so the
    proposals are scaled back to it first.
    """

    def __init__(self, weights: ProjectionLossWeights | None = None) -> None:
        self.weights = weights or ProjectionLossWeights()
        self.step = 0  # the trainer sets the iteration (pairwise warm-up)

    def __call__(self, mask_logits: Tensor, proposals: Sequence[Tensor], matched_idxs: Sequence[Tensor],
                 labels: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]],
                 image_shapes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        m = mask_logits.shape[-1]
        flat_labels = torch.cat(list(labels)) if labels else mask_logits.new_zeros((0,), dtype=torch.long)
        if flat_labels.numel() == 0:
            empty = mask_logits[:0, 0]  # keeps the graph connected: zero losses with gradients
            return projection_mask_loss(empty, empty, None, self.step, self.weights)
        logits = mask_logits[torch.arange(flat_labels.numel(), device=flat_labels.device), flat_labels].float()
        crops, labs = [], []
        for props, idx, t, (h, w) in zip(proposals, matched_idxs, targets, image_shapes, strict=True):
            if props.numel() == 0:
                continue
            crops.append(project_masks_on_boxes(t["masks"], props, idx, m))
            lab = t.get("lab")
            if lab is not None:
                h0, w0 = lab.shape[-2:]
                scale = props.new_tensor([w0 / w, h0 / h, w0 / w, h0 / h])
                # sampled as project_masks_on_boxes samples the target (aligned=False); the adaptive
                # sampling averages each bin, which also calms pixel noise before the colour comparison
                labs.append(roi_align(lab[None].float(), [props.float() * scale], (m, m), 1.0))
        target = torch.cat(crops).clamp(0, 1)
        lab_crops = torch.cat(labs) if len(labs) == len(crops) and labs else None
        return projection_mask_loss(logits, target, lab_crops, self.step, self.weights)


class StudentRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` with an optional replacement for the mask loss while training.

    With ``coarse_loss=None`` (the standard loss) every call is torchvision's own forward. Otherwise the
    training forward recomputes the same box losses and positive-RoI mask logits, and hands the mask
    loss to ``coarse_loss`` (which returns a dict of named loss terms).
    """

    coarse_loss: ProjectionMaskLoss | None = None

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not self.training or self.coarse_loss is None:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets are needed in training mode")
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_cls, loss_box = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        # masks are learned on the positive proposals only, as in torchvision
        pos = [torch.where(lab > 0)[0] for lab in labels]
        mask_props = [p[i] for p, i in zip(proposals, pos, strict=True)]
        pos_matched = [m[i] for m, i in zip(matched_idxs, pos, strict=True)]
        pos_labels = [lab[i] for lab, i in zip(labels, pos, strict=True)]
        mask_features = self.mask_head(self.mask_roi_pool(features, mask_props, image_shapes))
        mask_logits = self.mask_predictor(mask_features)
        losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
        losses.update(self.coarse_loss(mask_logits, mask_props, pos_matched, pos_labels, targets, image_shapes))
        return [], losses


def anchor_scale(min_size: int) -> float:
    return min(1.0, max(0.25, min_size / 800.0))


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (fewer when ``channels`` is not a multiple of 32)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _resnet_fpn(spec: StudentSpec, name: str) -> BackboneWithFPN:
    """torchvision's ResNet + FPN (what ``resnet_fpn_backbone`` builds), with a choice of norm and FPN width.

    Pretrained (``frozen_bn``): FrozenBatchNorm2d and the stem + layer1 frozen, as torchvision does.
    From scratch every layer learns, with BatchNorm2d or GroupNorm (``group_norm``).
    """
    norm: Callable[[int], nn.Module] = (FrozenBatchNorm2d if spec.frozen_bn else
                                        group_norm if spec.group_norm else nn.BatchNorm2d)
    body = getattr(resnet, name)(weights=None, norm_layer=norm)
    if spec.frozen_bn:
        trainable = ("layer2", "layer3", "layer4")
        for pname, param in body.named_parameters():
            if not pname.startswith(trainable):
                param.requires_grad_(False)
    else:
        _zero_init_residuals(body)
    width = body.inplanes // 8  # layer1's output channels (64 for ResNet-18/34, 256 for ResNet-50+)
    return BackboneWithFPN(body, {f"layer{k}": str(k - 1) for k in range(1, 5)}, [width * 2 ** k for k in range(4)],
                           spec.fpn_channels, extra_blocks=LastLevelMaxPool(),
                           norm_layer=group_norm if spec.group_norm else None)


class TimmFPN(nn.Module):
    """A timm CNN's levels at strides 4-32 under torchvision's FPN (what ``BackboneWithFPN`` does for a
    ResNet). Pretrained (``frozen_bn``): frozen BatchNorm and the layers up to stride 4 frozen."""

    def __init__(self, spec: StudentSpec) -> None:
        super().__init__()
        self.body = TimmFeatures(spec.arch, None, stages=5, frozen_bn=spec.frozen_bn)
        if self.body.strides[-4:] != [4, 8, 16, 32]:
            raise ValueError(f"{spec.arch}: the student needs feature levels at strides 4, 8, 16, 32, "
                             f"got {self.body.strides}")
        if spec.frozen_bn:
            for p in parameters_through(self.body.net, 4):
                p.requires_grad_(False)
        self.fpn = FeaturePyramidNetwork(self.body.channels[-4:], spec.fpn_channels, extra_blocks=LastLevelMaxPool(),
                                         norm_layer=group_norm if spec.group_norm else None)
        self.out_channels = spec.fpn_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        levels = self.body(x)[-4:]
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(levels)))


def _backbone(spec: StudentSpec) -> tuple[nn.Module, AnchorGenerator]:
    s = anchor_scale(spec.min_size)
    sizes = [max(4, round(a * s)) for a in (32, 64, 128, 256, 512)]
    ratios = (0.5, 1.0, 2.0)
    if spec.arch.startswith(TIMM_PREFIX):
        return TimmFPN(spec), AnchorGenerator(tuple((a,) for a in sizes), (ratios,) * len(sizes))
    family, name = ARCHES[spec.arch]
    if family == "resnet":
        backbone: nn.Module = _resnet_fpn(spec, name)
        anchors = AnchorGenerator(tuple((a,) for a in sizes), (ratios,) * len(sizes))
    else:
        norm = FrozenBatchNorm2d if spec.frozen_bn else (group_norm if spec.group_norm else nn.BatchNorm2d)
        backbone = mobilenet_backbone(backbone_name=name, weights=None, fpn=True, norm_layer=norm,
                                      trainable_layers=3 if spec.frozen_bn else 6)
        # two feature maps + the max-pool level, each with all sizes (torchvision's mobilenet recipe)
        anchors = AnchorGenerator((tuple(sizes),) * 3, (ratios,) * 3)
    return backbone, anchors


def _zero_init_residuals(body: nn.Module) -> None:
    """Start each residual branch at zero (its last BN's scale): a ResNet trained from scratch then begins
    as a shallow network, instead of one whose activations double with every block and whose loss goes NaN
    within a few steps (figures: bench/NOTES.md, "student: zero-initialised residual branches")."""
    for m in body.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


def build_student(spec: StudentSpec, backbone_state: Any | None = None, *, source: str = "--weights",
                  loss_weights: ProjectionLossWeights | None = None) -> tuple[MaskRCNN, MatchReport | None]:
    """A Mask R-CNN for ``spec`` (``num_classes + 1`` outputs: label 0 is background).

    ``backbone_state`` (a raw checkpoint of the torchvision classifier, any layout) is matched onto the
    backbone body; returns the model and how the weights matched (``None`` without weights).
    """
    backbone, anchors = _backbone(spec)
    report = None
    if backbone_state is not None and isinstance(backbone, TimmFPN):
        report = load_into(backbone.body.net, backbone_state, source, strict=source == PACKAGED_NAME)
    elif backbone_state is not None:
        state, report = match_state_dict(backbone_state, backbone.body, source=source)
        backbone.body.load_state_dict(state, strict=False)
    c = spec.mask_head_channels
    # torchvision's own heads (TwoMLPHead + FastRCNNPredictor, MaskRCNNHeads + MaskRCNNPredictor), passed in
    # only so that their widths and norm can be chosen; num_classes must then be left to the predictors
    f, d, p = backbone.out_channels, spec.box_head_dim, spec.proposals
    model = MaskRCNN(backbone, num_classes=None, min_size=spec.min_size, max_size=spec.max_size,
                     rpn_anchor_generator=anchors, box_batch_size_per_image=spec.rois_per_image,
                     rpn_pre_nms_top_n_train=2 * p, rpn_post_nms_top_n_train=2 * p,
                     rpn_pre_nms_top_n_test=p, rpn_post_nms_top_n_test=p,
                     box_head=TwoMLPHead(f * 7 * 7, d), box_predictor=FastRCNNPredictor(d, spec.num_classes + 1),
                     mask_head=MaskRCNNHeads(f, [c] * 4, 1, norm_layer=group_norm if spec.group_norm else None),
                     mask_predictor=MaskRCNNPredictor(c, c, spec.num_classes + 1))
    heads = model.roi_heads
    student_heads = StudentRoIHeads(
        heads.box_roi_pool, heads.box_head, heads.box_predictor,
        heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold,
        heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction,
        heads.box_coder.weights, heads.score_thresh, heads.nms_thresh, heads.detections_per_img,
        mask_roi_pool=heads.mask_roi_pool, mask_head=heads.mask_head, mask_predictor=heads.mask_predictor)
    if spec.mask_loss == "projection":
        student_heads.coarse_loss = ProjectionMaskLoss(loss_weights)
    model.roi_heads = student_heads
    return model, report


def set_loss_step(model: nn.Module, step: int) -> None:
    """Tell the coarse mask loss (if any) the current iteration, for its warm-up."""
    heads = getattr(model, "roi_heads", None)
    if isinstance(heads, StudentRoIHeads) and heads.coarse_loss is not None:
        heads.coarse_loss.step = step
