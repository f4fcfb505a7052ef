"""Settings of ``wsis synth``: what shapes the dataset, where it goes, and what a run wrote.

Imports nothing heavy (no NumPy or OpenCV): the command line validates these before the generator loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

MIN_SIDE, MAX_SIDE = 16, 8192
MAX_INSTANCES = 64
MAX_CLASSES = 8  # len(shapes.CLASSES); tests/stages/test_stage_synth.py checks they agree


@dataclass(frozen=True)
class SynthSettings:
    """Settings of ``wsis synth``, one field per command-line option.

    ``min_instances`` is a target: an image gets fewer only when no more fit legibly (tiny images with
    many instances). ``force`` only matters to :func:`run` (replace a non-empty ``out_dir``).
    """

    num_images: int = 100
    height: int = 256
    width: int = 256
    classes: int = 3
    min_instances: int = 2
    max_instances: int = 6
    seed: int = 0
    force: bool = False

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {self.num_images}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if not MIN_SIDE <= v <= MAX_SIDE:
                raise ValueError(f"{name} must be within {MIN_SIDE}..{MAX_SIDE}, got {v}")
        if not 1 <= self.classes <= MAX_CLASSES:
            raise ValueError(f"classes must be within 1..{MAX_CLASSES}, got {self.classes}")
        if not 0 <= self.min_instances <= self.max_instances <= MAX_INSTANCES:
            raise ValueError(
                f"need 0 <= min_instances <= max_instances <= {MAX_INSTANCES}, "
                f"got {self.min_instances}..{self.max_instances}"
            )


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`run` wrote."""

    out_dir: str
    num_images: int
    num_instances: int
    per_class: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class SynthJob:
    """Where ``run`` writes: the dataset folder (images/, gt.json, boxes.json, labels.json)."""

    out_dir: str | os.PathLike[str]

