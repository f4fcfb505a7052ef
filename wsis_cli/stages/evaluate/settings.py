"""Settings of ``wsis eval``: what is measured (:class:`EvalSettings`) and which files are compared (:class:`EvalJob`).

Imports nothing heavy (no NumPy or pycocotools): the command line builds these before the stage loads. A
test checks that every ``wsis eval`` flag defaults to the field it fills.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wsis_cli.runtime.errors import UsageError

IouType = Literal["segm", "bbox", "both"]
Backend = Literal["chunked", "pycocotools", "faster"]
BACKENDS = ("chunked", "pycocotools", "faster")


@dataclass(frozen=True)
class EvalSettings:
    """Settings of ``wsis eval`` (one field per flag).

    ``iou_type="both"`` evaluates masks where both sides have them and boxes always; ``max_dets`` is the
    last of COCO's ``maxDets = [1, 10, N]`` (AP and AR@N use N; pseudo-labels often exceed 100 per image).
    ``reference_ap`` is the AP of a fully supervised model, as a fraction (0.42) or in percent (42.0).
    """

    iou_type: IouType = "both"
    class_agnostic: bool = False
    max_dets: int = 100
    reference_ap: float | None = None
    backend: Backend = "chunked"

    def __post_init__(self) -> None:
        if self.iou_type not in ("segm", "bbox", "both"):
            raise UsageError(f"iou_type must be segm, bbox or both, got {self.iou_type!r}")
        if self.backend not in BACKENDS:
            raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.max_dets < 10:
            raise UsageError(f"max_dets must be at least 10 (COCO's maxDets are [1, 10, N]), got {self.max_dets}")
        if self.reference_ap is not None and not 0 < self.reference_ap <= 100:
            raise UsageError(f"reference AP must be in (0, 1] or (1, 100] percent, got {self.reference_ap}")

    @property
    def reference_fraction(self) -> float | None:
        """The reference AP on pycocotools' 0–1 scale (AP never exceeds 1, so a value above 1 is percent)."""
        if self.reference_ap is None:
            return None
        return self.reference_ap / 100.0 if self.reference_ap > 1 else self.reference_ap


@dataclass(frozen=True)
class EvalJob:
    """What ``run`` reads: the ground truth and the predictions (paths, ``-`` for stdin: one of them at
    most); with ``report_dir`` it also draws the ``report_limit`` worst images (from ``images``) there."""

    gt: str
    predictions: str
    report_dir: Path | None = None
    report_limit: int = 50
    images: Path | None = None
