"""The wsis HDF5 store format: layout, constants and value conversions shared by writer and reader.

Layout of one store (one file per stage output)::

    /                     attrs: wsis_format="wsis-h5", wsis_format_version, wsis_version, stage,
                                 settings (JSON), inputs (JSON), complete (bool)
    /images/<image_id>    one group per image; attrs: whatever the writer passes (e.g. height, width)
        <name>            datasets: chunked, gzip + shuffle, dtype chosen by the writer (float16 where
                          precision allows); attrs per dataset (e.g. stride, category ids per channel)
    /_incomplete/<id>     an image being written; moved under /images when all its datasets are in

Why a flat ``/images/<id>`` rather than buckets: the file is created with the HDF5 1.8 format as the
lowest version (``libver=("v108", ...)``), whose groups index their links in a B-tree keyed by name
hash, so lookups stay logarithmic: at 200k images a flat group is as fast as 1000-wide buckets (figures:
bench/NOTES.md, "HDF5 store: flat /images/<id> layout"). Flat keeps merging and reading trivial
(``f["images"]["17"]``). Why not the newer 1.10 format: its superblock records "open for writing", so a
file whose writer was killed (SLURM preemption, SIGKILL) refuses to open again until ``h5clear`` is run;
with 1.8 an interrupted ``.partial`` reopens and ``--resume`` continues from the last image written (the
writer flushes after each image).

Finished stores are immutable, so readers open them plainly read-only (SWMR would need the 1.10 format
and buys nothing: nobody writes a finished store). HDF5's default file locking applies (it is skipped
where a filesystem lacks locks; ``HDF5_USE_FILE_LOCKING=FALSE`` turns it off). Readers are lazy and fork-safe: the file is (re)opened on
first use in each process, so a reader can be handed to DataLoader workers (forked or pickled).

Only the ``h5*`` modules of :mod:`wsis_cli.io` import h5py.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT_NAME = "wsis-h5"
FORMAT_VERSION = 1
IMAGES = "images"
INCOMPLETE = "_incomplete"
LIBVER = ("v108", "latest")
CHUNK_BYTES = 1 << 20  # 1 MiB: one channel of a 512x512 float16 CAM per chunk; negligible per-chunk cost


def is_h5_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is a file with the HDF5 signature (cheap: reads the header only)."""
    p = Path(path)
    return p.is_file() and h5py.is_hdf5(p)


def image_key(image_id: Any) -> str:
    if isinstance(image_id, (bool, np.bool_)) or not isinstance(image_id, (int, np.integer)):
        raise TypeError(f"image id must be an integer, got {image_id!r}")
    return str(int(image_id))


def attr_value(name: str, v: Any) -> Any:
    """Values HDF5 attributes can hold: scalars, strings, and flat lists/arrays of either."""
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, (str, bytes, bool, int, float, np.generic)):
        return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v):
        return np.array(v, dtype=h5py.string_dtype())
    if isinstance(v, (list, tuple, np.ndarray)):
        arr = np.asarray(v)
        if arr.dtype.kind == "U":
            return arr.astype(h5py.string_dtype())
        if arr.dtype.kind in "biuf":
            return arr
    raise TypeError(f"attribute {name!r}: cannot store {type(v).__name__} {v!r} (use numbers, strings or "
                    "lists of them; encode anything else as JSON text)")


def py_value(v: Any) -> Any:
    """Attribute values back as plain Python (lists, ints, floats, str)."""
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray):
        return [py_value(x) for x in v.tolist()] if v.dtype.kind == "O" else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def cast_for_storage(arr: np.ndarray, dtype: Any, name: str) -> np.ndarray:
    """Cast for storage, refusing casts that would silently turn values into inf or wrap integers."""
    dt = np.dtype(dtype)
    if arr.dtype == dt:
        return arr
    if dt.kind == "f" and arr.dtype.kind in "fiu":
        with np.errstate(over="ignore"):
            out = arr.astype(dt)
        finite = np.isfinite(arr)
        if not np.isfinite(out[finite]).all():
            raise ValueError(f"dataset {name!r}: values exceed the range of {dt} (max {np.finfo(dt).max})")
        return out
    if dt.kind in "iu" and arr.size and arr.dtype.kind in "iub":
        info = np.iinfo(dt)
        if arr.min() < info.min or arr.max() > info.max:
            raise ValueError(f"dataset {name!r}: values outside the range of {dt}")
    return arr.astype(dt)


def chunk_shape(shape: tuple[int, ...], itemsize: int, target: int = CHUNK_BYTES) -> tuple[int, ...]:
    """Chunks of about ``target`` bytes that keep trailing axes whole and split leading ones first.

    A (C, H, W) map thus splits by channel, so one class's map is read without decompressing the rest.
    """
    chunk = list(shape)
    for i in range(len(chunk)):
        if math.prod(chunk) * itemsize <= target:
            break
        rest = math.prod(chunk[i + 1 :]) * itemsize
        chunk[i] = max(1, target // rest) if rest <= target else 1
    return tuple(max(1, c) for c in chunk)


# -------------------------------------------------------------------------------------------- writer
