"""Trivial labellers that set the floor learned ones must beat.

``box_filled_masks``: every box becomes its own mask. Any box-supervised labeller (``wsis mal-label``)
that does not clearly beat this on mask AP / mean IoU has learned nothing about shapes.

``colour_components``: connected components of the pixels whose colour departs from the background's;
the floor for label-free labellers (``wsis freemask``).

``cam_components``: thresholded CAMs split into connected components (IRNet's "CAM" row), the floor of
``wsis irnet``: it cannot separate touching instances of one class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
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


def colour_components(images: Dataset, read_image: Callable[[dict[str, Any]], np.ndarray], *,
                      threshold: float = 0.12, border: float = 0.06, min_area: float = 0.002,
                      category_id: int = 1) -> Dataset:
    """Class-agnostic masks from a colour foreground: the connected components of pixels far from the
    background colour — the floor that label-free labellers (``wsis freemask``) must beat.

    The background is a plane per RGB channel fitted (least squares) to the pixels of an image border
    ``border`` of the short side wide, so gradients are modelled; a pixel is foreground when its
    3x3-blurred colour is more than ``threshold`` (on 0-1 intensities, Euclidean RGB) from that plane.
    Components smaller than ``min_area`` of the image are dropped. ``score`` is the component's mean
    colour distance. ``read_image(record)`` returns the ``(H, W, 3)`` uint8 RGB pixels of an image record.
    """
    out: list[dict[str, Any]] = []
    cat = {"id": category_id, "name": "object"}
    for im in images.images:
        rgb = read_image(im).astype(np.float32) / 255.0
        h, w = rgb.shape[:2]
        b = max(1, int(round(border * min(h, w))))
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        ring = np.zeros((h, w), bool)
        ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = True, True, True, True
        design = np.stack([np.ones(int(ring.sum()), np.float32), xs[ring] / w, ys[ring] / h], axis=1)
        coef, *_ = np.linalg.lstsq(design, rgb[ring], rcond=None)  # (3 terms, 3 channels)
        bg = coef[0] + (xs / w)[..., None] * coef[1] + (ys / h)[..., None] * coef[2]
        dist = np.linalg.norm(cv2.blur(rgb, (3, 3)) - bg, axis=2)
        fg = cv2.morphologyEx((dist > threshold).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        n, comp = cv2.connectedComponents(fg, connectivity=8)
        for k in range(1, n):
            m = comp == k
            if m.sum() < max(1.0, min_area * h * w):
                continue
            ann_id = im["id"] * 1000 + len([a for a in out if a["image_id"] == im["id"]]) + 1
            out.append(annotation(ann_id, im["id"], category_id, rle_utils.encode(m), score=float(dist[m].mean())))
    return Dataset(images.images, out, [cat], {}, images.source)
