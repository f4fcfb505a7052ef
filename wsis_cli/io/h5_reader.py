"""Read a finished wsis HDF5 store lazily: :class:`H5Reader` (format in :mod:`wsis_cli.io.h5_format`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsis_cli.io.h5_format import FORMAT_NAME, FORMAT_VERSION, IMAGES, image_key, py_value
from wsis_cli.runtime.errors import BadInputError


class H5Reader:
    """Read a finished store lazily; validated on construction, safe to fork and to pickle.

    ``expect_stage`` rejects a store written by another stage (exit 3 naming the file). Metadata
    (``stage``, ``settings``, ``inputs``, ``version``) is plain Python; arrays come back with their stored
    dtype unless ``dtype`` is given to :meth:`get`.
    """

    def __init__(self, path: str | os.PathLike, expect_stage: str | None = None) -> None:
        self.path = Path(path)
        self.expect_stage = expect_stage
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._ids: list[int] | None = None
        try:
            self._validate()
        except BaseException:
            self.close()
            raise

    def _validate(self) -> None:
        name = str(self.path)
        if not self.path.exists():
            raise BadInputError(name, None, "file not found")
        if not self.path.is_file():
            raise BadInputError(name, None, "not a file")
        if not h5py.is_hdf5(self.path):
            raise BadInputError(name, None, "not an HDF5 file")
        try:
            f = self._handle()
        except OSError as e:
            raise BadInputError(name, None, f"cannot be read as HDF5 (damaged or truncated?): {e}") from None
        attrs = {k: py_value(v) for k, v in f.attrs.items()}
        if attrs.get("wsis_format") != FORMAT_NAME:
            raise BadInputError(name, None, "an HDF5 file not written by wsis (no wsis_format attribute)")
        if int(attrs.get("wsis_format_version", 0)) > FORMAT_VERSION:
            raise BadInputError(name, None, f"written by a newer wsis ({attrs.get('wsis_version')}); upgrade wsis")
        self.stage: str = attrs.get("stage", "")
        if self.expect_stage is not None and self.stage != self.expect_stage:
            raise BadInputError(name, None, f"written by stage '{self.stage}', expected '{self.expect_stage}'")
        if not attrs.get("complete", False):
            raise BadInputError(name, None, "an unfinished output (its run was interrupted); finish it "
                                "with --resume")
        if IMAGES not in f:
            raise BadInputError(name, None, f"damaged store: no /{IMAGES} group")
        try:
            self.settings: dict[str, Any] = json.loads(attrs.get("settings", "{}"))
            self.inputs: dict[str, Any] = json.loads(attrs.get("inputs", "{}"))
        except json.JSONDecodeError:
            raise BadInputError(name, None, "damaged store: settings/inputs attributes are not JSON") from None
        self.version: str = attrs.get("wsis_version", "")

    def _handle(self) -> h5py.File:
        # A handle inherited through fork() shares HDF5 library state with the parent: never use it in
        # the child; drop it and open a fresh one.
        if self._file is None or self._pid != os.getpid():
            self._file = None
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def _group(self, image_id: int) -> h5py.Group:
        key = image_key(image_id)
        group = self._handle()[IMAGES].get(key)
        if group is None:
            raise BadInputError(str(self.path), f"image {key}", "not in this store")
        return group

    # --- pickling (DataLoader workers started with spawn/forkserver)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = None
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # --- access

    def ids(self) -> list[int]:
        """All image ids, sorted."""
        if self._ids is None:
            self._ids = sorted(int(k) for k in self._handle()[IMAGES])
        return list(self._ids)

    def __contains__(self, image_id: object) -> bool:
        try:
            key = image_key(image_id)
        except TypeError:
            return False
        return key in self._handle()[IMAGES]

    def __len__(self) -> int:
        return len(self.ids())

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids())

    def names(self, image_id: int) -> list[str]:
        """The dataset names stored for one image."""
        return list(self._group(image_id).keys())

    def get(self, image_id: int, names: Iterable[str] | None = None, dtype: Any = None) -> dict[str, np.ndarray]:
        """One image's arrays by name (all, or ``names``), optionally cast to ``dtype``."""
        group = self._group(image_id)
        out = {}
        for name in group.keys() if names is None else names:
            if name not in group:
                raise BadInputError(str(self.path), f"image {image_id}", f"has no dataset '{name}'")
            out[name] = np.asarray(group[name][()], dtype=dtype)
        return out

    def attrs(self, image_id: int) -> dict[str, Any]:
        """The image group's attributes (as written by ``put(attrs=...)``)."""
        return {k: py_value(v) for k, v in self._group(image_id).attrs.items()}

    def dataset_attrs(self, image_id: int, name: str) -> dict[str, Any]:
        """One dataset's attributes (as written by ``put(dataset_attrs=...)``)."""
        group = self._group(image_id)
        if name not in group:
            raise BadInputError(str(self.path), f"image {image_id}", f"has no dataset '{name}'")
        return {k: py_value(v) for k, v in group[name].attrs.items()}

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._pid = None

    def __enter__(self) -> H5Reader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
