"""Settings of ``wsis mal-label``: the network spec, the optimisation config, the stage settings and job.

This module imports nothing heavy (no torch, NumPy or OpenCV), so the command line validates every flag
— names, ranges, and the crop size against the encoder's stride — in a fraction of a second, before
the network stack is loaded. :mod:`wsis_cli.stages.mal.train` and :mod:`wsis_cli.stages.mal.stage`
re-export these classes.

``ModelSpec`` and ``MalTrainConfig`` hold the only copy of the defaults; ``MalSettings`` takes its own
from them and a test checks that the CLI mirrors them. The defaults are a recipe for the data sets wsis
users bring (tens of images, hundreds to thousands of boxes, a laptop CPU): small RoI crops (96², or 48² for
tiny boxes) through the early, stride-8 or stride-4 levels of the packaged ImageNet EfficientNet-Lite0, a learning rate and loss warm-ups
sized for hundreds of steps. MAL's own values (a ViT-B on 512² crops, warm-ups of thousands of steps,
for 8 GPUs and COCO) are kept as data in :data:`UPSTREAM` (``upstream-implementations.md`` §2.2);
what each recipe gives on real and synthetic images is in the README ("Real images").
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from wsis_cli.models.backbone_names import DEFAULT_ARCH, DEFAULT_WEIGHTS, TIMM_PREFIX

# the encoders build_model knows; the ViT patch size is the number ending the name (vit_tiny/vit_small: 16)
VIT_ENCODERS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14", "vit_tiny", "vit_small")
RESNET_ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
ENCODERS = VIT_ENCODERS + RESNET_ENCODERS
# output stride of a ResNet kept to 1..4 stages (last stage at stride 16 without dilation, IRNet's strides)
RESNET_STRIDES = (4, 8, 16, 16)
CRF_VARIANTS = ("mal", "dense")
# auto epochs: the recipe is sized for ~600 steps (6 epochs of 12 nuclei images, 24 of the demo's 24
# small images); a set of thousands of boxes gets fewer epochs instead of hours on a CPU
AUTO_STEPS = 600
MAX_AUTO_EPOCHS = 24
MIN_GRID = 12  # auto encoder depth: the fewest feature cells a side a CNN stage may leave on the crop
# auto crop size: 96² (stride-8 features on a 12x12 grid), or 48² (stride 4) where 96² would magnify the
# median training box more than MAX_MAGNIFICATION times; measured on both real sets and two synthetic ones,
# 96² won wherever the median box side was 26 px or more and lost on nuclei (20 px), mostly on the small
# ones (bench/NOTES.md, "mal-label crop size")
AUTO_CROPS = (48, 96)
MAX_MAGNIFICATION = 4.0
OUTSIDE_MODES: tuple[str, ...] = ("wrap", "reflect", "replicate")
PREDICT_WITH = ("student", "teacher")


def auto_epochs(steps_per_epoch: int) -> int:
    """Epochs for ``--epochs`` auto: enough for :data:`AUTO_STEPS` optimiser steps (rounded up), 1 to
    :data:`MAX_AUTO_EPOCHS`."""
    return max(1, min(MAX_AUTO_EPOCHS, -(-AUTO_STEPS // max(steps_per_epoch, 1))))


def auto_crop_size(box_sides: Sequence[float]) -> int:
    """``--crop-size`` auto for training boxes of these sides (``sqrt(w * h)``, pixels): the larger of
    :data:`AUTO_CROPS` unless it magnifies the median box more than :data:`MAX_MAGNIFICATION` times."""
    if not box_sides:
        return AUTO_CROPS[0]
    return AUTO_CROPS[1] if AUTO_CROPS[1] <= MAX_MAGNIFICATION * statistics.median(box_sides) else AUTO_CROPS[0]


def vit_patch(encoder: str) -> int:
    """The patch size of a ViT encoder by name (``vit_b_16`` → 16; DeiT-shaped tiny/small: 16)."""
    tail = encoder.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 16


def encoder_stride(encoder: str, depth: int = 0, patch: int = 0, conv_stem: bool = False) -> int:
    """Output stride of the encoder :func:`wsis_cli.stages.mal.train.build_model` builds (pure arithmetic).

    Raises ``ValueError`` for an unknown encoder or options it does not take.
    """
    if encoder in RESNET_ENCODERS or (encoder.startswith(TIMM_PREFIX) and len(encoder) > len(TIMM_PREFIX)):
        # timm CNNs are built at output stride 16 with a ResNet's strides per stage
        if patch or conv_stem:
            raise ValueError("--patch and --conv-stem apply to ViT encoders only")
        if depth > len(RESNET_STRIDES):
            raise ValueError(f"a ResNet has {len(RESNET_STRIDES)} stages, got encoder depth {depth}")
        return RESNET_STRIDES[(depth or len(RESNET_STRIDES)) - 1]
    if encoder not in VIT_ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose from {', '.join(ENCODERS)}")
    stride = patch or vit_patch(encoder)
    if conv_stem and (stride < 2 or stride & (stride - 1)):
        raise ValueError(f"the conv stem halves the resolution per layer: the patch size must be a power of 2, "
                         f"got {stride} (pick one with --patch)")
    return stride


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds the network (saved in ``model.pt`` so ``--checkpoint`` needs no other flag).

    The defaults are the only copy: ``MalSettings`` takes its network defaults from here.
    """

    encoder: str = DEFAULT_ARCH  # installs with its ImageNet weights; MAL's own is vit_b_16 (a download)
    encoder_depth: int = 0  # >0: the first N ViT blocks or CNN stages (MalSettings picks one by crop size)
    crop_size: int = 48  # MalSettings picks 48 or 96 from the boxes (auto_crop_size)
    decoder_dim: int = 32
    scale_buckets: bool = False  # MAL's buckets assume 512² crops; at 48² they would decode on 1-6 cells
    patch: int = 0  # >0: ViT patch size override
    frozen_bn: bool = True  # ResNets: BN frozen (pretrained weights) or trained (from scratch)
    # ViT: MAL's convolutional stem (stride-2 conv3x3 + GN + GELU layers, then a 1x1 conv) instead of the
    # linear patch embedding. Upstream always uses it (and trains it from scratch); off by default here
    # so that torchvision/timm weights keep their patch embedding
    conv_stem: bool = False


@dataclass(frozen=True)
class MalTrainConfig:
    """Optimisation settings (a subset of the stage settings).

    The defaults are the only copy: ``MalSettings`` takes its training defaults from here. They are sized
    for hundreds of steps, not MAL's hundred thousand: warm-ups of tens of steps, a teacher that follows
    within ~20 steps, and a CRF-loss weight that lets colour edges shape the masks early.
    """

    epochs: int | None = None  # None: auto_epochs (about AUTO_STEPS optimiser steps, whatever the set's size)
    batch_size: int = 4
    lr: float | None = 1e-3  # None: 1.5e-6 x global batch (MAL's, for its 100k steps)
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    final_lr: float = 0.2
    mil_weight: float = 4.0
    crf_weight: float = 4.0
    mil_warmup: int = 20
    crf_warmup: int = 60
    ema_momentum: float = 0.95
    crf_iterations: int = 10
    crf_zeta: float = 0.1
    crf_variant: str = "dense"  # the CRF of the CRF loss's target: "mal" or "dense" (see mal_train.crf_params)
    seed: int = 0
    amp: bool = True
    workers: int = 0


_MODEL = ModelSpec()
_TRAIN = MalTrainConfig()


@dataclass(frozen=True)
class MalSettings:
    """Settings of ``wsis mal-label`` that shape the result (one field per flag).

    Network fields default to :class:`ModelSpec`'s and optimisation fields to :class:`MalTrainConfig`'s
    (the small-data recipe); :meth:`model_spec` and :meth:`train_config` hand them back. Construction
    validates every field (``ValueError``), the crop size against the encoder's stride included.
    """

    encoder: str = _MODEL.encoder
    weights: str = DEFAULT_WEIGHTS
    # >0: keep only the first N ViT blocks or CNN stages; None: auto (see resolved_depth)
    encoder_depth: int | None = None
    patch: int = _MODEL.patch  # >0: ViT patch size override (a finer token grid for small crops)
    conv_stem: bool = _MODEL.conv_stem
    crop_size: int | None = None  # None: auto (auto_crop_size of the training boxes; see with_crop_for)
    decoder_dim: int = _MODEL.decoder_dim
    scale_buckets: bool = _MODEL.scale_buckets
    epochs: int = _TRAIN.epochs
    batch_size: int = _TRAIN.batch_size
    lr: float | None = _TRAIN.lr  # None: 1.5e-6 x global batch (upstream)
    weight_decay: float = _TRAIN.weight_decay
    warmup_epochs: float = _TRAIN.warmup_epochs
    final_lr: float = _TRAIN.final_lr
    mil_weight: float = _TRAIN.mil_weight
    crf_weight: float = _TRAIN.crf_weight
    mil_warmup: int = _TRAIN.mil_warmup
    crf_warmup: int = _TRAIN.crf_warmup
    ema_momentum: float = _TRAIN.ema_momentum
    crf_iterations: int = _TRAIN.crf_iterations
    crf_zeta: float = _TRAIN.crf_zeta
    crf_variant: str = _TRAIN.crf_variant
    max_expand: float = 1.2
    outside: str = "wrap"
    min_train_area: float = 64.0  # boxes smaller than this (pixels²) do not train, but are labelled
    # the maps of a few hundred steps are soft at object edges, and human masks include the edge
    threshold: float = 0.4
    # pixels shared by boxes of one image go to one box: a nested box's claim first, else the surest (writeback)
    exclusive: bool = True
    # label each box with the mean map of its crop and the crop's mirror image (upstream's --use_flip_test,
    # off there): on both real sets and the synthetic one it raised mean IoU and mask AP (bench/NOTES.md)
    flip: bool = True
    predict_with: str = "student"
    seed: int = _TRAIN.seed
    amp: bool = _TRAIN.amp

    def __post_init__(self) -> None:
        if self.crop_size is not None and self.crop_size < 32:
            raise ValueError(f"crop size must be at least 32, got {self.crop_size}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.outside not in OUTSIDE_MODES:
            raise ValueError(f"outside must be one of {', '.join(OUTSIDE_MODES)}, got {self.outside!r}")
        if self.predict_with not in PREDICT_WITH:
            raise ValueError(f"predict-with must be student or teacher, got {self.predict_with!r}")
        if self.crf_variant not in CRF_VARIANTS:
            raise ValueError(f"crf variant must be one of {', '.join(CRF_VARIANTS)}, got {self.crf_variant!r}")
        if not 0 <= self.ema_momentum <= 1:
            raise ValueError(f"ema momentum must be in [0, 1], got {self.ema_momentum}")
        depth = self.encoder_depth or 0
        if min(self.max_expand, self.min_train_area, depth, self.patch) < 0 or self.decoder_dim < 1:
            raise ValueError("max-expand, min-train-area, encoder-depth and patch must be >= 0, decoder-dim >= 1")
        for crop in (self.crop_size,) if self.crop_size is not None else AUTO_CROPS:
            stride = encoder_stride(self.encoder, 0 if self.encoder in VIT_ENCODERS else self.resolved_depth(crop),
                                    self.patch, self.conv_stem)
            if crop % stride:
                auto = "" if self.crop_size is not None else " (auto; pick one with --crop-size)"
                raise ValueError(f"crop size {crop}{auto} is not a multiple of the encoder stride {stride} "
                                 f"({self.encoder})")

    def with_crop_for(self, boxes: Sequence[dict[str, Any]]) -> MalSettings:
        """These settings with the crop size resolved for the training ``boxes`` (annotations with
        ``bbox``) when it is auto; unchanged otherwise."""
        if self.crop_size is not None:
            return self
        sides = [max(float(a["bbox"][2]) * float(a["bbox"][3]), 0.0) ** 0.5 for a in boxes]
        return replace(self, crop_size=auto_crop_size(sides))

    def resolved_depth(self, crop: int | None = None) -> int:
        """``encoder_depth``, or when it is None (auto): every block of a ViT, and for a CNN the deepest
        stage whose grid on the crop is at least :data:`MIN_GRID` cells a side (stage 1, stride 4, at 48²
        crops; all four at 512²): the decoder needs cells to draw a boundary with, and a small RoI crop
        through the deep, stride-16 stages would leave it 3x3. ``crop``: the crop side to resolve it for
        (default: the settings', which must then be set)."""
        if self.encoder_depth is not None:
            return self.encoder_depth
        if self.encoder in VIT_ENCODERS:
            return 0
        crop = crop or self.crop_size
        if crop is None:
            raise ValueError("the crop size is auto: resolve it with with_crop_for(boxes) first")
        fine = [k for k, stride in enumerate(RESNET_STRIDES, 1) if crop // stride >= MIN_GRID]
        return fine[-1] if fine else 1

    def model_spec(self) -> ModelSpec:
        """What builds the network; the crop size must be resolved (:meth:`with_crop_for`)."""
        if self.crop_size is None:
            raise ValueError("the crop size is auto: resolve it with with_crop_for(boxes) first")
        # BN is frozen on pretrained weights (small RoI batches would wreck its statistics) and trained
        # when the encoder learns from scratch
        names = {f.name for f in fields(ModelSpec)} - {"frozen_bn", "encoder_depth"}
        return ModelSpec(**{k: getattr(self, k) for k in names}, encoder_depth=self.resolved_depth(),
                         frozen_bn=self.weights.lower() not in ("", "none", "random", "scratch"))

    def train_config(self, workers: int = 0) -> MalTrainConfig:
        names = {f.name for f in fields(MalTrainConfig)} - {"workers"}
        return MalTrainConfig(**{k: getattr(self, k) for k in names}, workers=workers)


@dataclass(frozen=True)
class MalJob:
    """Where ``run`` reads and writes, and how it executes."""

    boxes: str  # COCO dataset with boxes ("-" for stdin)
    images: str | None
    out: str  # "-" for stdout
    run: str | None = None  # run folder (default beside the output)
    checkpoint: str | None = None  # a model.pt: label only
    resume: bool = False
    device: str = "auto"
    workers: int = 0
    shard: str | None = None
    # ``boxes`` already read and checked by wsis_cli.stages.mal.inputs.load_boxes (the command line reads
    # them before torch loads, and stdin cannot be read twice); None: run reads ``boxes`` itself
    boxes_data: Any = field(default=None, compare=False, repr=False)


# MAL's official recipe (``upstream-implementations.md`` §2.2), for a GPU and a COCO-sized data set:
# ``wsis mal-label`` with these flags (the README lists them) reproduces upstream's configuration
UPSTREAM = MalSettings(
    encoder="vit_b_16", weights="DEFAULT", encoder_depth=0, crop_size=512, decoder_dim=256, scale_buckets=True,
    epochs=10, batch_size=4, lr=None, warmup_epochs=1.0, crf_weight=0.5, mil_warmup=1000, crf_warmup=4000,
    ema_momentum=0.996, crf_iterations=100, crf_variant="mal", min_train_area=2048.0, threshold=0.5, flip=False,
)
