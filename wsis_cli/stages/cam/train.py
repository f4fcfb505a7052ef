"""Training of the CAM classifier (``wsis cam`` without ``--checkpoint``): multi-label classification from
image-level labels, as IRNet's ``train_cam`` but with a correct SGD.

Recipe (upstream defaults, see reference/upstream-implementations.md §1): multilabel soft-margin loss;
random resize of the long side in ``resize_long``, horizontal flip, random crop of ``crop``² with zero
padding after normalisation; batch 16, 5 epochs, poly(0.9) schedule, classifier LR 10x the backbone's,
weight decay 1e-4. Upstream passes its weight decay positionally into SGD's *momentum* slot (effective
momentum 1e-4) with lr 0.1; we use a real momentum of 0.9 and therefore lr 0.01: with momentum ``m`` SGD's
steps are ~``1/(1-m)`` = 10x larger, so 0.01 keeps upstream's effective step size (lr 0.1 with momentum
0.9 diverged here: loss 0.87 -> 170 in the second epoch of a ResNet-18).

``resize_long`` and ``crop`` default to the image size: for a median long side ``L``, resize_long is
``(0.64 L, 1.28 L)`` and crop is ``L`` rounded up to a multiple of 16, which gives exactly upstream's
(320, 640) and 512 on PASCAL VOC (L = 500) and keeps small images cheap.

Reproducibility: each sample's augmentation draws from a generator keyed by ``(seed, epoch, index)`` and
the shuffling by ``(seed, epoch)``, so the result does not depend on the number of loader workers, and a
resumed run (restarting at an epoch boundary) replays the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from wsis_cli.io import coco
from wsis_cli.io.images import image_path, load_image_for
from wsis_cli.io.run_dir import RunDir
from wsis_cli.io.weights import PACKAGED_NAME
from wsis_cli.models.backbones import IMAGENET_MEAN, IMAGENET_STD, normalize
from wsis_cli.models.cam_net import CamNet, calibrate_frozen_bn
from wsis_cli.runtime.device import autocast, grad_scaler
from wsis_cli.runtime.distributed import DistContext
from wsis_cli.runtime.errors import BadInputError
from wsis_cli.runtime.log import get_logger
from wsis_cli.runtime.training import EpochBookkeeping, check_finite, poly_lr, set_lr, unwrap_model
from wsis_cli.stages.cam.settings import TrainSettings

log = get_logger("cam")

_MEAN = IMAGENET_MEAN.numpy().astype(np.float32) * 255.0
_STD = IMAGENET_STD.numpy().astype(np.float32) * 255.0


def auto_geometry(images: Sequence[Mapping[str, Any]], s: TrainSettings) -> tuple[tuple[int, int], int]:
    """``(resize_long, crop)`` for these images: the settings' values, or scaled to the median long side."""
    long_side = float(np.median([max(im["height"], im["width"]) for im in images])) if images else 512.0
    lo_hi = s.resize_long or (max(16, round(0.64 * long_side)), max(16, round(1.28 * long_side)))
    crop = s.crop or int(math.ceil(long_side / 16) * 16)
    return (int(lo_hi[0]), int(lo_hi[1])), int(crop)


def split_val(image_ids: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic ``(train, val)`` split of the ids: a seeded permutation of the sorted ids."""
    ids = sorted(image_ids)
    n_val = round(len(ids) * fraction) if fraction > 0 else 0
    if fraction > 0 and len(ids) >= 4:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(len(ids) - 1, 0))
    order = np.random.default_rng([seed, 0xCA3]).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    held = set(val)
    return [i for i in ids if i not in held], val


def targets_for(ids: Sequence[int], labels: Mapping[int, set[int]], category_ids: Sequence[int]) -> np.ndarray:
    """Multi-hot ``(N, K)`` float32 targets in ``category_ids`` order."""
    col = {c: k for k, c in enumerate(category_ids)}
    out = np.zeros((len(ids), len(category_ids)), np.float32)
    for row, image_id in enumerate(ids):
        for c in labels.get(image_id, ()):
            out[row, col[c]] = 1.0
    return out


def augment(rgb: np.ndarray, rng: np.random.Generator, resize_long: tuple[int, int], crop: int) -> np.ndarray:
    """Random long-side resize, h-flip, normalisation and random crop/pad: ``(3, crop, crop)`` float32."""
    h, w = rgb.shape[:2]
    target = int(rng.integers(resize_long[0], resize_long[1] + 1))
    scale = target / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    if rng.random() < 0.5:
        rgb = rgb[:, ::-1]
    img = (rgb.astype(np.float32) - _MEAN) / _STD
    out = np.zeros((crop, crop, 3), np.float32)  # zero = the mean colour after normalisation
    # each axis: a random window of the image when it is larger than the crop, else a random placement
    sy, dy, ch = _window(nh, crop, rng)
    sx, dx, cw = _window(nw, crop, rng)
    out[dy:dy + ch, dx:dx + cw] = img[sy:sy + ch, sx:sx + cw]
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _window(size: int, crop: int, rng: np.random.Generator) -> tuple[int, int, int]:
    if size > crop:
        return int(rng.integers(0, size - crop + 1)), 0, crop
    return 0, int(rng.integers(0, crop - size + 1)), size


class CamTrainData(Dataset):
    """Augmented training crops and their multi-hot targets; images read through :mod:`wsis_cli.io.images`."""

    def __init__(self, records: Sequence[Mapping[str, Any]], targets: np.ndarray, root: str | None, source: str,
                 resize_long: tuple[int, int], crop: int, seed: int) -> None:
        self.records = list(records)
        self.targets = targets
        self.root, self.source = root, source
        self.resize_long, self.crop, self.seed = resize_long, crop, seed
        self.epoch = 0  # set before each epoch's loader is iterated (workers get a fresh copy)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = load_image_for(self.root, self.records[i], self.source)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        x = augment(rgb, rng, self.resize_long, self.crop)
        return torch.from_numpy(x), torch.from_numpy(self.targets[i])


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one class: mean precision at the rank of each positive (ties ranked pessimistically)."""
    if not positive.any():
        return float("nan")
    order = np.lexsort((positive.astype(np.int8), -scores))  # equal scores: negatives first
    hits = positive[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Mean over classes with at least one positive of the per-class AP; ``None`` when there are none."""
    aps = [average_precision(scores[:, k], targets[:, k] > 0) for k in range(targets.shape[1])]
    aps = [a for a in aps if not math.isnan(a)]
    return float(np.mean(aps)) if aps else None


@torch.no_grad()
def predict_scores(model: CamNet, records: Sequence[Mapping[str, Any]], root: str | None, source: str,
                   device: torch.device, amp: bool = True, batch_size: int = 8) -> np.ndarray:
    """Sigmoid class scores ``(N, K)`` of whole images (no augmentation), batching equal-sized images."""
    out = np.zeros((len(records), model.num_classes), np.float32)
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        batch = torch.from_numpy(np.stack([p[1] for p in pending])).to(device).permute(0, 3, 1, 2)
        with autocast(device, amp):
            logits = model(normalize(batch))
        out[[p[0] for p in pending]] = torch.sigmoid(logits.float()).cpu().numpy()
        pending.clear()

    for row, rec in enumerate(records):
        rgb = load_image_for(root, rec, source)
        if pending and (pending[0][1].shape != rgb.shape or len(pending) >= batch_size):
            flush()
        pending.append((row, rgb))
    if pending:
        flush()
    return out


def check_images_exist(ds: coco.Dataset, root: str | None) -> None:
    """Fail before any work when an image file is missing (exit 3 naming the labels file and the record)."""
    for im in ds.images:
        path = image_path(root, im, ds.source)
        if not path.is_file():
            raise BadInputError(ds.source, f"image id {im['id']} ({im['file_name']})", f"image file not found at {path}")


@dataclass
class TrainResult:
    model: CamNet
    model_path: Path
    category_ids: list[int]
    val_map: float | None
    epochs: int


def train(settings: TrainSettings, ds: coco.Dataset, images_root: str | None, run: RunDir, state: Any,
          ctx: DistContext, val_ds: coco.Dataset | None = None) -> TrainResult:
    """Train the classifier on ``ds``'s image-level labels; write checkpoints, metrics and ``model.pt``.

    ``state`` is the backbone's initial weights (a raw state dict or ``None``). Runs data-parallel when
    ``ctx`` is distributed (the global batch is split over the ranks); only the main rank writes files.
    """
    device = ctx.device
    labels = coco.label_sets(ds)
    category_ids = [c["id"] for c in ds.categories]
    if val_ds is not None:
        train_ids = sorted(labels)
        val_labels = coco.label_sets(val_ds)
        known = set(category_ids)
        for i, a in enumerate(val_ds.annotations):
            if a["category_id"] not in known:
                raise BadInputError(val_ds.source, f"annotations[{i}]", f"category {a['category_id']} is not a "
                                    "category of the training labels")
        val_ids, val_records, val_source = sorted(val_labels), val_ds.image_index, val_ds.source
    else:
        train_ids, val_ids = split_val(list(labels), settings.val_fraction, settings.seed)
        val_labels, val_records, val_source = labels, ds.image_index, ds.source
    index = ds.image_index
    resize_long, crop = auto_geometry([index[i] for i in train_ids], settings)
    log.info("cam: training %s on %d images (%d held out for validation), %d classes; resize long side %d-%d, "
             "crop %d, batch %d, %d epochs", settings.arch, len(train_ids), len(val_ids), len(category_ids),
             resize_long[0], resize_long[1], crop, settings.batch_size, settings.epochs)

    torch.manual_seed(settings.seed)
    model = CamNet(settings.arch, len(category_ids), state, settings.last_stride, source=settings.weights,
                   train_early=settings.train_early, strict=settings.weights == PACKAGED_NAME).to(device)
    data = CamTrainData([index[i] for i in train_ids], targets_for(train_ids, labels, category_ids), images_root,
                        ds.source, resize_long, crop, settings.seed)
    per_rank = max(1, math.ceil(settings.batch_size / ctx.world_size))
    drop_last = len(data) >= settings.batch_size  # tiny sets: keep the partial batch rather than no batch
    sampler = ctx.sampler(data, shuffle=True, seed=settings.seed, drop_last=drop_last)
    loader = DataLoader(data, batch_size=per_rank, sampler=sampler, num_workers=settings.workers,
                        drop_last=drop_last, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    steps_per_epoch = max(len(loader), 1)
    total = settings.epochs * steps_per_epoch

    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    base_lrs = [settings.lr, settings.lr * settings.head_lr_mult]
    optimizer = torch.optim.SGD(
        [{"params": backbone_params, "lr": base_lrs[0]}, {"params": model.classifier.parameters(), "lr": base_lrs[1]}],
        lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    scaler = grad_scaler(device, settings.amp)
    book = EpochBookkeeping(run, {"model": model, "optimizer": optimizer, "scaler": scaler}, settings.epochs,
                            ctx=ctx)
    val_map = None
    ckpt = book.resume()
    if ckpt is not None:
        val_map = ckpt.get("val_map")
    elif state is None:
        # from scratch: give the frozen BN layers real statistics (the same on every rank: seeded crops)
        gen = np.random.default_rng([settings.seed, 0xB7])
        pick = gen.choice(len(data), size=min(len(data), 32), replace=False)
        probe = torch.stack([data[int(i)][0] for i in pick]).to(device)
        n = calibrate_frozen_bn(model.backbone, probe)
        log.info("cam: random initialisation: calibrated %d frozen BN layers on %d training crops", n, len(pick))
    net = ctx.wrap(model)

    for epoch in book.epochs(sampler, settings.seed):
        data.epoch = epoch
        net.train()
        for x, y in loader:
            set_lr(optimizer, base_lrs, poly_lr(book.step, total, settings.poly_power))
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, settings.amp):
                logits = net(x)
            loss = F.multilabel_soft_margin_loss(logits.float(), y)
            check_finite(loss, stage="cam", step=book.step, lr=optimizer.param_groups[0]["lr"])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            book.step_done()
            book.add({"loss": loss.detach() * len(x)}, len(x))  # weighted by batch size (a partial last batch)
        mean_loss = book.means().get("loss", 0.0)
        if ctx.is_main:
            if val_ids:
                model.eval()
                scores = predict_scores(model, [val_records[i] for i in val_ids], images_root, val_source, device,
                                        settings.amp)
                val_map = mean_average_precision(scores, targets_for(val_ids, val_labels, category_ids))
            seconds = book.seconds
            vm = "n/a" if val_map is None else f"{val_map:.4f}"
            log.info("cam: epoch %d/%d  loss %.4f  val mAP %s  (%.1f s)", epoch + 1, settings.epochs, mean_loss,
                     vm, seconds)
            run.log_metrics({"epoch": epoch + 1, "step": book.step, "loss": mean_loss, "val_map": val_map,
                             "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
                             "train_images": len(train_ids), "val_images": len(val_ids)})
            book.save(epoch + 1, val_map=val_map, category_ids=category_ids)
        ctx.barrier()
    if ctx.is_main:
        run.save_model(unwrap_model(net).state_dict(), {"category_ids": category_ids, "val_map": val_map,
                                                         "resize_long": list(resize_long), "crop": crop})
    ctx.barrier()
    model.eval()
    return TrainResult(model, run.model_path.resolve(), category_ids, val_map, settings.epochs)
