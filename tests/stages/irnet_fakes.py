"""CAM-like maps made from ground truth, written as a ``cams.h5`` of stage ``cam`` (helpers for the IRNet tests).

A real CAM peaks on the most discriminative part of each object, spills over its border and is blind to
the border between two touching objects of one class; these maps do the same: per instance a blurred
mask weighted towards its interior, the max over the instances of a class, normalised to 1, at stride 4.

``touching_subset`` keeps the images where two instances of one class touch, the case IRNet exists for.

``oracle_maps`` gives what IRNet's two branches are trained to predict, from the ground truth: the
displacement field to each instance's centroid and a one-cell *class* boundary (none between touching
instances of one class: the relations IRNet learns from are class labels). Fed to the instance synthesis
they measure inference alone, with perfect learnt maps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsis_cli.io import coco, rle
from wsis_cli.io.h5 import H5Writer


def fake_cams(height: int, width: int, instances: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, list[int]]:
    """``(K, ceil(H/4), ceil(W/4))`` float32 maps of the classes present and their category ids."""
    cats = sorted({c for c, _ in instances})
    h4, w4 = -(-height // 4), -(-width // 4)
    out = np.zeros((len(cats), h4, w4), np.float32)
    for k, cat in enumerate(cats):
        full = np.zeros((height, width), np.float32)
        for c, mask in instances:
            if c != cat:
                continue
            m = mask.astype(np.uint8)
            dist = cv2.distanceTransform(m, cv2.DIST_L2, 5)
            inner = dist / max(float(dist.max()), 1e-6)
            sigma = max(1.0, 0.12 * float(np.sqrt(m.sum())))
            blur = cv2.GaussianBlur(m.astype(np.float32) * (0.5 + 0.5 * inner), (0, 0), sigma)
            full = np.maximum(full, blur)
        full /= max(float(full.max()), 1e-6)
        padded = np.zeros((h4 * 4, w4 * 4), np.float32)
        padded[:height, :width] = full
        out[k] = cv2.resize(padded, (w4, h4), interpolation=cv2.INTER_AREA)
        out[k] /= max(float(out[k].max()), 1e-6)
    return out, cats


def write_fake_cams(gt_path: str | Path, out: str | Path, *, checkpoint: str = "",
                    labels: str | Path | None = None) -> dict[int, tuple[np.ndarray, list[int]]]:
    """Write ``out`` (a cams.h5 of stage ``cam``) from the masks of ``gt_path``; returns the maps."""
    gt = coco.load_dataset(gt_path)
    by_image = gt.annotations_by_image()
    maps: dict[int, tuple[np.ndarray, list[int]]] = {}
    inputs: dict[str, Any] = {"labels": str(labels or gt_path), "checkpoint": checkpoint}
    settings = {"method": "cam", "arch": "resnet18", "scales": [1.0]}
    with H5Writer(out, "cam", settings, inputs) as w:
        for im in gt.images:
            h, wd = im["height"], im["width"]
            inst = [(a["category_id"], rle.decode(rle.to_compressed(a["segmentation"], h, wd)).astype(bool))
                    for a in by_image.get(im["id"], [])]
            cams, cats = fake_cams(h, wd, inst)
            maps[im["id"]] = (cams, cats)
            w.put(im["id"], {"cams": cams}, attrs={"height": h, "width": wd},
                  dataset_attrs={"cams": {"stride": 4, "category_ids": cats, "image_size": [h, wd]}},
                  dtypes={"cams": np.float16})
    return maps


def oracle_maps(height: int, width: int, instances: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """``(displacement (2, h4, w4), class boundary (h4, w4))`` at stride 4 from ground-truth instances.

    Each grid cell takes the instance under its centre pixel (as ``irnet_relations.strided_labels``); its
    displacement points at that instance's centroid in grid units, background cells get 0. A cell is
    boundary when its right or lower neighbour holds another class (background counts as a class), the
    thinnest boundary the grid can hold.
    """
    from wsis_cli.stages.irnet.relations import strided_labels

    ids = np.zeros((height, width), np.int32)
    for k, (_, mask) in enumerate(instances):
        ids[mask] = k + 1
    cell = strided_labels(ids)
    h4, w4 = cell.shape
    ys, xs = np.mgrid[0:h4, 0:w4].astype(np.float32)
    disp = np.zeros((2, h4, w4), np.float32)
    classes = np.zeros((h4, w4), np.int64)
    for k, (cat, mask) in enumerate(instances):
        yy, xx = np.nonzero(mask)
        on = cell == k + 1
        disp[0][on] = (yy.mean() - 1.5) / 4 - ys[on]  # grid cell i covers pixels 4i..4i+3, centre 4i+1.5
        disp[1][on] = (xx.mean() - 1.5) / 4 - xs[on]
        classes[on] = cat
    edge = np.zeros((h4, w4), np.float32)
    edge[:, :-1] = np.maximum(edge[:, :-1], classes[:, :-1] != classes[:, 1:])
    edge[:-1] = np.maximum(edge[:-1], classes[:-1] != classes[1:])
    return disp, edge


def instances_of(gt: coco.Dataset, image: dict[str, Any]) -> list[tuple[int, np.ndarray]]:
    """``(category id, full-resolution bool mask)`` of every ground-truth instance of one image."""
    h, w = image["height"], image["width"]
    return [(a["category_id"], rle.decode(rle.to_compressed(a["segmentation"], h, w)).astype(bool))
            for a in gt.annotations_by_image().get(image["id"], [])]


def touches_same_class(instances: list[tuple[int, np.ndarray]], gap: int = 2) -> bool:
    """Whether two instances of one class touch (their masks come within ``gap`` pixels)."""
    kernel = np.ones((2 * gap + 1, 2 * gap + 1), np.uint8)
    for i, (ci, mi) in enumerate(instances):
        near = cv2.dilate(mi.astype(np.uint8), kernel) > 0
        if any(cj == ci and (near & mj).any() for cj, mj in instances[i + 1 :]):
            return True
    return False


def touching_subset(gt_path: str | Path, keep: int) -> coco.Dataset:
    """The first ``keep`` images of ``gt_path`` where same-class instances touch, rewritten in place (the
    images folder is unchanged). On ``synth`` sets with 2 classes and 2-5 instances 60-75% of the images
    qualify (seed 1: 10 of the first 16, 30 of 40), so a pool of 2.5x ``keep`` is ample."""
    gt = coco.load_dataset(gt_path)
    chosen = [im for im in gt.images if touches_same_class(instances_of(gt, im))][:keep]
    if len(chosen) < keep:
        raise ValueError(f"only {len(chosen)} of {len(gt.images)} images have touching same-class instances")
    ids = {im["id"] for im in chosen}
    sub = coco.Dataset(chosen, [a for a in gt.annotations if a["image_id"] in ids], gt.categories, {}, gt.source)
    coco.write_dataset(sub, str(gt_path))
    return coco.load_dataset(gt_path)
