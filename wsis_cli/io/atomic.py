"""Atomic output: write under a temporary name in the target folder, rename when complete.

A crash, a Ctrl-C or a SLURM preemption therefore never leaves a truncated file that looks finished.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from wsis_cli.runtime.errors import BadInputError, DiskFullError


def is_stream(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an existing character device, block device or FIFO (``/dev/null``, a named pipe).

    Such outputs are written in place: renaming a temporary file onto them would replace the device
    with a regular file (as root, ``-o /dev/null`` would break the machine's /dev/null).
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)


def check_output_path(path: str | os.PathLike, *, is_dir: bool = False) -> Path:
    """Fail early (exit 3) if ``path`` cannot be written: missing parent folder or no permission.

    Called by the CLI before any work starts, so a long run never dies at its very last step.
    """
    p = Path(path)
    if not is_dir and is_stream(p):
        if not os.access(p, os.W_OK):
            raise BadInputError(p, None, "no permission to write to it")
        return p
    parent = p if is_dir and p.exists() else p.parent
    if is_dir and p.exists() and not p.is_dir():
        raise BadInputError(p, None, "output folder exists and is not a folder")
    if not is_dir and p.is_dir():
        raise BadInputError(p, None, "output path is a folder, expected a file")
    if not parent.exists():
        # an output folder is created by us, but only one level: its parent must exist
        raise BadInputError(p, None, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(p, None, f"no permission to write in {parent}")
    return p


def check_output_dir(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Fail early (exit 3) unless ``path`` can become a new output folder written as a whole.

    Its parent must exist and be writable (the finished folder is renamed into it), and an existing
    folder must be empty unless ``force`` allows replacing it.
    """
    p = check_output_path(path, is_dir=True)
    parent = p.absolute().parent
    if not parent.is_dir():
        raise BadInputError(p, None, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(p, None, f"no permission to write in {parent}")
    if p.is_dir() and not force and any(p.iterdir()):
        raise BadInputError(p, None, "output folder exists and is not empty (--force replaces it)")
    return p


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, force: bool = False, subdirs: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a new sibling folder ``<path>.partial-XXXX`` (with ``subdirs`` made); on success it
    replaces ``path`` (absent, empty, or anything when ``force``), on error it is deleted."""
    # absolute and normalised, so that "." or "out/.." still name a folder beside which we can work
    target = Path(os.path.abspath(check_output_dir(path, force=force)))
    tmp = _new_sibling(target, "partial", make=True)
    try:
        for sub in subdirs:
            (tmp / sub).mkdir(parents=True)
        yield tmp
        check_output_dir(target, force=force)  # something may have appeared there meanwhile
        if target.exists() or target.is_symlink():
            old = _new_sibling(target, "old", make=False)
            os.replace(target, old)  # rename() cannot replace a non-empty folder: move it aside first
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            old.unlink() if old.is_symlink() else shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _new_sibling(target: Path, tag: str, *, make: bool) -> Path:
    """A fresh name ``<target>.<tag>-XXXXXX`` beside ``target``, made as a folder with ``make``.

    ``os.mkdir`` honours the umask, unlike ``tempfile.mkdtemp`` (0700), so the result stays shareable.
    """
    while True:
        p = target.with_name(f"{target.name}.{tag}-{secrets.token_hex(3)}")
        if not make:
            if not p.exists() and not p.is_symlink():
                return p
            continue
        with contextlib.suppress(FileExistsError):
            p.mkdir()
            return p


def partial_name(path: str | os.PathLike) -> Path:
    """The name an unfinished output lives under (used for resumable outputs such as HDF5)."""
    p = Path(path)
    return p.with_name(p.name + ".partial")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it.

    A device or FIFO (see :func:`is_stream`) is yielded itself and written in place. A full disk is
    reported as :class:`DiskFullError` naming ``path``.
    """
    target = check_output_path(path)
    with naming_disk_full(target):
        if is_stream(target):
            yield target
            return
        with _atomic_tmp(target) as tmp:
            yield tmp


@contextlib.contextmanager
def naming_disk_full(target: str | os.PathLike) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT raised inside the block into :class:`DiskFullError` naming ``target``."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"{target}: cannot write: {os.strerror(e.errno).lower()}") from e
        raise


@contextlib.contextmanager
def _atomic_tmp(target: Path) -> Iterator[Path]:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes 0600 files; give the output the mode a plain open() would (shared clusters)
        os.fchmod(fd, _output_mode(target))
    finally:
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


def _output_mode(target: Path) -> int:
    """The permission bits ``open(target, "w")`` would leave: the existing file's, else 0666 & ~umask."""
    with contextlib.suppress(OSError):
        return target.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def work_dir(keep: str | os.PathLike | None) -> Iterator[Path]:
    """A folder for intermediate files: ``keep`` (created if needed, left in place) or a temporary one
    that is deleted afterwards."""
    if keep is not None:
        p = check_output_path(keep, is_dir=True)
        p.mkdir(exist_ok=True)
        yield p
        return
    tmp = Path(tempfile.mkdtemp(prefix="wsis-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
