"""Settings as provenance: what a resumable output or a run folder records about how it was made.

``to_jsonable`` turns settings dataclasses into plain JSON; ``diff_settings`` says how two differ, so a
``--resume`` or a ``wsis merge`` of shards made with other settings is refused with the differing keys.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# Settings that do not change what is written for an image: they may differ between a run and its
# --resume. Shards of one output may also differ in their shard and output name (see wsis merge).
RESUME_IGNORED = frozenset({"resume", "workers", "device", "quiet", "verbose"})
MERGE_IGNORED = RESUME_IGNORED | {"shard", "output"}


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values from settings: dataclasses, paths, enums, tuples, sets and NumPy scalars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(to_jsonable(v) for v in obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"setting value {obj!r} of type {type(obj).__name__} cannot be stored as JSON")


def diff_settings(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Top-level keys whose values differ between two settings dicts (``ignore`` skipped), as
    ``"key: A vs B"`` lines; empty when they agree."""
    skip = set(ignore)
    out = []
    for key in sorted((set(a) | set(b)) - skip):
        va, vb = a.get(key, "<unset>"), b.get(key, "<unset>")
        if va != vb:
            out.append(f"{key}: {json.dumps(va)} vs {json.dumps(vb)}")
    return out
