"""``freemask --labeled``: fine-tune the Free Mask backbone on a few ground-truth masks (contrastive).

Following the weakly supervised FreeSOLO report (K. Awoufack, "Weakly Supervised Instance Segmentation" (a FreeSOLO extension)): Free Mask first runs on the
labelled images; each generated mask is matched to the ground-truth instance it overlaps best (IoU);
the backbone is then trained with SimCLR's NT-Xent loss (cosine similarity, tau = 0.5) on embeddings
pooled from its features under each mask, where a ground-truth instance, the generated masks matched to
it and both augmented views of all of them are positives (:mod:`wsis_cli.models.freemask_head`).
Generated masks matched to nothing and the labelled background are their own instances: the loss
pushes real objects away from the background and part masks, the report's main failure (masks covering
the whole image). Only the given labels are used: images without ground truth never enter the loss.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from wsis_cli.io import rle as rle_utils
from wsis_cli.models.freemask_head import ProjectionHead, mask_pool, nt_xent
from wsis_cli.runtime.log import get_logger
from wsis_cli.runtime.training import rng_state, set_rng_state
from wsis_cli.stages.freemask.features import BackboneSpec, features_of, patch_multiple, prepare
from wsis_cli.stages.freemask.settings import TuneSettings

log = get_logger("freemask")


@dataclass
class Sample:
    """One labelled image: its pixels, the masks the loss sees and their instance labels (``-1``: none)."""

    image: np.ndarray  # (H, W, 3) uint8
    masks: np.ndarray  # (M, H, W) bool
    labels: np.ndarray  # (M,) int64, unique per instance within the image


def make_sample(image: np.ndarray, gt_masks: np.ndarray, generated: np.ndarray, match_iou: float) -> Sample:
    """GT masks (labels ``0..G-1``), the generated masks (label of their best GT at ``>= match_iou``,
    else a label of their own) and the background outside every GT mask (a label of its own)."""
    g = gt_masks.shape[0]
    labels = list(range(g))
    next_label = g
    if generated.shape[0] and g:
        ious = rle_utils.iou(rle_utils.encode_many(generated.astype(np.uint8)),
                             rle_utils.encode_many(gt_masks.astype(np.uint8)))
        best, best_iou = ious.argmax(axis=1), ious.max(axis=1)
    else:
        best, best_iou = np.zeros(generated.shape[0], int), np.zeros(generated.shape[0])
    for b, v in zip(best, best_iou, strict=True):
        if v >= match_iou:
            labels.append(int(b))
        else:
            labels.append(next_label)
            next_label += 1
    background = ~gt_masks.any(axis=0) if g else np.ones(image.shape[:2], bool)
    parts = [gt_masks.astype(bool), generated.astype(bool)]
    if background.any():
        parts.append(background[None])
        labels.append(next_label)
    return Sample(image, np.concatenate(parts, axis=0), np.asarray(labels, np.int64))


def augmented_view(sample: Sample, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An augmented view: random horizontal flip and brightness/contrast jitter (masks follow the flip)."""
    img, masks = sample.image, sample.masks
    if rng.random() < 0.5:
        img, masks = img[:, ::-1], masks[:, :, ::-1]
    x = img.astype(np.float32)
    x = (x - x.mean()) * rng.uniform(0.8, 1.2) + x.mean() + rng.uniform(-20, 20)
    return np.clip(x, 0, 255).astype(np.uint8), np.ascontiguousarray(masks)


def fine_tune(net: nn.Module, samples: Sequence[Sample], spec: BackboneSpec, settings: TuneSettings,
              device: torch.device, run: Any = None, progress: Any = None) -> dict[str, float]:
    """Train ``net`` in place on ``samples``; checkpoints every epoch into ``run`` (a RunDir) and resumes
    from it. Returns the last epoch's mean loss (``{"loss": ...}``)."""
    head = ProjectionHead(_channels(net), settings.head).to(device)
    params = [p for p in list(net.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=settings.lr, momentum=0.9, weight_decay=1e-4) if settings.optimizer == "sgd"
           else torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-4))
    modules = {"model": net, "head": head}
    start, loss_mean = resume_training(run, modules, opt)
    mult = patch_multiple(net)
    if progress is not None:
        progress.start(max(settings.epochs - start, 0), "freemask fine-tune", unit="epochs")
    for epoch in range(start, settings.epochs):
        t0 = time.perf_counter()
        net.train()
        order = np.random.default_rng((settings.seed, epoch)).permutation(len(samples))
        total, steps = 0.0, 0
        for b in range(0, len(order), settings.batch_size):
            views: list[tuple[torch.Tensor, np.ndarray, np.ndarray]] = []
            offset = 0
            for i in order[b : b + settings.batch_size]:
                s = samples[int(i)]
                rng = np.random.default_rng((settings.seed, epoch, int(i)))
                for _ in range(2):  # two views of each image: its instances are positives across views
                    img, masks = augmented_view(s, rng)
                    views.append((prepare(img, spec, device, mult), masks, s.labels + offset))
                offset += int(s.labels.max()) + 1 if len(s.labels) else 0
            emb, lab = [], []
            for feats, (_, masks, labels) in zip(_batched_features(net, [v[0] for v in views]), views, strict=True):
                emb.append(head(mask_pool(feats, torch.from_numpy(masks).to(device))))
                lab.append(torch.from_numpy(labels).to(device))
            loss = nt_xent(torch.cat(emb), torch.cat(lab), settings.tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        loss_mean = total / max(steps, 1)
        end_epoch(run, progress, "fine-tune", epoch, settings.epochs, loss_mean, t0, modules, opt)
    if progress is not None:
        progress.finish()
    net.eval()
    return {"loss": loss_mean}


def resume_training(run: Any, modules: dict[str, nn.Module], opt: torch.optim.Optimizer) -> tuple[int, float]:
    """Load a resumed run's ``last.pt`` (``modules`` by key, the optimizer, the RNG state) when there is
    one; returns ``(first epoch to train, last finished epoch's loss)``."""
    ckpt = run.load_checkpoint() if run is not None else None
    if ckpt is None:
        return 0, float("nan")
    for key, module in modules.items():
        module.load_state_dict(ckpt[key])
    opt.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["epoch"]), float(ckpt.get("loss", float("nan")))


def end_epoch(run: Any, progress: Any, what: str, epoch: int, epochs: int, loss_mean: float, t0: float,
              modules: dict[str, nn.Module], opt: torch.optim.Optimizer) -> None:
    """Log the finished epoch, append it to the run's metrics, checkpoint everything :func:`resume_training`
    reads back, and advance the progress bar."""
    seconds = time.perf_counter() - t0
    log.info("freemask: %s epoch %d/%d  loss %.4f  (%.1f s)", what, epoch + 1, epochs, loss_mean, seconds)
    if run is not None:
        run.log_metrics({"epoch": epoch + 1, "loss": loss_mean, "seconds": round(seconds, 3)})
        run.save_checkpoint({**{key: m.state_dict() for key, m in modules.items()}, "optimizer": opt.state_dict(),
                             "epoch": epoch + 1, "loss": loss_mean, "rng": rng_state()})
    if progress is not None:
        progress.advance(1)


def _batched_features(net: nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Features of each ``(3, h, w)`` input, one backbone pass per group of equal sizes."""
    out: list[torch.Tensor | None] = [None] * len(inputs)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(tuple(x.shape), []).append(i)
    for members in groups.values():
        feats = features_of(net, torch.stack([inputs[i] for i in members]))
        for i, f in zip(members, feats, strict=True):
            out[i] = f
    return [f for f in out if f is not None]


def _channels(net: nn.Module) -> int:
    ch = net.channels
    return int(ch[-1] if isinstance(ch, (list, tuple)) else ch)
