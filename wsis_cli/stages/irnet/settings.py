"""Settings of ``wsis irnet``: what shapes the pseudo-labels, where a run reads and writes, what it returns.

Imports nothing heavy (no torch or NumPy): the command line builds and validates these before the network
stack loads. A test checks that every ``wsis irnet`` flag defaults to the field it fills.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from wsis_cli.models.backbone_names import DEFAULT_ARCH

STAGE = "irnet"
FROM_CAM = "cam"  # --weights value meaning "the CAM classifier's backbone" (the default)
IDS_PER_IMAGE = 100_000  # annotation id = image_id * IDS_PER_IMAGE + k: unique across shards


@dataclass(frozen=True)
class IRNetSettings:
    """Settings of ``wsis irnet`` that shape the result (one field per flag)."""

    weights: str = FROM_CAM  # "cam" | torchvision weights name | checkpoint file | "none"
    arch: str = DEFAULT_ARCH  # used unless the backbone comes from the CAM classifier
    scale: int = 1  # images upsampled by this before the backbone (1, 2 or 4): see models.irnet_heads
    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    crf_iterations: int = 10
    basin_threshold: float = 0.0  # > 0: CAM-peak basins split the displacement pairs (irnet_relations.cam_basins)
    train_radius: float = 10.0  # pairs of the training losses, in cells of the branches' grid (the paper's 10)
    epochs: int = 3
    batch_size: int = 32
    crop: int = 512
    edge_lr: float = 0.1
    dp_lr: float = 1.0
    weight_decay: float = 1e-4
    seed: int = 0
    beta: float = 10.0
    walk_steps: int = 256
    walk_radius: float = 5.0
    ins_bg_threshold: float = 0.25
    sem_bg_threshold: float = 0.25
    centroid_threshold: float = 2.5
    centroid_divergence: float = -0.5  # candidates must be sinks of the field; inf: the paper's rule
    separate_instances: bool = True  # the walk does not cross instances; False: upstream's walk
    field_cam_threshold: float = 0.25  # the field is 0 where every CAM is below this (0: upstream)
    peak_split: float = 0.8  # clusters whose CAM has several peaks are split (irnet_instances; 0: upstream)
    refine_steps: int = 300
    fragment_fraction: float = 0.01
    min_score: float = 1e-5
    amp: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.bg_threshold <= self.fg_threshold <= 1:
            raise ValueError(f"need 0 <= bg-threshold <= fg-threshold <= 1, got {self.bg_threshold} and "
                             f"{self.fg_threshold}")
        if self.crop < 16 or self.batch_size < 1 or self.epochs < 0 or self.walk_steps < 0:
            raise ValueError("crop must be >= 16, batch-size >= 1, epochs and walk-steps >= 0")
        if self.scale not in (1, 2, 4):
            raise ValueError(f"scale must be 1, 2 or 4, got {self.scale}")
        if not 1 < self.walk_radius <= 16:
            raise ValueError(f"walk-radius must be in (1, 16], got {self.walk_radius}")
        if not 0 <= self.field_cam_threshold <= 1:
            raise ValueError(f"field-cam-threshold must be in [0, 1], got {self.field_cam_threshold}")
        if not 0 <= self.peak_split < 1:
            raise ValueError(f"peak-split must be in [0, 1), got {self.peak_split}")
        if not 1 < self.train_radius <= 16 or not 0 <= self.basin_threshold < 1:
            raise ValueError(f"train-radius must be in (1, 16] and basin-threshold in [0, 1), got "
                             f"{self.train_radius} and {self.basin_threshold}")
        if self.crf_iterations < 0 or self.refine_steps < 0 or self.beta <= 0:
            raise ValueError("crf-iterations and refine-steps must be >= 0 and beta > 0")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class IRNetJob:
    """Where ``run`` reads and writes, and how it executes (does not change the result)."""

    cams: str
    out: str
    images: str | None = None
    labels: str | None = None  # default: the labels file cams.h5 records
    run: str | None = None  # default: beside the output
    checkpoint: str | None = None
    resume: bool = False
    semantic: str | None = None
    device: str = "auto"
    workers: int = 0
    shard: str | None = None


@dataclass
class IRNetResult:
    images: int
    instances: int
    seconds_train: float
    seconds_infer: float
    dataset: Any  # coco.Dataset
