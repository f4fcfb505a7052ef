"""Writing a report folder (``wsis show``): PNG or JPEG images, pages and a JSON summary, appearing whole or not at all.

Everything is written into a sibling ``<REPORT>.partial-XXXX`` folder that replaces ``REPORT`` only when
the last file is written (:func:`wsis_cli.io.atomic.atomic_dir`); a bad record or image met half-way
leaves no half-written report behind. Inside that private folder files are written directly: the
folder as a whole is what is atomic.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsis_cli.io.atomic import atomic_dir


class ReportWriter:
    """Writes files under one folder, by paths relative to it (sub-folders are made as needed)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = 0
        self.bytes = 0

    def _path(self, rel: str) -> Path:
        p = self.root / rel
        if self.root.resolve() not in p.resolve().parents:
            raise ValueError(f"report path {rel!r} leaves the report folder")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def png(self, rel: str, rgb: np.ndarray) -> None:
        """Write an ``(H, W, 3)`` uint8 RGB array as PNG."""
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not ok:
            raise OSError(f"cannot encode {rel} as PNG")
        self._bytes(rel, buf.tobytes())

    def jpeg(self, rel: str, rgb: np.ndarray, quality: int = 90) -> None:
        """Write an ``(H, W, 3)`` uint8 RGB array as JPEG (photos: a fraction of a PNG's size)."""
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise OSError(f"cannot encode {rel} as JPEG")
        self._bytes(rel, buf.tobytes())

    def image(self, rel: str, rgb: np.ndarray) -> None:
        """Write ``rgb`` as PNG or JPEG, by the extension of ``rel``."""
        if rel.lower().endswith((".jpg", ".jpeg")):
            self.jpeg(rel, rgb)
        else:
            self.png(rel, rgb)

    def text(self, rel: str, text: str) -> None:
        self._bytes(rel, text.encode("utf-8"))

    def json(self, rel: str, obj: Any) -> None:
        self.text(rel, json.dumps(obj, indent=1) + "\n")

    def _bytes(self, rel: str, data: bytes) -> None:
        with open(self._path(rel), "wb") as fh:
            fh.write(data)
        self.files += 1
        self.bytes += len(data)


@contextlib.contextmanager
def report_dir(path: str | os.PathLike, *, force: bool = False) -> Iterator[ReportWriter]:
    """Yield a :class:`ReportWriter` on a temporary sibling of ``path`` that becomes ``path`` on success.

    ``path`` must be absent or an empty folder unless ``force`` (then it is replaced whole).
    """
    with atomic_dir(path, force=force) as tmp:
        yield ReportWriter(tmp)
