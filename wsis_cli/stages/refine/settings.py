"""Settings of ``wsis refine-crf``: what shapes the refined masks or maps, and where a run reads and writes.

Imports nothing heavy at module level (no torch or NumPy). A test checks that every ``wsis refine-crf`` flag
defaults to the field it fills.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsis_kernels.crf import CRFParams

GUARDS = ("contrast", "none")


@dataclass(frozen=True)
class RefineSettings:
    """Settings of ``wsis refine-crf`` that shape the result (one field per flag).

    The CRF fields default to ``wsis_kernels.crf.REFINE_CRF`` (spelled out here: no torch at import).
    """

    margin: float = 0.25  # crop = box expanded by this fraction of its side on every side ...
    min_margin: int = 8  # ... and by at least this many pixels
    confidence: float = 0.7  # unary probability that the input mask is right, per pixel
    threshold: float = 0.5  # refined foreground probability that becomes mask
    # 5x5 taps spaced 2 px: on degraded synthetic masks as good as 7x7 dense (better on eroded, slightly
    # worse on jagged) for half the taps (figures: bench/NOTES.md, "refine-crf window")
    kernel_size: int = 5
    dilation: int = 2
    iterations: int = 10
    w_appearance: float = 1.0
    theta_alpha: float = 6.0
    theta_beta: float = 0.06  # colour std on [0, 1] intensities
    w_smooth: float = 0.5
    theta_gamma: float = 1.5
    bucket: int = 16  # crop sides rounded up to a multiple of this (batching); 1 disables
    # keep the input mask unless the image supports the CRF's change (stage.guard_accepts): "contrast"
    # accepts a refined mask whose boundary lies on image edges guard_gain + guard_slope * (1 - IoU) times
    # as strong as the input's and that still overlaps the input by guard_iou; "none" always takes the CRF's
    # mask. The slope asks more evidence of bigger changes: on real nuclei the CRF's large moves of
    # mal-label masks were mostly losses, while boxes need large moves (bench/NOTES.md, "refine-crf guard")
    guard: str = "contrast"
    guard_iou: float = 0.5
    guard_gain: float = 1.1
    guard_slope: float = 1.0

    def __post_init__(self) -> None:
        if self.guard not in GUARDS:
            raise ValueError(f"guard must be one of {', '.join(GUARDS)}, got {self.guard!r}")
        if not 0 <= self.guard_iou <= 1:
            raise ValueError(f"guard IoU must be in [0, 1], got {self.guard_iou}")
        if self.guard_gain <= 0:
            raise ValueError(f"guard gain must be > 0, got {self.guard_gain}")
        if self.guard_slope < 0:
            raise ValueError(f"guard slope must be >= 0, got {self.guard_slope}")
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0.5, 1), got {self.confidence}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.margin < 0 or self.min_margin < 0 or self.bucket < 1:
            raise ValueError("margin, min-margin must be >= 0 and bucket >= 1")
        self.crf_params()  # validates the CRF fields

    def crf_params(self) -> CRFParams:
        from wsis_kernels.crf import CRFParams  # torch: only when a CRF is built or checked

        return CRFParams(
            kernel_size=self.kernel_size, dilation=self.dilation, iterations=self.iterations,
            w_appearance=self.w_appearance, theta_alpha=self.theta_alpha, theta_beta=self.theta_beta,
            w_smooth=self.w_smooth, theta_gamma=self.theta_gamma,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MapSettings(RefineSettings):
    """Settings of ``wsis refine-crf MAPS.h5``: the CRF's, and the constant background score put in front
    of the class maps (a pixel is background unless some class scores above it)."""

    bg_score: float = 0.15

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.bg_score < 1.0:
            raise ValueError(f"bg-score must be in (0, 1), got {self.bg_score}")


@dataclass
class RefineStats:
    instances: int = 0
    refined: int = 0
    kept_empty: int = 0  # refinement emptied the mask: the input mask was kept
    kept_guard: int = 0  # the guard found no image evidence for the CRF's change: the input mask was kept
    skipped: int = 0  # no segmentation or an empty input mask: passed through unchanged


@dataclass
class MapStats:
    images: int = 0  # images of this shard in the output (resumed ones included)


@dataclass(frozen=True)
class RefineJob:
    """Where ``run`` reads and writes, and how it executes (does not change the result)."""

    pseudo: str  # input COCO dataset with masks ("-" for stdin)
    images: str | None  # folder the file_names are relative to
    out: str  # output COCO dataset ("-" for stdout)
    device: str = "auto"
    batch_size: int = 16
    shard: str | None = None
    resume: bool = False


@dataclass(frozen=True)
class MapJob:
    """Where a score-map refinement reads and writes (does not change the result)."""

    maps: str  # input HDF5 with a "cams" dataset per image
    images: str | None
    out: str  # output HDF5
    dataset: str | None = None  # COCO file naming the images when the store does not
    device: str = "auto"
    shard: str | None = None
    resume: bool = False
