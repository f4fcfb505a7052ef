"""Training data of ``wsis train-student``: COCO instance labels as torchvision detection targets.

Images are read through :func:`wsis_cli.io.images.load_image_for`, masks decoded with
:mod:`wsis_cli.io.rle`. Each sample is ``(image (3, H, W) float in [0, 1], target)`` with the target that
torchvision's Mask R-CNN expects — ``boxes`` (n, 4) XYXY float, ``labels`` (n,) int64 in 1..K (0 is
background), ``masks`` (n, H, W) uint8 — plus ``image_id`` and, for the projection loss, ``lab``:
the image in CIE Lab (3, H, W) float32, L in [0, 100].

Annotations that cannot teach anything are skipped with one warning (counted, with the first example):
crowd regions, empty masks and degenerate (zero-width or zero-height) boxes. Images without
annotations stay in (they teach the background). Box-only annotations (no ``segmentation``) are bad
input for the standard mask loss; with ``box_masks=True`` (the projection loss, which only trusts a
mask's extent) their filled box is the mask, as in BoxInst.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from wsis_cli.io import rle as rle_utils
from wsis_cli.io.coco import Dataset as CocoDataset
from wsis_cli.io.images import image_path, load_image_for
from wsis_cli.runtime.errors import BadInputError
from wsis_cli.runtime.log import get_logger
from wsis_cli.runtime.seeding import worker_init_fn

log = get_logger("train-student")


@dataclass(frozen=True)
class Instance:
    label: int  # contiguous, 1..K
    rle: dict[str, Any]  # compressed RLE of the (possibly box-filled) mask
    box: tuple[float, float, float, float]  # XYXY, pixel edges


def label_map(category_ids: Sequence[int]) -> dict[int, int]:
    """COCO category id -> contiguous label 1..K (0 is Mask R-CNN's background)."""
    return {int(c): k + 1 for k, c in enumerate(category_ids)}


def collect_instances(ds: CocoDataset, category_ids: Sequence[int], *, box_masks: bool = False) -> dict[int, list[Instance]]:
    """The usable instances of every image (see the module docstring for what is skipped)."""
    labels = label_map(category_ids)
    sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in ds.images}
    out: dict[int, list[Instance]] = {im["id"]: [] for im in ds.images}
    skipped: dict[str, list[str]] = {}
    for i, a in enumerate(ds.annotations):
        rec = f"annotations[{i}] (id {a.get('id')})"
        if a.get("category_id") not in labels:
            raise BadInputError(ds.source, rec, f"category {a.get('category_id')} is not one of the model's categories")
        h, w = sizes[a["image_id"]]
        if a.get("iscrowd", 0):
            skipped.setdefault("crowd region", []).append(rec)
            continue
        seg = a.get("segmentation")
        if seg is None:
            if not box_masks or a.get("bbox") is None:
                raise BadInputError(ds.source, rec, "has no segmentation: train-student learns masks (make masks with "
                                    "wsis mal-label, or train on boxes with --mask-loss projection)")
            mask = rle_utils.box_mask(a["bbox"], h, w)
            rle = rle_utils.encode(mask)
        else:
            rle = rle_utils.to_compressed(seg, h, w)
        if rle_utils.area(rle) == 0:
            skipped.setdefault("empty mask", []).append(rec)
            continue
        x, y, bw, bh = rle_utils.to_bbox(rle)
        if bw < 1 or bh < 1:
            skipped.setdefault("degenerate box", []).append(rec)
            continue
        out[a["image_id"]].append(Instance(labels[a["category_id"]], rle, (x, y, x + bw, y + bh)))
    for why, recs in skipped.items():
        log.warning("%s: skipped %d annotation(s) with a %s (first: %s)", ds.source, len(recs), why, recs[0])
    return out


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 CIE Lab with L in [0, 100] (OpenCV's float conversion)."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    return np.ascontiguousarray(lab.transpose(2, 0, 1))


class StudentData(Dataset):
    """The images of ``records`` with their instances; horizontal flips drawn from ``(seed, epoch, index)``."""

    def __init__(self, records: Sequence[Mapping[str, Any]], instances: Mapping[int, list[Instance]],
                 root: str | None, source: str, *, with_lab: bool = False, flip: bool = True, seed: int = 0) -> None:
        self.records = list(records)
        self.instances = instances
        self.root, self.source = root, source
        self.with_lab, self.flip, self.seed = with_lab, flip, seed
        self.epoch = 0  # set before each epoch (workers get a fresh copy of the dataset per loader)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rec = self.records[i]
        rgb = load_image_for(self.root, rec, self.source)
        h, w = rgb.shape[:2]
        inst = self.instances.get(rec["id"], [])
        masks = np.stack([rle_utils.decode(x.rle) for x in inst]) if inst else np.zeros((0, h, w), np.uint8)
        boxes = np.array([x.box for x in inst], np.float32).reshape(-1, 4)
        if self.flip and np.random.default_rng([self.seed, self.epoch, i]).random() < 0.5:
            rgb, masks = rgb[:, ::-1], masks[:, :, ::-1]
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
        rgb = np.ascontiguousarray(rgb)
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, np.float32)),
            "labels": torch.tensor([x.label for x in inst], dtype=torch.int64),
            "masks": torch.from_numpy(np.ascontiguousarray(masks)),
            "image_id": torch.tensor(int(rec["id"])),
        }
        if self.with_lab:
            target["lab"] = torch.from_numpy(rgb_to_lab(rgb))
        image = torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float().div_(255.0)
        return image, target


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    """Detection batches are lists (images differ in size); the model's transform pads them."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def loader_worker_init(worker_id: int) -> None:
    """Seed the worker, and leave SIGTERM/SIGUSR1 to the main process (which saves a checkpoint first)."""
    worker_init_fn(worker_id)
    for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


def check_images(ds: CocoDataset, root: str | None) -> None:
    """Fail before any training when an image file is missing (exit 3 naming the labels file and the record)."""
    if not ds.images:
        raise BadInputError(ds.source, None, "has no images")
    for im in ds.images:
        path = image_path(root, im, ds.source)
        if not path.is_file():
            raise BadInputError(ds.source, f"image id {im['id']} ({im['file_name']})", f"image file not found at {path}")
