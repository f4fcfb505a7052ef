"""Settings of ``wsis merge``: what the merge checks and how it numbers, which shards it joins and where to.

Imports nothing heavy (no h5py or NumPy): the command line builds these before the stage loads. A test
checks that every ``wsis merge`` flag defaults to the field it fills.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MergeSettings:
    """How the shards are checked and joined (``--expect-count N``, ``--renumber``)."""

    expect_count: int | None = None  # the shards together must hold exactly this many images
    renumber: bool = False  # reassign annotation ids 1..N (COCO JSON only)


@dataclass(frozen=True)
class MergeJob:
    """What ``run`` reads and writes: ``SHARD... -o OUT [--expect-images GT]``."""

    shards: tuple[Path, ...]
    output: str  # a path, or "-" for stdout (JSON only)
    expect_images: Path | None = None  # the dataset that was sharded: each of its images must be in a shard


@dataclass(frozen=True)
class MergeSummary:
    kind: str  # "dataset", "results" or "h5"
    shards: int
    images: int  # distinct image ids in the union (results lists: ids with at least one result)
    annotations: int  # annotations or results written (0 for HDF5)
    output: str
    stage: str | None = None  # HDF5 only
