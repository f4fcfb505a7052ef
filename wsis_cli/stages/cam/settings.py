"""Settings of ``wsis cam``: what shapes the maps, how the classifier trains, and where a run reads and writes.

Imports nothing heavy (no torch, NumPy or OpenCV): the command line builds and validates these before the
network stack loads. A test checks that every ``wsis cam`` flag defaults to the field it fills.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from wsis_cli.models.backbone_names import DEFAULT_ARCH, DEFAULT_WEIGHTS, check_cnn_name

STRIDE = 4
METHODS = ("cam", "gradcam")
EPS = 1e-5  # upstream's guard in the per-class max normalisation


@dataclass(frozen=True)
class TrainSettings:
    """How the classifier is trained (one field per ``wsis cam`` training flag)."""

    arch: str = DEFAULT_ARCH  # resnet18..152 or timm:NAME (a CNN)
    weights: str = DEFAULT_WEIGHTS  # imagenet (packaged), a hub name, a checkpoint file, or none
    last_stride: int = 1
    train_early: bool = False  # also train stages 1-2 (upstream freezes them; useful from scratch)
    epochs: int = 5
    batch_size: int = 16  # global batch (split over DDP ranks)
    # backbone; the classifier gets lr * head_lr_mult. Upstream's 0.01 (ResNet-50) makes the default
    # EfficientNet-Lite0 diverge (README, wsis cam)
    lr: float = 0.002
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    resize_long: tuple[int, int] | None = None  # None: (0.64 L, 1.28 L) for the median long side L
    crop: int | None = None  # None: L rounded up to a multiple of 16
    val_fraction: float = 0.1
    val: str | None = None  # a separate validation labels file (replaces the held-out fraction)
    seed: int = 0
    amp: bool = True
    workers: int = 0

    def __post_init__(self) -> None:
        check_cnn_name(self.arch)
        if self.last_stride not in (1, 2):
            raise ValueError(f"last stride must be 1 or 2, got {self.last_stride}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.resize_long is not None and not 0 < self.resize_long[0] <= self.resize_long[1]:
            raise ValueError(f"--resize-long needs 0 < LO <= HI, got {self.resize_long}")
        if self.crop is not None and self.crop < 16:
            raise ValueError(f"--crop must be at least 16, got {self.crop}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr < 0 or not 0 <= self.momentum < 1:
            raise ValueError("need epochs >= 0, batch size >= 1, lr >= 0 and momentum in [0, 1)")


@dataclass(frozen=True)
class CamSettings:
    """What shapes the maps (one field per ``wsis cam`` inference flag) and how the classifier behind them
    trains (``train``; ignored when the job names a ``checkpoint``)."""

    method: str = "cam"
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    gradcam_stage: int = 4  # Grad-CAM target: last stage (4, = CAM up to scale for this net) or stage 3
    train: TrainSettings = field(default_factory=TrainSettings)

    def maps_dict(self) -> dict[str, Any]:
        """The map fields alone: what the HDF5 output records as its settings (training goes to run.json)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "train"}

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not self.scales or any(not (0 < s <= 8) for s in self.scales):
            raise ValueError(f"--scales must be numbers in (0, 8], got {self.scales}")
        if self.gradcam_stage not in (3, 4):
            raise ValueError(f"--gradcam-stage must be 3 or 4, got {self.gradcam_stage}")


@dataclass(frozen=True)
class CamJob:
    """Where ``run`` reads and writes and how it executes (does not change the maps)."""

    labels: str
    images: str | None
    out: str
    run_dir: str | None = None  # default: beside the output (<out>.cam-run)
    checkpoint: str | None = None  # a model.pt: predict only
    resume: bool = False
    device: str = "auto"
    batch_size: int = 8  # images per inference batch (equal-sized images only)
    shard: str | None = None


@dataclass
class CamSummary:
    output: Path
    model: Path
    images: int
    seconds: float
    val_map: float | None = None
    trained: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(self.images, 1)
