"""Settings of ``wsis train-student`` training, one field per flag.

Imports nothing heavy at module level (no torch); checking the architecture (:meth:`StudentSettings.spec`)
loads the model module. A test checks that every ``wsis train-student`` flag defaults to the field it fills.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from wsis_cli.models.backbone_names import DEFAULT_ARCH, DEFAULT_WEIGHTS

if TYPE_CHECKING:
    from wsis_cli.models.student import StudentSpec

STAGE = "train-student"
OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4}


@dataclass(frozen=True)
class StudentSettings:
    """Settings of ``wsis train-student`` training, one field per flag (see the CLI for their help)."""

    arch: str = DEFAULT_ARCH  # timm:NAME (any CNN with strides 4-32), resnet50-fpn, resnet18-fpn, mobilenet-v3-fpn
    weights: str = DEFAULT_WEIGHTS
    init_weights: str | None = None
    mask_loss: str = "standard"
    min_size: int = 800
    max_size: int = 1333
    epochs: int = 12
    batch_size: int = 4  # global batch per micro-step (split over DDP ranks)
    accumulate: int = 1
    optimizer: str = "sgd"
    lr: float | None = None  # None: 0.01 for SGD, 1e-4 for AdamW
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    clip_grad: float = 10.0  # max gradient norm (0: no clipping)
    rois_per_image: int = 512
    mask_head_channels: int = 256
    group_norm: bool = False
    fpn_channels: int = 256
    box_head_dim: int = 1024
    proposals: int = 1000
    pairwise_warmup: int = 1000
    flip: bool = True
    val: str | None = None
    score_threshold: float = 0.05
    max_dets: int = 100
    rounds: int = 1
    round_score: float = 0.5
    round_max: int = 20
    round_max_width: float = 0.95  # drop self-training labels whose box spans this much of the image width
    seed: int = 0
    amp: bool = True
    workers: int = 2  # loader processes (the CLI's default; the demo and tests pass 0)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.accumulate < 1 or self.rounds < 1:
            raise ValueError("need epochs >= 0, batch size >= 1, accumulate >= 1 and rounds >= 1")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.score_threshold <= 1 or not 0 <= self.round_score <= 1:
            raise ValueError("score thresholds must lie in [0, 1]")
        if not 0 < self.round_max_width <= 1:
            raise ValueError(f"round_max_width must lie in (0, 1], got {self.round_max_width}")
        self.spec(1)  # validates arch, sizes, mask loss

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def resolved(self) -> StudentSettings:
        """A copy with defaults that depend on other settings filled in (what run.json records)."""
        return replace(self, lr=self.base_lr)

    def spec(self, num_classes: int, frozen_bn: bool = False) -> StudentSpec:
        from wsis_cli.models.student import StudentSpec  # torch: only when the network is described

        return StudentSpec(arch=self.arch, num_classes=num_classes, min_size=self.min_size, max_size=self.max_size,
                           frozen_bn=frozen_bn, mask_loss=self.mask_loss, rois_per_image=self.rois_per_image,
                           mask_head_channels=self.mask_head_channels, group_norm=self.group_norm,
                           fpn_channels=self.fpn_channels, box_head_dim=self.box_head_dim, proposals=self.proposals)


@dataclass(frozen=True)
class StudentJob:
    """Where a training ``run`` reads and writes and how it executes (does not change the model)."""

    labels: str  # COCO dataset with masks
    images: str | None
    run: str  # the run folder
    resume: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class PredictJob:
    """Where a prediction (``--checkpoint``) reads and writes and how it executes."""

    source: str  # a COCO dataset, a folder of images, or "-"
    images: str | None
    out: str  # "-" for stdout
    checkpoint: str
    score_threshold: float = 0.05
    max_dets: int = 100
    output_format: str = "results"  # "results" (a COCO results list) or "dataset"
    batch_size: int = 4
    device: str = "auto"
    amp: bool = True

    def __post_init__(self) -> None:
        if self.output_format not in ("results", "dataset"):
            raise ValueError(f"--format: expected results or dataset, got {self.output_format!r}")

