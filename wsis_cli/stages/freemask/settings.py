"""Settings of ``wsis freemask``: the backbone, Free Mask's knobs, the fine-tuning and pre-training, the job,
and what a run returns.

Imports nothing heavy (no torch or timm): the command line builds and validates these before the network
stack loads. Names are checked by their form here (a torchvision ResNet/ViT, or ``timm:NAME``); whether a
timm name exists is checked by the stage (``timm.is_model`` needs timm). A test checks that every
``wsis freemask`` flag defaults to the field it fills.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from wsis_cli.models.backbone_names import ARCH_HELP, DEFAULT_ARCH, DEFAULT_WEIGHTS, TIMM_PREFIX

STAGE = "freemask"
MAX_TOP_K = 999  # annotation ids are image_id * 1000 + rank: unique across shards without coordination
# the torchvision backbones wsis_cli.models.backbones builds (RESNETS + VITS; a test checks they agree)
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                     "vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14", "vit_tiny", "vit_small")


def check_arch_name(arch: str) -> str:
    """``arch`` if it has the form of a backbone name, else ValueError (timm names are checked later)."""
    if arch in TORCHVISION_ARCHS or (arch.startswith(TIMM_PREFIX) and len(arch) > len(TIMM_PREFIX)):
        return arch
    raise ValueError(f"unknown backbone {arch!r}: choose {ARCH_HELP}")


@dataclass(frozen=True)
class BackboneSpec:
    """Which features Free Mask uses."""

    arch: str = DEFAULT_ARCH
    weights: str = DEFAULT_WEIGHTS  # imagenet (packaged), a hub name, a local checkpoint, or "none"
    stage: int = 4  # stage 1..4 (strides 4..32) whose output are the features (ignored for ViTs)
    last_stride: int = 2  # 2: FreeSOLO's C5 at stride 32; 1: stride 16
    short_side: int = 512  # resize so the short side is this (0: keep the size)
    max_size: int = 1333  # ... and the long side at most this

    def __post_init__(self) -> None:
        check_arch_name(self.arch)
        if not 1 <= self.stage <= 4:
            raise ValueError(f"stage must be 1..4, got {self.stage}")
        if self.last_stride not in (1, 2):
            raise ValueError(f"last stride must be 1 or 2, got {self.last_stride}")
        if self.short_side < 0 or self.max_size < 1:
            raise ValueError("short side must be >= 0 and max size >= 1")


@dataclass(frozen=True)
class FreeMaskParams:
    """The algorithm's knobs; defaults are FreeSOLO's."""

    scales: tuple[float, ...] = (1.0, 0.5, 0.25)  # query pyramid
    threshold: float = 0.5  # soft-mask value that becomes mask (feature resolution)
    min_area: int = 1  # keep masks with more than this many feature pixels
    sigma: float = 2.0  # Gaussian matrix NMS, decay exp(-sigma * iou**2)
    top_k: int = 20
    mask_threshold: float = 0.5  # on the soft masks upsampled to the image
    min_score: float | None = 0.7  # decayed maskness filter (None: off)
    min_center_y: float | None = 0.2  # drop masks whose centre lies in the top fraction of the image
    max_width: float | None = 0.95  # drop masks at least this fraction of the image wide
    embed_dim: int = 128  # query embedding length (channel-interpolated)
    pre_nms: int = 100  # first prefix of the maskness ranking materialised for NMS (grown as needed)
    # each kept mask split into its connected components (NMS-deduplicated, at most MAX_TOP_K): query masks are
    # category-level (a query on one nucleus lights up every nucleus), so one mask can hold many instances
    split: bool = True

    def __post_init__(self) -> None:
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be in (0, 1], got {self.scales}")
        if not 0 < self.threshold < 1 or not 0 < self.mask_threshold < 1:
            raise ValueError("thresholds must be in (0, 1)")
        if self.top_k < 1 or self.embed_dim < 1 or self.pre_nms < 1 or self.min_area < 0:
            raise ValueError("top_k, embed_dim and pre_nms must be >= 1 and min_area >= 0")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")


# input pixels per backbone pass of the contrastive trainings (six views of 512 x 680; runtime.passes)
PASS_PIXELS = 2_400_000


@dataclass(frozen=True)
class TuneSettings:
    """How the backbone is fine-tuned (one field per flag)."""

    epochs: int = 10
    lr: float = 0.005  # the report's value (SGD, momentum 0.9)
    tau: float = 0.5
    match_iou: float = 0.5  # a generated mask is a view of the GT instance it overlaps at least this much
    batch_size: int = 8  # images per step (two views each)
    head: int = 0  # projection-head width (0: the loss acts on the backbone features themselves)
    optimizer: str = "sgd"  # sgd (the report's) or adamw (training from scratch)
    seed: int = 0
    pass_pixels: int = PASS_PIXELS  # views per backbone pass, as PretrainSettings.pass_pixels

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.epochs < 0 or self.lr <= 0 or self.tau <= 0 or self.batch_size < 1 or self.head < 0:
            raise ValueError("need epochs >= 0, lr > 0, tau > 0, batch size >= 1 and head >= 0")
        if not 0 < self.match_iou <= 1:
            raise ValueError(f"match IoU must be in (0, 1], got {self.match_iou}")
        if self.pass_pixels < 1:
            raise ValueError(f"pass pixels must be >= 1, got {self.pass_pixels}")


@dataclass(frozen=True)
class PretrainSettings:
    """How the backbone is pre-trained without labels (one field per flag)."""

    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 8  # images per step (two views each)
    tau: float = 0.5
    regions: int = 8  # k-means clusters per image (see region_proposals)
    position_weight: float = 1.0
    # pixel-to-region term; off by default: it lowered Free Mask AP50 on the synthetic quality set (figures:
    # bench/NOTES.md, "Free Mask pre-training: pixel-to-region term")
    pixel_weight: float = 0.0
    region_weight: float = 1.0  # region-to-region term
    warmup: float = 0.1  # fraction of the steps with a linear LR warm-up
    short_side: int = 0  # images resized to this short side for pre-training (0: as Free Mask reads them)
    seed: int = 0
    # the views of a step run through the backbone in passes of at most this many input pixels, with the
    # loss's gradient cached between them (runtime.passes): the memory of a few views, not of the batch.
    # BatchNorm statistics are per pass; the demo's 16 views of 128² fit one pass
    pass_pixels: int = PASS_PIXELS

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.lr <= 0 or self.tau <= 0 or self.batch_size < 1 or self.regions < 1:
            raise ValueError("need epochs >= 0, lr > 0, tau > 0, batch size >= 1 and regions >= 1")
        if self.pixel_weight < 0 or self.region_weight < 0 or self.pixel_weight + self.region_weight <= 0:
            raise ValueError("loss weights must be >= 0 and not both 0")
        if self.short_side < 0:
            raise ValueError(f"short side must be >= 0, got {self.short_side}")
        if self.pass_pixels < 1:
            raise ValueError(f"pass pixels must be >= 1, got {self.pass_pixels}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def train_spec(self, spec: BackboneSpec) -> BackboneSpec:
        """``spec`` with the pre-training input size (cheaper than Free Mask's when ``short_side`` is set)."""
        return spec if self.short_side == 0 else replace(spec, short_side=self.short_side)


@dataclass(frozen=True)
class FreeMaskSettings:
    """Everything that shapes the output of ``wsis freemask`` (one field per flag)."""

    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    params: FreeMaskParams = field(default_factory=FreeMaskParams)
    tune: TuneSettings = field(default_factory=TuneSettings)
    pretrain: PretrainSettings | None = None  # self-supervised pre-training on the inputs first (--pretrain)
    category: str = "object"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.params.top_k > MAX_TOP_K:
            raise ValueError(f"top-k must be at most {MAX_TOP_K}, got {self.params.top_k}")
        if not self.category.strip():
            raise ValueError("category name must not be empty")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FreeMaskJob:
    """Where ``run`` reads and writes and how it executes (does not change the result)."""

    inputs: str  # a folder of images, or a COCO file listing images (with ``images``)
    out: str  # COCO dataset ("-" for stdout)
    images: str | None = None
    labeled: str | None = None  # COCO dataset with masks for a few images
    embeddings: str | None = None  # HDF5 sidecar
    run: str | None = None  # run folder of the fine-tuning (default beside the output)
    checkpoint: str | None = None  # a fine-tuned backbone (model.pt of a freemask run): no training
    device: str = "auto"
    batch_size: int = 8
    workers: int = 0
    shard: str | None = None
    resume: bool = False
    amp: bool = True


@dataclass(frozen=True)
class FreeMaskSummary:
    """What :func:`~wsis_cli.stages.freemask.stage.run` wrote."""

    output: str  # the COCO dataset ("-": stdout)
    images: int  # images of this shard
    masks: int  # annotations written
    embeddings: str | None = None  # the HDF5 sidecar, when asked for
    run_dir: str | None = None  # the run folder of --pretrain / --labeled training (None: nothing trained)
    seconds: float = 0.0
