"""Splitting a set of images into shards: ``--shard I/N``, SLURM arrays, SLURM tasks or torchrun ranks.

Every per-image stage can run as N independent processes, each on a deterministic 1/N of the images;
``wsis merge`` joins their outputs. The shard comes from, in order of precedence:

1. ``--shard I/N`` on the command line;
2. a SLURM job array: ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT`` (task ids need not start at
   0: ``SLURM_ARRAY_TASK_MIN`` and ``SLURM_ARRAY_TASK_STEP`` map ``--array=1-8`` or ``--array=0-28:4``
   onto 0..N-1);
3. SLURM tasks of one step (``srun --ntasks=N``): ``SLURM_PROCID`` / ``SLURM_NTASKS``;
4. torchrun / torch.distributed launchers: ``RANK`` / ``WORLD_SIZE``;
5. otherwise the whole set (``0/1``).

An environment source is used only when both of its variables are present, so a lone ``SLURM_NTASKS``
in an ``salloc`` shell does not count. Nothing heavy is imported here: the CLI layer may use it freely.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from wsis_cli.runtime.errors import UsageError

T = TypeVar("T")

_SPEC = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based). ``source`` says where it came from (for logs only)."""

    index: int = 0
    count: int = 1
    source: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(f"invalid shard {self.index}/{self.count} from {self.source}: "
                             "need 0 <= I < N (I is 0-based)")

    @property
    def is_whole(self) -> bool:
        """True when there is a single shard (no splitting)."""
        return self.count == 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(spec: str, *, source: str = "--shard") -> Shard:
    """Parse ``"I/N"`` (0 <= I < N); anything else raises :class:`UsageError` (exit 2)."""
    m = _SPEC.match(spec or "")
    if not m:
        raise UsageError(f"{source}: expected I/N such as 0/4 (shard I of N, 0-based), got {spec!r}")
    return Shard(int(m.group(1)), int(m.group(2)), source)


def resolve_shard(arg: str | None = None, env: Mapping[str, str] | None = None) -> Shard:
    """The shard this process works on: ``arg`` (the ``--shard`` value) wins, then the environment.

    ``env`` defaults to :data:`os.environ`; pass a dict in tests.
    """
    if arg is not None:
        return parse_shard(arg)
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        return _slurm_array(env)
    for index_var, count_var in (("SLURM_PROCID", "SLURM_NTASKS"), ("RANK", "WORLD_SIZE")):
        if index_var in env and count_var in env:
            source = f"{index_var}/{count_var}"
            return Shard(_env_int(env, index_var), _env_int(env, count_var), source)
    return Shard()


def _slurm_array(env: Mapping[str, str]) -> Shard:
    task = _env_int(env, "SLURM_ARRAY_TASK_ID")
    count = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    first = _env_int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
    step = _env_int(env, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in env else 1
    source = "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT"
    offset = task - first
    # Irregular arrays (--array=1,4,9) cannot be mapped onto 0..N-1 without the full list.
    if step < 1 or offset < 0 or offset % step or offset // step >= count:
        raise UsageError(
            f"cannot derive a shard from SLURM array task {task} (min {first}, step {step}, count {count}); "
            "use a regular array such as --array=0-{N-1} or pass --shard I/N explicitly"
        )
    return Shard(offset // step, count, source)


def _env_int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise UsageError(f"environment variable {name}={env[name]!r} is not an integer") from None


def shard_ids(ids: Iterable[T], shard: Shard) -> list[T]:
    """The ids of ``shard``: the sorted ids, interleaved (``sorted(ids)[index::count]``).

    Sorting makes the split independent of the order the ids arrive in (file listing order, JSON order).
    Interleaving rather than contiguous blocks balances the work: shard sizes differ by at most one, and
    image ids usually follow collection order, so neighbouring ids tend to be similar (same camera, same
    size, same scene density); striding spreads expensive runs of images over all shards instead of
    handing them all to one. Duplicate ids are kept once.
    """
    ordered = sorted(set(ids))
    return ordered[shard.index :: shard.count]


def shard_suffix(shard: Shard) -> str:
    """``".shard-0-of-4"`` for default output names; ``""`` for the whole set."""
    return "" if shard.is_whole else f".shard-{shard.index}-of-{shard.count}"


def with_shard_suffix(path: str | os.PathLike, shard: Shard) -> Path:
    """Insert :func:`shard_suffix` before the extension: ``cams.h5`` → ``cams.shard-0-of-4.h5``."""
    p = Path(path)
    suffix = shard_suffix(shard)
    if not suffix:
        return p
    ext = p.suffix
    stem = p.name[: -len(ext)] if ext else p.name
    return p.with_name(f"{stem}{suffix}{ext}")
