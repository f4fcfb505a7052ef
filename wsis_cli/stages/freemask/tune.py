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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from wsis_cli.io import rle as rle_utils
from wsis_cli.models.freemask_head import ProjectionHead, mask_pool, nt_xent
from wsis_cli.runtime.log import get_logger
from wsis_cli.runtime.passes import loss_backward_in_passes
from wsis_cli.runtime.training import EpochBookkeeping
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
    per_epoch = max(1, -(-len(samples) // settings.batch_size))
    book = EpochBookkeeping(run, {"model": net, "head": head, "optimizer": opt}, settings.epochs,
                            steps_per_epoch=per_epoch, progress=progress, label="freemask fine-tune", unit="epochs")
    ckpt = book.resume()
    loss_mean = float(ckpt.get("loss", float("nan"))) if ckpt is not None else float("nan")
    mult = patch_multiple(net)
    for epoch in book.epochs():
        net.train()
        order = np.random.default_rng((settings.seed, epoch)).permutation(len(samples))
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
            lab = torch.cat([torch.from_numpy(v[2]).to(device) for v in views])

            def loss_of(feats: list[torch.Tensor], views: list = views, lab: torch.Tensor = lab) -> torch.Tensor:
                emb = [head(mask_pool(f, torch.from_numpy(v[1]).to(device))) for f, v in zip(feats, views, strict=True)]
                return nt_xent(torch.cat(emb), lab, settings.tau)

            opt.zero_grad(set_to_none=True)
            # the views run through the backbone in passes of bounded size (runtime.passes): memory of a few
            loss = loss_backward_in_passes(net, [v[0] for v in views], features_of, loss_of, settings.pass_pixels)
            opt.step()
            book.step_done()
            book.add({"loss": loss})
        loss_mean = end_epoch(book, "fine-tune", epoch)
    net.eval()
    return {"loss": loss_mean}


def end_epoch(book: EpochBookkeeping, what: str, epoch: int) -> float:
    """Log the finished epoch, append it to the run's metrics and checkpoint it; returns its mean loss."""
    loss_mean = book.means().get("loss", 0.0)
    seconds = book.seconds
    log.info("freemask: %s epoch %d/%d  loss %.4f  (%.1f s)", what, epoch + 1, book.total_epochs, loss_mean, seconds)
    if book.run is not None:
        book.run.log_metrics({"epoch": epoch + 1, "loss": loss_mean, "seconds": round(seconds, 3)})
    book.save(epoch + 1, loss=loss_mean)
    return loss_mean


def _channels(net: nn.Module) -> int:
    ch = net.channels
    return int(ch[-1] if isinstance(ch, (list, tuple)) else ch)
