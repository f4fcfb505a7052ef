"""Fingerprints of input files, so that ``--resume`` can refuse an input that changed since the interrupted run.

A fingerprint holds the size and modification time of a file and, for anything that is not an HDF5 store
(COCO JSON, checkpoints), a SHA-256 of its content. Comparing them:

* a hashed input has changed when its content (hash or size) differs; touching it or copying it back
  unchanged is fine, because the output would be the same;
* an HDF5 input (too large to hash on every start) has changed when its size or modification time differs.

Folders (``--images``) and stdin have no fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wsis_cli.runtime.errors import BadInputError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_CHUNK = 1 << 20


def fingerprint(path: str | os.PathLike) -> dict[str, Any] | None:
    """``{"path", "size", "mtime_ns", "sha256"?}`` of a regular file; None for stdin, folders and devices."""
    if str(path) == "-":
        return None
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return None
    if not p.is_file():
        return None
    out: dict[str, Any] = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with open(p, "rb") as fh:
        first = fh.read(len(HDF5_SIGNATURE))
        if first == HDF5_SIGNATURE:
            return out
        h = hashlib.sha256(first)
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    out["sha256"] = h.hexdigest()
    return out


def fingerprints(inputs: Mapping[str, str | os.PathLike | None]) -> dict[str, dict[str, Any]]:
    """Fingerprints of the named inputs that have one."""
    out = {}
    for name, path in inputs.items():
        fp = None if path is None else fingerprint(path)
        if fp is not None:
            out[name] = fp
    return out


def changed(before: Mapping[str, Any], now: Mapping[str, Any] | None) -> str | None:
    """What differs between two fingerprints of one input ("content", "size", ...), or None."""
    if now is None:
        return "is gone"
    if "sha256" in before or "sha256" in now:
        return None if before.get("sha256") == now.get("sha256") else "its content differs"
    if before.get("size") != now.get("size"):
        return "its size differs"
    if before.get("mtime_ns") != now.get("mtime_ns"):
        return "its modification time differs"
    return None


def check_unchanged(recorded: Any, now: Mapping[str, Mapping[str, Any]], source: str | os.PathLike) -> None:
    """Refuse (exit 3, naming the input) when an input recorded in ``source`` changed since.

    ``recorded`` is what an earlier run stored (None for files written before fingerprints existed:
    nothing to compare).
    """
    if not isinstance(recorded, Mapping):
        return
    for name, before in recorded.items():
        if not isinstance(before, Mapping):
            continue
        what = changed(before, now.get(name))
        if what:
            raise BadInputError(before.get("path", name), None, f"changed since the interrupted run ({what}); "
                                f"--resume would mix two inputs in one output: restore it, or rerun "
                                f"without --resume (progress in {source})")
