"""The boxes ``wsis mal-label`` reads, checked before the network stack loads.

This module imports only :mod:`wsis_cli.io.coco` (NumPy), not torch or OpenCV: the command line loads and
checks the boxes file with it first, so a bad box fails with exit 3 in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Sequence

from wsis_cli.io import coco
from wsis_cli.runtime.errors import BadInputError


def xywh_to_xyxy(bbox: Sequence[float], height: int, width: int) -> tuple[float, float, float, float]:
    """XYWH → XYXY clipped to the image (input boxes may overshoot by the 1-pixel tolerance of io.coco)."""
    x, y, w, h = (float(v) for v in bbox)
    return max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))


def check_boxes(ds: coco.Dataset) -> None:
    """Refuse boxes that leave nothing inside the image once clipped (exit 3, naming the record).

    ``io.coco`` already refuses zero/negative sizes and boxes beyond its 1-pixel tolerance.
    """
    sizes = {im["id"]: (im["height"], im["width"]) for im in ds.images}
    for i, a in enumerate(ds.annotations):
        h, w = sizes[a["image_id"]]
        x0, y0, x1, y1 = xywh_to_xyxy(a["bbox"], h, w)
        if x1 <= x0 or y1 <= y0:
            raise BadInputError(ds.source, f"annotations[{i}] (id {a['id']})",
                                f"bbox {a['bbox']} lies outside its {w}x{h} image")


def load_boxes(path: str) -> coco.Dataset:
    """The COCO dataset at ``path`` (``-``: stdin), every annotation with a usable box (BadInputError)."""
    ds = coco.load_dataset(path, need="bbox")
    check_boxes(ds)
    return ds
