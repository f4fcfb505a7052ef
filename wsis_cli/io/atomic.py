"""Atomic output: write under a temporary name in the target folder, rename when complete.

A crash, a Ctrl-C or a SLURM preemption therefore never leaves a truncated file that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from wsis_cli.runtime.errors import BadInputError


def check_output_path(path: str | os.PathLike, *, is_dir: bool = False) -> Path:
    """Fail early (exit 3) if ``path`` cannot be written: missing parent folder or no permission.

    Called by the CLI before any work starts, so a long run never dies at its very last step.
    """
    p = Path(path)
    parent = p if is_dir and p.exists() else p.parent
    if is_dir and p.exists() and not p.is_dir():
        raise BadInputError(p, None, "output folder exists and is not a folder")
    if not is_dir and p.is_dir():
        raise BadInputError(p, None, "output path is a folder, expected a file")
    if not parent.exists():
        if is_dir and parent.parent.exists():
            parent = parent.parent  # the folder itself will be created
        else:
            raise BadInputError(p, None, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(p, None, f"no permission to write in {parent}")
    return p


def partial_name(path: str | os.PathLike) -> Path:
    """The name an unfinished output lives under (used for resumable outputs such as HDF5)."""
    p = Path(path)
    return p.with_name(p.name + ".partial")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it."""
    target = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def finalize(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Atomically move a finished temporary/partial file onto its final name."""
    _fsync(Path(tmp))
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_write_text(path: str | os.PathLike, encoding: str = "utf-8") -> Iterator:
    """Open a text file for writing that only appears under ``path`` once closed successfully."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding=encoding) as fh:
        yield fh


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        os.fsync(fh.fileno())
