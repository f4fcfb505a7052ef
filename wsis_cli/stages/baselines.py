"""Trivial labellers that set the floor learned ones must beat.

``box_filled_masks``: every box becomes its own mask. Any box-supervised labeller (``wsis mal-label``)
that does not clearly beat this on mask AP / mean IoU has learned nothing about shapes.

``cam_components``: thresholded CAMs split into connected components (IRNet's "CAM" row), the floor of
``wsis irnet``: it cannot separate touching instances of one class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wsis_cli.io import rle as rle_utils
from wsis_cli.io.coco import Dataset, annotation


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


def cam_components(
    images: Sequence[Mapping[str, Any]],
    cams: Mapping[int, tuple[np.ndarray, Sequence[int]]],
    categories: list[dict[str, Any]],
    threshold: float = 0.25,
    min_area_fraction: float = 0.01,
) -> Dataset:
    """IRNet's "CAM" baseline: threshold each class's CAM and call every connected component an instance.

    Args:
        images: COCO image records (``id``, ``height``, ``width``); every one gets its components.
        cams: image id → ``((K, ceil(H/4), ceil(W/4)) CAMs in [0, 1], the K category ids)``, as in
            ``cams.h5``. Upsampled x4 bilinearly and cropped to the image, as IRNet does.
        threshold: CAM score above which a pixel is foreground of that class.
        min_area_fraction: components smaller than this fraction of the image are dropped.
    Returns:
        a dataset of one mask per 4-connected component, scored by the maximum CAM inside it (as the
        paper scores its baseline); annotation ids are 1, 2, ... in image order.
    """
    import cv2
    import torch
    import torch.nn.functional as F

    out: list[dict[str, Any]] = []
    for im in images:
        if im["id"] not in cams:
            continue
        maps, cats = cams[im["id"]]
        h, w = im["height"], im["width"]
        if len(cats) == 0:
            continue
        up = F.interpolate(torch.from_numpy(np.asarray(maps, np.float32))[None], scale_factor=4, mode="bilinear",
                           align_corners=False)[0, :, :h, :w].numpy()
        for cam, cat in zip(up, cats, strict=True):
            n, comp = cv2.connectedComponents((cam > threshold).astype(np.uint8), connectivity=4)
            for j in range(1, n):
                mask = comp == j
                if mask.sum() < min_area_fraction * h * w:
                    continue
                out.append(annotation(len(out) + 1, im["id"], int(cat), rle_utils.encode(mask),
                                      score=float(cam[mask].max())))
    return Dataset(list(images), out, list(categories), {})
