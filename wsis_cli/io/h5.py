"""HDF5 stores of per-image arrays (CAMs, IRNet fields, Free Mask embeddings): :class:`H5Writer` here,
:class:`H5Reader` in :mod:`wsis_cli.io.h5_reader`, the layout and why in :mod:`wsis_cli.io.h5_format`.

Both classes and the format helpers are importable from this module, the one name stages use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsis_cli import __version__
from wsis_cli.io.atomic import check_output_path, finalize, partial_name
from wsis_cli.io.fingerprint import check_unchanged, fingerprints
from wsis_cli.io.h5_format import (
    CHUNK_BYTES,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGES,
    INCOMPLETE,
    LIBVER,
    attr_value,
    cast_for_storage,
    chunk_shape,
    image_key,
    is_h5_file,
    py_value,
)
from wsis_cli.io.h5_reader import H5Reader
from wsis_cli.io.provenance import MERGE_IGNORED, RESUME_IGNORED, diff_settings, to_jsonable
from wsis_cli.runtime.errors import BadInputError
from wsis_cli.runtime.log import get_logger

__all__ = ["CHUNK_BYTES", "MERGE_IGNORED", "RESUME_IGNORED", "H5Reader", "H5Writer", "chunk_shape", "diff_settings",
           "is_h5_file", "to_jsonable"]

log = get_logger("h5")


class H5Writer:
    """Write one stage's per-image arrays, resumably and atomically.

    Use as a context manager. Data goes to ``<path>.partial``; a clean exit marks the store complete and
    renames it onto ``path``; an exception (or a kill) leaves the partial for ``resume=True``. Each image
    is written completely or not at all, and flushed to disk before :meth:`put` returns.

    >>> with H5Writer("cams.h5", "cam", settings, {"labels": "train.json"}, resume=True) as w:
    ...     for image_id in ids:
    ...         if w.has(image_id):
    ...             continue  # done before the interruption
    ...         w.put(image_id, {"cam": cams}, attrs={"height": h, "width": w},
    ...               dataset_attrs={"cam": {"stride": 4, "category_ids": cats}},
    ...               dtypes={"cam": np.float16})

    ``settings`` (a dict or a settings dataclass) and ``inputs`` are stored as JSON. With ``resume``, an
    existing partial is reused only if it was written by the same stage with the same settings and
    inputs (keys in ``resume_ignore`` may differ); otherwise :class:`BadInputError`. Without ``resume``
    an existing partial is replaced. ``compression`` is ``"gzip"`` (portable; level ``compression_opts``),
    ``"lzf"`` (faster, h5py only) or ``None``. gzip-4 halves a smooth float16 CAM at ~16 ms per image
    (2 CPU cores); a stage whose compute is faster than that (GPU inference) may pick lzf (figures:
    bench/NOTES.md, "HDF5 store: compression").
    """

    def __init__(self, path: str | os.PathLike, stage: str, settings: Any, inputs: Mapping[str, Any] | None = None,
                 *, resume: bool = False, compression: str = "gzip", compression_opts: int | None = 4,
                 resume_ignore: Iterable[str] = RESUME_IGNORED, keep_partial: bool = True) -> None:
        self.path = Path(path)
        self.partial = partial_name(self.path)
        self.stage = stage
        self.settings = to_jsonable(settings if settings is not None else {})
        if not isinstance(self.settings, dict):
            raise TypeError("settings must be a mapping or a settings dataclass")
        self.inputs = to_jsonable(dict(inputs or {}))
        self.resume = resume
        self.compression = compression
        self.compression_opts = compression_opts if compression == "gzip" else None
        self.resume_ignore = frozenset(resume_ignore)
        self.keep_partial = keep_partial
        self._file: h5py.File | None = None
        self._done: set[int] = set()
        self.resumed = 0  # images found in the partial when resuming

    # --- lifecycle

    def __enter__(self) -> H5Writer:
        self.open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        """Create the partial file, or reopen it with ``resume`` (validating stage and settings)."""
        check_output_path(self.path)
        if self.resume and self.partial.exists():
            f = self._reopen()
            if f is not None:
                self._file = f
                return
        elif self.resume:
            log.info("%s: nothing to resume, starting from scratch", self.partial)
        self.partial.unlink(missing_ok=True)
        f = h5py.File(self.partial, "w", libver=LIBVER)
        f.attrs["wsis_format"] = FORMAT_NAME
        f.attrs["wsis_format_version"] = FORMAT_VERSION
        f.attrs["wsis_version"] = __version__
        f.attrs["stage"] = self.stage
        f.attrs["settings"] = json.dumps(self.settings, sort_keys=True)
        f.attrs["inputs"] = json.dumps(self.inputs, sort_keys=True)
        if self.keep_partial:  # a store that can be resumed: what --resume checks its inputs against
            f.attrs["input_fingerprints"] = json.dumps(self._fingerprints(), sort_keys=True)
        f.attrs["complete"] = False
        f.create_group(IMAGES)
        f.create_group(INCOMPLETE)
        f.flush()
        self._file = f

    def _reopen(self) -> h5py.File | None:
        name = str(self.partial)
        try:
            f = h5py.File(self.partial, "r+", libver=LIBVER)
        except OSError as e:
            log.warning("%s: cannot reopen the interrupted output (%s); starting from scratch", name, e)
            return None
        try:
            if f.attrs.get("wsis_format") != FORMAT_NAME or IMAGES not in f:
                log.warning("%s: not a usable wsis partial output; starting from scratch", name)
                f.close()
                return None
            stage = py_value(f.attrs.get("stage"))
            if stage != self.stage:
                raise BadInputError(name, None, f"written by stage '{stage}', expected '{self.stage}'; "
                                    "delete it or run without --resume")
            old = json.loads(py_value(f.attrs["settings"]))
            diffs = diff_settings(old, self.settings, self.resume_ignore)
            if diffs:
                raise BadInputError(name, None, "--resume needs the same settings as the interrupted run, "
                                    f"but {'; '.join(diffs)} (file vs now); rerun with the same settings "
                                    "or without --resume to start over")
            old_inputs = json.loads(py_value(f.attrs["inputs"]))
            diffs = diff_settings(old_inputs, self.inputs)
            if diffs:
                raise BadInputError(name, None, f"--resume needs the same inputs, but {'; '.join(diffs)} "
                                    "(file vs now)")
            if "input_fingerprints" in f.attrs:  # older partials have none: nothing to compare
                check_unchanged(json.loads(py_value(f.attrs["input_fingerprints"])), self._fingerprints(), name)
            if py_value(f.attrs.get("wsis_version")) != __version__:
                log.warning("%s: written by wsis %s, resuming with %s", name, py_value(f.attrs.get("wsis_version")),
                            __version__)
            stray = f.require_group(INCOMPLETE)
            for k in list(stray.keys()):  # images whose writing was interrupted: redo them
                del stray[k]
            self._done = {int(k) for k in f[IMAGES]}
        except BaseException:
            f.close()
            raise
        self.resumed = len(self._done)
        log.info("%s: resuming, %d images already written", name, self.resumed)
        return f

    def _fingerprints(self) -> dict[str, dict[str, Any]]:
        """Fingerprints of the inputs named by a path to a regular file (as the JSON-output stages keep:
        content for JSON and checkpoints, size and modification time for HDF5 stores)."""
        paths = {k: v for k, v in self.inputs.items() if isinstance(v, str) and v not in ("", "-")}
        return fingerprints(paths)

    def close(self) -> None:
        """Mark the store complete, close it and atomically rename the partial onto ``path``."""
        if self._file is None:
            return
        f, self._file = self._file, None
        try:
            if INCOMPLETE in f:
                del f[INCOMPLETE]
            f.attrs["complete"] = True
        finally:
            f.close()
        finalize(self.partial, self.path)

    def abort(self) -> None:
        """Close without finishing: the partial stays for a later ``resume`` (deleted if not
        ``keep_partial``, for outputs that are cheap to redo such as merges)."""
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.flush()
            finally:
                f.close()
        if not self.keep_partial:
            self.partial.unlink(missing_ok=True)

    # --- content

    @property
    def done_ids(self) -> set[int]:
        """Ids already in the store (from a resumed partial or written by this writer)."""
        return set(self._done)

    def has(self, image_id: int) -> bool:
        return int(image_key(image_id)) in self._done

    __contains__ = has

    def __len__(self) -> int:
        return len(self._done)

    def put(self, image_id: int, arrays: Mapping[str, Any], *, attrs: Mapping[str, Any] | None = None,
            dataset_attrs: Mapping[str, Mapping[str, Any]] | None = None,
            dtypes: Mapping[str, Any] | None = None) -> None:
        """Write one image's arrays (and attributes) as a group, all or nothing.

        ``dtypes`` casts named arrays for storage (e.g. ``{"cam": np.float16}``); a cast that would
        overflow raises ``ValueError``. Writing an id twice raises ``ValueError``.
        """
        f = self._require_open()
        key = image_key(image_id)
        if int(key) in self._done:
            raise ValueError(f"{self.partial}: image {key} is already written")
        extra = set(dataset_attrs or {}) - set(arrays)
        if extra:
            raise ValueError(f"dataset_attrs for unknown arrays {sorted(extra)}")
        tmp = f"{INCOMPLETE}/{key}"
        if tmp in f:
            del f[tmp]
        group = f.create_group(tmp)
        try:
            for name, value in arrays.items():
                if not name or "/" in name:
                    raise ValueError(f"bad dataset name {name!r}")
                arr = np.asarray(value)
                if dtypes and name in dtypes:
                    arr = cast_for_storage(arr, dtypes[name], name)
                ds = group.create_dataset(name, data=arr, **self._storage(arr))
                for k, v in (dataset_attrs or {}).get(name, {}).items():
                    ds.attrs[k] = attr_value(k, v)
            for k, v in (attrs or {}).items():
                group.attrs[k] = attr_value(k, v)
            f.move(tmp, f"{IMAGES}/{key}")
        except BaseException:
            if tmp in f:
                del f[tmp]
            raise
        self._done.add(int(key))
        # Metadata on disk after every image: a killed run loses at most the image in flight
        # (measured ~0.3 ms per flush, small next to computing an image's maps).
        f.flush()

    def copy_from(self, reader: H5Reader, image_id: int) -> None:
        """Copy one image group verbatim (compressed chunks are not re-encoded) from another store."""
        f = self._require_open()
        key = image_key(image_id)
        if int(key) in self._done:
            raise ValueError(f"{self.partial}: image {key} is already written")
        tmp = f"{INCOMPLETE}/{key}"
        try:
            f.copy(reader._group(image_id), tmp)
            f.move(tmp, f"{IMAGES}/{key}")
        except BaseException:
            if tmp in f:
                del f[tmp]
            raise
        self._done.add(int(key))

    def _storage(self, arr: np.ndarray) -> dict[str, Any]:
        if arr.ndim == 0 or arr.size == 0:
            return {}  # scalars and empty arrays cannot be chunked
        opts: dict[str, Any] = {"chunks": chunk_shape(arr.shape, arr.itemsize)}
        if self.compression:
            opts["compression"] = self.compression
            if self.compression_opts is not None:
                opts["compression_opts"] = self.compression_opts
            # Byte shuffling groups exponent bytes of floats together: much better gzip ratios.
            opts["shuffle"] = arr.itemsize > 1
        return opts

    def _require_open(self) -> h5py.File:
        if self._file is None:
            raise RuntimeError(f"{self.partial}: writer is not open (use it as a context manager)")
        return self._file


# -------------------------------------------------------------------------------------------- reader
