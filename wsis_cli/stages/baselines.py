"""Trivial labellers that set the floor learned ones must beat.

``box_filled_masks``: every box becomes its own mask. Any box-supervised labeller (``wsis mal-label``)
that does not clearly beat this on mask AP / mean IoU has learned nothing about shapes.
"""

from __future__ import annotations

from typing import Any

from wsis_cli.io import rle as rle_utils
from wsis_cli.io.coco import Dataset


def box_filled_masks(boxes: Dataset) -> Dataset:
    """Fill each annotation's ``bbox`` as its mask.

    Keeps every key of each annotation (``id``, ``image_id``, ``category_id``, ``bbox``, ...) and sets
    ``segmentation`` (RLE of the box clipped to the image, every pixel it touches), ``area`` (mask area)
    and ``score`` (the input score, else 1.0). Images and categories are shared with ``boxes``.
    Every annotation needs a ``bbox``: load the input with ``load_dataset(path, need="bbox")``.
    """
    sizes = {im["id"]: (im["height"], im["width"]) for im in boxes.images}
    out: list[dict[str, Any]] = []
    for a in boxes.annotations:
        h, w = sizes[a["image_id"]]
        seg = rle_utils.encode(rle_utils.box_mask(a["bbox"], h, w))
        out.append({
            **a,
            "segmentation": seg,
            "area": float(rle_utils.area(seg)),
            "score": float(a["score"]) if a.get("score") is not None else 1.0,
            "iscrowd": a.get("iscrowd", 0),
        })
    return boxes.with_annotations(out)
