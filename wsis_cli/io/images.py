"""Image files: reading to RGB uint8 whatever the file holds, writing, and listing folders.

Every stage sees images as ``(H, W, 3)`` uint8 RGB numpy arrays. Grayscale and palette files are expanded
to three channels, an alpha channel is dropped, EXIF orientation is applied (so sizes are the *displayed*
sizes, as every COCO tool assumes), and 16-bit or float files are scaled to 8 bits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from wsis_cli.io.atomic import atomic_path
from wsis_cli.runtime.errors import BadInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jp2")

DepthMode = Literal["full", "stretch"]


def read_image(path: str | os.PathLike, *, depth: DepthMode = "full", record: str | None = None) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB.

    ``depth`` decides how 16-bit and float images become 8-bit: ``full`` maps the type's full range
    linearly (0..65535 -> 0..255; floats are taken as 0..1), ``stretch`` maps each image's own min..max
    (for microscopy cameras that use 10-12 of the 16 bits).
    Missing, unreadable or corrupt files raise :class:`BadInputError` naming the file and ``record``.
    """
    p = Path(path)
    if not p.is_file():
        raise BadInputError(p, record, "image file not found" if not p.exists() else "not a file")
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as e:
        raise BadInputError(p, record, f"cannot read image file: {e.strerror or e}") from None
    if data.size == 0:
        raise BadInputError(p, record, "empty image file")
    img = _decode(data)
    if img is None:
        raise BadInputError(p, record, "cannot decode image (corrupt or unsupported format)")
    img = _to_uint8(img, depth)
    return np.ascontiguousarray(img[..., ::-1])  # BGR -> RGB


def _decode(data: np.ndarray) -> np.ndarray | None:
    """Decode to BGR at the file's bit depth, EXIF orientation applied; None if it cannot be decoded."""
    level = cv2.utils.logging.getLogLevel()
    # OpenCV logs its own warnings about corrupt files on stderr; we report one clear line instead
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
        if img is None:
            # some readers refuse the colour conversion (OpenCV's TIFF reader on one-channel float
            # files): take the pixels as stored and expand the channels here
            img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
            img = None if img is None else _to_bgr(img)
    finally:
        cv2.utils.logging.setLogLevel(level)
    return img


def _to_bgr(img: np.ndarray) -> np.ndarray | None:
    if img.ndim == 2:
        img = img[..., None]
    channels = img.shape[2]
    if channels in (1, 2):  # gray, gray + alpha
        return np.repeat(img[..., :1], 3, axis=2)
    if channels in (3, 4):  # BGR, BGRA
        return np.ascontiguousarray(img[..., :3])
    return None


def _to_uint8(img: np.ndarray, depth: DepthMode) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    x = img.astype(np.float32)
    if depth == "stretch":
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    elif np.issubdtype(img.dtype, np.integer):
        x = x / float(np.iinfo(img.dtype).max)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` gray) array; the format follows the suffix."""
    p = Path(path)
    arr = rgb[..., ::-1] if rgb.ndim == 3 else rgb
    ok, buf = cv2.imencode(p.suffix or ".png", np.ascontiguousarray(arr))
    if not ok:
        raise OSError(f"cannot encode image as {p.suffix}")
    # atomic, and a missing or read-only folder is reported as bad input like every other output
    with atomic_path(p) as tmp:
        buf.tofile(tmp)


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursively), as sorted POSIX paths relative to it.

    An empty folder, or one without images, is bad input.
    """
    root = Path(folder)
    if not root.is_dir():
        raise BadInputError(root, None, "image folder not found" if not root.exists() else "not a folder")
    names = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
    if not names:
        raise BadInputError(root, None, f"no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return names


# Explicit opt-in for datasets whose file_name values leave the --images folder ("../x.png", "/data/x.png").
ALLOW_OUTSIDE_ENV = "WSIS_ALLOW_OUTSIDE_IMAGES"


def image_path(root: str | os.PathLike | None, image: Mapping[str, Any], source: str | None = None) -> Path:
    """Where an image record's file lives: ``file_name`` relative to ``root`` (or as given without a root).

    With a root, a ``file_name`` that leads outside it (an absolute path, or ``..`` above it) is bad input
    naming ``source`` and the record, unless ``WSIS_ALLOW_OUTSIDE_IMAGES=1``. The test is on the names,
    not on resolved links, so symbolic links inside the root may point anywhere.
    """
    name = Path(image["file_name"])
    if root is None:
        return name
    path = Path(root) / name  # an absolute name replaces the root
    if not _inside(root, path) and os.environ.get(ALLOW_OUTSIDE_ENV) != "1":
        raise BadInputError(source or "labels", f"image id {image['id']}",
                            f"file_name {image['file_name']!r} leads outside --images {root} (file names are "
                            f"relative to it; set {ALLOW_OUTSIDE_ENV}=1 to allow)")
    return path


def _inside(root: str | os.PathLike, path: Path) -> bool:
    r = os.path.normpath(os.path.abspath(root))
    p = os.path.normpath(os.path.abspath(path))
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)


def load_image_for(root: str | os.PathLike | None, image: Mapping[str, Any], source: str,
                   *, depth: DepthMode = "full") -> np.ndarray:
    """Read the file of a dataset image record and check its size against the record.

    A size mismatch names the JSON file and the image record (exit 3).
    """
    record = f"image id {image['id']} ({image['file_name']})"
    path = image_path(root, image, source)
    if not path.is_file():
        if path.is_symlink() and not path.exists():
            raise BadInputError(source, record, f"{path} is a symbolic link that leads nowhere (broken or a loop)")
        raise BadInputError(source, record, f"image file not found at {path}")
    img = read_image(path, depth=depth, record=f"{source} image id {image['id']}")
    h, w = img.shape[:2]
    if (h, w) != (image["height"], image["width"]):
        raise BadInputError(
            source, record, f"file is {w}x{h} (WxH) but the JSON says {image['width']}x{image['height']}"
        )
    return img


def folder_images(folder: str | os.PathLike, *, depth: DepthMode = "full") -> list[dict[str, Any]]:
    """COCO image records for a bare folder: ids 1..N from sorted file names, sizes read from the files."""
    records = []
    for i, name in enumerate(list_images(folder), start=1):
        h, w = read_image(Path(folder) / name, depth=depth).shape[:2]
        records.append({"id": i, "file_name": name, "width": int(w), "height": int(h)})
    return records
