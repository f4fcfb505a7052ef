"""Settings of ``wsis demo``: which paths run on what synthetic set (:class:`DemoSettings`), where
(:class:`DemoJob`), and what came out (:class:`DemoSummary`).

Imports nothing heavy (no torch): ``wsis demo --help`` reads the defaults from here. A test checks that every
``wsis demo`` flag defaults to the field it fills.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsis_cli.stages.evaluate.stage import EvalReport


@dataclass(frozen=True)
class DemoSettings:
    """Settings of ``wsis demo`` (one field per flag)."""

    num_images: int = 24  # sized so every path runs in minutes on a 2-core laptop
    height: int = 128
    width: int = 128
    classes: int = 3
    seed: int = 0
    refine: bool = True  # also score each path after refine-crf
    students: bool = True  # train a student on each path's labels and on the ground truth
    student_epochs: int | None = None  # None: student.demo.DEMO_EPOCHS (FULL_EPOCHS_FACTOR times that with full)
    student_mask_loss: str = "standard"
    methods: tuple[str, ...] = ()  # only these methods (by key); empty: all
    full: bool = False  # the bigger, longer set-up (wsis demo --full)
    student_jobs: int = 2  # students trained side by side, one CPU thread each (1: one after another)

    @classmethod
    def make(cls, *, num_images: int | None = None, size: tuple[int, int] | None = None, full: bool = False,
             **rest: object) -> DemoSettings:
        """Settings whose image count and size, when ``None``, are the default set's (or ``--full``'s)."""
        base = cls()
        if num_images is None:
            num_images = FULL_IMAGES if full else base.num_images
        height, width = size if size is not None else (FULL_SIZE if full else (base.height, base.width))
        return cls(num_images=num_images, height=height, width=width, full=full, **rest)  # type: ignore[arg-type]


# ``wsis demo --full``: more and larger images (the CLI's defaults then) and students trained longer
FULL_IMAGES, FULL_SIZE, FULL_EPOCHS_FACTOR = 64, (192, 192), 3


@dataclass(frozen=True)
class DemoRow:
    method: str
    supervision: str
    output: Path  # the labels or the student's predictions (COCO JSON)
    report: EvalReport
    class_agnostic: bool = False


@dataclass(frozen=True)
class DemoJob:
    """Where ``run`` writes: the data (``data/``), every output, the run folders and ``report.json``."""

    out_dir: str | os.PathLike[str]


@dataclass
class DemoSummary:
    """What :func:`run` scored: one row per result, in order, and the phases' seconds (``report.json``'s)."""

    rows: list[DemoRow]
    out_dir: Path
    timing: dict[str, object] = field(default_factory=dict)
