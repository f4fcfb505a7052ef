"""RoI inputs of ``wsis mal-label``: box expansion, out-of-image handling, crops, augmentation, datasets.

One sample is one box. Boxes are XYWH in continuous pixel coordinates (``[x, x + w]``); MAL's inclusive
integer corners and its ``+1`` on the right/bottom are therefore not needed.

* **Training expansion** (MAL's ``RandomCropV3``): per axis a margin ``m ~ U(0, max_rate)`` (1.2) is split
  between the two opposite sides by a gate ``g ~ U(0, 1)``: ``m·g`` and ``m·(1 - g)``. A side's distance
  from the box centre is scaled by ``1 + its share``, so the crop is ``1 + m/2`` (1 to 1.6) times the box
  along that axis, with the object anywhere from flush left to flush right: the network cannot learn
  "the object is in the middle".
* **Inference expansion** (``RandomCropV2``): 0.3 on every side, a crop of 1.3 x the box.
* **Outside the image**: ``wrap`` (the default, as upstream) fills the missing part from the opposite
  side of the image. A constant pad would put an unnatural flat colour next to the object and the CRF
  loss (a colour-affinity model) is sensitive to it; ``reflect`` mirrors the object itself across the
  image edge, so an object cut by the border reappears *outside* its box, which the MIL loss then has to
  call background against all appearance evidence (``replicate`` smears its edge pixels the same way).
  Wrap-around shows real image content, mostly background, and is what MAL was tuned with. ``reflect``
  and ``replicate`` stay available. The box mask is never wrapped: it is zero outside the image.
* Crops are resized to ``S x S`` (aspect not kept, as upstream); the box mask is computed exactly at the
  loss resolution ``S/4`` as per-cell coverage (soft at its edges).
* Training adds a horizontal flip (p 0.5) to both views, and colour augmentation to the student view
  only: ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.5, grayscale p 0.2, Gaussian blur p 0.5 (sigma in
  0.1–2.0 pixels at 512², scaled with the crop). The teacher sees the un-augmented crop.

Randomness is drawn from a NumPy generator seeded by ``(seed, epoch, index)``: the same seed gives the
same crops in any number of DataLoader workers and after ``--resume``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from wsis_cli.models.backbones import normalize
from wsis_cli.models.mal import box_buckets, output_size
from wsis_cli.stages.mal.inputs import xywh_to_xyxy
from wsis_cli.stages.mal.settings import OUTSIDE_MODES

__all__ = ["RoiImageSet", "RoiTrainSet", "box_cover", "colour_augment", "crop_bounds", "crop_image", "expand_box",
           "source_indices", "train_margins", "xywh_to_xyxy"]

Outside = Literal["wrap", "reflect", "replicate"]
TEST_MARGIN = 0.3  # per side: the inference crop is 1.3 x the box


# ------------------------------------------------------------------------------------------ geometry


def expand_box(box: Sequence[float], margins: Sequence[float]) -> tuple[float, float, float, float]:
    """Scale each side's distance from the box centre by ``1 + margin``: margins (left, top, right, bottom)."""
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    ml, mt, mr, mb = margins
    return cx - hw * (1 + ml), cy - hh * (1 + mt), cx + hw * (1 + mr), cy + hh * (1 + mb)


def train_margins(rng: np.random.Generator, max_rate: float = 1.2) -> tuple[float, float, float, float]:
    """Random margins (left, top, right, bottom): per axis ``m ~ U(0, max_rate)`` split by a gate."""
    mx, my = rng.uniform(0.0, max_rate, size=2)
    gx, gy = rng.uniform(0.0, 1.0, size=2)
    return float(mx * gx), float(my * gy), float(mx * (1 - gx)), float(my * (1 - gy))


def crop_bounds(box: Sequence[float]) -> tuple[int, int, int, int]:
    """Integer crop ``(x0, y0, x1, y1)`` around an expanded box: floored/ceiled, at least 1 pixel."""
    x0, y0 = math.floor(box[0]), math.floor(box[1])
    x1, y1 = max(math.ceil(box[2]), x0 + 1), max(math.ceil(box[3]), y0 + 1)
    return int(x0), int(y0), int(x1), int(y1)


def source_indices(start: int, stop: int, size: int, mode: Outside) -> np.ndarray:
    """Image rows/columns that fill crop positions ``start..stop-1`` (may lie outside ``0..size-1``)."""
    i = np.arange(start, stop)
    if mode == "wrap":
        return np.mod(i, size)
    if mode == "replicate":
        return np.clip(i, 0, size - 1)
    if mode == "reflect":  # symmetric: ... 1 0 | 0 1 2 ... n-1 | n-1 n-2 ...
        j = np.mod(i, 2 * size)
        return np.where(j < size, j, 2 * size - 1 - j)
    raise ValueError(f"outside mode must be one of {OUTSIDE_MODES}, got {mode!r}")


def crop_image(image: np.ndarray, bounds: Sequence[int], size: int, mode: Outside = "wrap") -> np.ndarray:
    """Cut ``bounds`` (XYXY ints, may leave the image) out of ``(H, W, 3)`` uint8 and resize to ``size²``."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = bounds
    ys, xs = source_indices(y0, y1, h, mode), source_indices(x0, x1, w, mode)
    crop = image[ys[:, None], xs[None, :]]
    shrink = crop.shape[0] > size or crop.shape[1] > size
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _coverage(lo: float, hi: float, start: int, stop: int, cells: int) -> np.ndarray:
    """Fraction of each of ``cells`` equal cells spanning ``[start, stop]`` covered by ``[lo, hi]``."""
    scale = cells / float(stop - start)
    a, b = (lo - start) * scale, (hi - start) * scale
    edges = np.arange(cells, dtype=np.float64)
    return np.clip(np.minimum(b, edges + 1) - np.maximum(a, edges), 0.0, 1.0).astype(np.float32)


def box_cover(box: Sequence[float], bounds: Sequence[int], cells: int) -> np.ndarray:
    """Box mask of ``box`` (XYXY, inside the image) on a ``cells²`` grid over the crop ``bounds``:
    the covered fraction of each cell, so tiny boxes keep a non-zero (fractional) mask."""
    x0, y0, x1, y1 = bounds
    cx = _coverage(box[0], box[2], x0, x1, cells)
    cy = _coverage(box[1], box[3], y0, y1, cells)
    return np.outer(cy, cx)


# --------------------------------------------------------------------------------------- augmentation


def _gray(x: np.ndarray) -> np.ndarray:
    return (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]


def colour_augment(x: np.ndarray, rng: np.random.Generator, crop_size: int) -> np.ndarray:
    """MAL's student augmentation on an ``(S, S, 3)`` float32 [0, 1] crop (NumPy/OpenCV: torchvision's
    tensor hue shift costs ~25 ms per small crop)."""
    if rng.random() < 0.5:  # ColorJitter(0.4, 0.4, 0.2, 0.1), factors applied in random order
        factors = (rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1))
        for k in rng.permutation(4):
            f = np.float32(factors[k])
            if k == 0:
                x = x * f
            elif k == 1:
                m = _gray(x).mean()
                x = (x - m) * f + m
            elif k == 2:
                g = _gray(x)
                x = (x - g) * f + g
            else:
                hsv = cv2.cvtColor(np.clip(x, 0, 1).astype(np.float32), cv2.COLOR_RGB2HSV)  # hue in degrees
                hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * f, 360.0)
                x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
            x = np.clip(x, 0.0, 1.0)
    if rng.random() < 0.2:
        x = np.repeat(_gray(x), 3, axis=2)
    if rng.random() < 0.5:
        sigma = float(rng.uniform(0.1, 2.0)) * crop_size / 512.0
        if sigma > 0.05:
            k = 2 * max(1, math.ceil(3 * sigma)) + 1
            x = cv2.GaussianBlur(np.ascontiguousarray(x, dtype=np.float32), (k, k), sigma)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------- datasets


class _ImageCache:
    """Decoded images of one worker, least recently used first out, within ``max_bytes``: training visits
    the boxes in random order, so every image is decoded many times per epoch without it."""

    def __init__(self, root: str | None, images: dict[int, dict[str, Any]], source: str,
                 max_bytes: int = 256 << 20) -> None:
        self.root, self.images, self.source, self.max_bytes = root, images, source, max_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, image_id: int) -> np.ndarray:
        from wsis_cli.io.images import load_image_for

        if image_id in self._cache:
            self._cache.move_to_end(image_id)
            return self._cache[image_id]
        img = load_image_for(self.root, self.images[image_id], self.source)
        self._cache[image_id] = img
        self._bytes += img.nbytes
        while self._bytes > self.max_bytes and len(self._cache) > 1:
            self._bytes -= self._cache.popitem(last=False)[1].nbytes
        return img


def _to_tensor(crop: np.ndarray) -> torch.Tensor:
    """(S, S, 3) uint8 or float [0, 1] → (3, S, S) float32 [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float()
    return t.div_(255.0) if crop.dtype == np.uint8 else t


class RoiTrainSet(Dataset):
    """Training RoIs: one item per box, ``set_epoch`` before each epoch.

    Item: ``student``, ``teacher`` ``(3, S, S)`` ImageNet-normalised float32; ``box`` ``(S/4, S/4)``
    float32 coverage; ``bucket`` int64 scale bucket of the original box area.
    """

    def __init__(self, boxes: list[dict[str, Any]], images: dict[int, dict[str, Any]], root: str | None,
                 source: str, crop_size: int, *, max_rate: float = 1.2, outside: Outside = "wrap",
                 seed: int = 0) -> None:
        self.boxes = boxes
        self.cache = _ImageCache(root, images, source)
        self.images = images
        self.crop_size, self.max_rate, self.outside, self.seed = crop_size, max_rate, outside, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ann = self.boxes[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        im = self.images[ann["image_id"]]
        box = xywh_to_xyxy(ann["bbox"], im["height"], im["width"])
        bounds = crop_bounds(expand_box(box, train_margins(rng, self.max_rate)))
        crop = crop_image(self.cache.get(ann["image_id"]), bounds, self.crop_size, self.outside)
        cover = box_cover(box, bounds, output_size(self.crop_size))
        if rng.random() < 0.5:
            crop, cover = crop[:, ::-1], cover[:, ::-1]
        student = _to_tensor(colour_augment(crop.astype(np.float32) / 255.0, rng, self.crop_size))
        crop_t, cover_t = _to_tensor(crop), torch.from_numpy(np.ascontiguousarray(cover))
        area = torch.tensor([(box[2] - box[0]) * (box[3] - box[1])], dtype=torch.float64)
        return {
            "student": normalize(student[None])[0],
            "teacher": normalize(crop_t[None])[0],
            "box": cover_t,
            "bucket": box_buckets(area)[0],
        }


class RoiImageSet(Dataset):
    """Inference RoIs grouped by image: one item per image id, every box of it at 1.3 x.

    Item: ``image_id``; ``crops`` ``(N, 3, S, S)`` normalised; ``buckets`` ``(N,)``; ``bounds`` ``(N, 4)``
    int64 XYXY crop windows in image pixels; ``index`` positions of the boxes in ``boxes_by_image``.
    """

    def __init__(self, image_ids: list[int], boxes_by_image: dict[int, list[dict[str, Any]]],
                 images: dict[int, dict[str, Any]], root: str | None, source: str, crop_size: int,
                 outside: Outside = "wrap") -> None:
        self.image_ids = image_ids
        self.boxes_by_image = boxes_by_image
        self.images = images
        self.cache = _ImageCache(root, images, source, max_bytes=0)
        self.crop_size, self.outside = crop_size, outside

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        anns = self.boxes_by_image[image_id]
        im = self.images[image_id]
        s = self.crop_size
        crops = torch.empty((len(anns), 3, s, s))
        bounds = torch.empty((len(anns), 4), dtype=torch.int64)
        areas = torch.empty(len(anns), dtype=torch.float64)
        if anns:
            image = self.cache.get(image_id)
        for k, ann in enumerate(anns):
            box = xywh_to_xyxy(ann["bbox"], im["height"], im["width"])
            b = crop_bounds(expand_box(box, (TEST_MARGIN,) * 4))
            crops[k] = _to_tensor(crop_image(image, b, s, self.outside))
            bounds[k] = torch.tensor(b)
            areas[k] = (box[2] - box[0]) * (box[3] - box[1])
        return {"image_id": image_id, "crops": normalize(crops), "buckets": box_buckets(areas), "bounds": bounds}
