"""Self-supervised dense pre-training of a Free Mask backbone on unlabelled images (``freemask --pretrain``).

Free Mask needs features in which every location is cosine-close to the rest of its object and far from
everything else; FreeSOLO gets them from DenseCL, a *dense* self-supervised pre-training. Without such
weights (no network, a new domain), this trains a backbone on the user's own images, with no label:

- regions: label-free colour/position segments of each image (:mod:`wsis_cli.stages.freemask.regions`);
- two augmented views per image (flip, brightness/contrast jitter; the regions follow the geometry);
- region contrast (DetCon): the features pooled under each region form an embedding; the same region in
  the other view is its positive, every other region of the batch a negative (NT-Xent, ``tau``);
- pixel-to-region contrast: every feature location is classified, by cosine similarity over ``tau``,
  among all regions of the batch in the *other* view; its own region is the target. This shapes exactly
  the per-location similarities Free Mask thresholds, where region pooling alone only constrains means.

The backbone is trained whole, BatchNorm live, AdamW with warm-up + cosine. The result is written as a
run folder's ``model.pt`` whose ``model`` entry is the backbone's state dict, so ``--weights PATH`` loads it
through the ordinary weight-loading code (``models.weights.match_state_dict``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsis_cli.models.freemask_head import mask_pool, nt_xent
from wsis_cli.runtime.log import get_logger
from wsis_cli.runtime.passes import loss_backward_in_passes
from wsis_cli.runtime.training import EpochBookkeeping, check_finite, set_lr, warmup_cosine
from wsis_cli.stages.freemask.features import BackboneSpec, features_of, patch_multiple, prepare
from wsis_cli.stages.freemask.regions import region_proposals
from wsis_cli.stages.freemask.settings import PretrainSettings
from wsis_cli.stages.freemask.tune import Sample, augmented_view, end_epoch

log = get_logger("freemask")

__all__ = ["PretrainSettings", "build_pretrain_backbone", "pixel_region_loss", "pretrain", "region_samples"]


def build_pretrain_backbone(spec: BackboneSpec) -> nn.Module:
    """The network pre-training starts from: ``spec``'s backbone with its weights, BatchNorm *live* (frozen
    statistics of a random initialisation would never adapt). Its state dict loads into the frozen-BN
    backbone Free Mask runs on."""
    from wsis_cli.stages.backbone import build_backbone

    return build_backbone(spec.arch, spec.weights, stages=spec.stage,
                          output_stride=16 if spec.last_stride == 1 else 32, frozen_bn=False)


def region_samples(images: Sequence[np.ndarray], settings: PretrainSettings) -> list[Sample]:
    """One :class:`Sample` per image: its label-free regions, each its own instance label."""
    out = []
    for i, img in enumerate(images):
        regions = region_proposals(img, settings.regions, position_weight=settings.position_weight,
                                   seed=settings.seed + i)
        out.append(Sample(img, regions, np.arange(len(regions), dtype=np.int64)))
    return out


def pixel_region_loss(features: Sequence[Tensor], masks: Sequence[Tensor], prototypes: Tensor,
                      owners: Sequence[Tensor], tau: float) -> Tensor:
    """Cross-entropy of each location's cosine similarities (over ``tau``) to ``prototypes`` (P, E).

    ``features[v]`` (E, h, w) and ``masks[v]`` (M_v, H, W) of view ``v``; ``owners[v]`` (M_v,) the row of
    ``prototypes`` each region's location must pick. Locations covered less than half by one region (its
    borders, dropped pixels) are ignored. Returns a scalar (0 without any labelled location).
    """
    protos = F.normalize(prototypes, dim=1)
    losses = []
    for f, m, own in zip(features, masks, owners, strict=True):
        if m.shape[0] == 0:
            continue
        cover = F.interpolate(m[:, None].float(), size=f.shape[1:], mode="area")[:, 0]  # (M, h, w)
        best, which = cover.max(dim=0)
        sel = best.flatten() >= 0.5
        if not bool(sel.any()):
            continue
        pix = F.normalize(f.flatten(1).t()[sel], dim=1)  # (n, E)
        logits = pix @ protos.t() / tau
        losses.append(F.cross_entropy(logits, own[which.flatten()[sel]], reduction="sum") / sel.sum())
    if not losses:
        return prototypes.sum() * 0.0
    return torch.stack(losses).mean()


def _step(net: nn.Module, batch: list[Sample], spec: BackboneSpec, settings: PretrainSettings,
          device: torch.device, rng: np.random.Generator, mult: int) -> Tensor:
    """One batch's loss (two views of each sample, region and pixel-to-region contrast across views), its
    gradient accumulated into ``net``; returns the loss, detached. The views run through the backbone in
    passes of at most ``settings.pass_pixels`` input pixels (:mod:`wsis_cli.runtime.passes`)."""
    inputs, masks, labels = [], [], []
    offset = 0
    for s in batch:
        for _ in range(2):
            img, m = augmented_view(s, rng)
            inputs.append(prepare(img, spec, device, mult))
            masks.append(torch.from_numpy(m).to(device))
            labels.append(torch.from_numpy(s.labels + offset).to(device))
        offset += len(s.labels)

    def loss_of(feats: list[Tensor]) -> Tensor:
        emb = [mask_pool(f, m) for f, m in zip(feats, masks, strict=True)]
        loss = feats[0].sum() * 0.0
        if settings.region_weight > 0:
            loss = loss + settings.region_weight * nt_xent(torch.cat(emb), torch.cat(labels), settings.tau)
        if settings.pixel_weight > 0:
            # views alternate (image 0 view a, image 0 view b, image 1 view a ...): each view's locations
            # pick among the regions of every image's *other* view; region r of image i is row offset_i + r
            other = [v ^ 1 for v in range(len(feats))]
            terms = []
            for parity in (0, 1):
                views = [v for v in range(len(feats)) if v % 2 == parity]
                protos = torch.cat([emb[other[v]] for v in views])
                terms.append(pixel_region_loss([feats[v] for v in views], [masks[v] for v in views], protos,
                                               [labels[v] for v in views], settings.tau))
            loss = loss + settings.pixel_weight * 0.5 * (terms[0] + terms[1])
        return loss

    return loss_backward_in_passes(net, inputs, features_of, loss_of, settings.pass_pixels)


def pretrain(net: nn.Module, samples: Sequence[Sample], spec: BackboneSpec, settings: PretrainSettings,
             device: torch.device, run: Any = None, progress: Any = None) -> dict[str, float]:
    """Train ``net`` in place on ``samples`` (from :func:`region_samples`); checkpoints every epoch into
    ``run`` (a RunDir) and resumes from it. Returns ``{"loss": last epoch's mean loss}``."""
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-4)
    base_lrs = [g["lr"] for g in opt.param_groups]
    per_epoch = max(1, -(-len(samples) // settings.batch_size))
    total = per_epoch * settings.epochs
    book = EpochBookkeeping(run, {"model": net, "optimizer": opt}, settings.epochs, steps_per_epoch=per_epoch,
                            progress=progress, label="freemask pretrain", unit="epochs")
    ckpt = book.resume()
    loss_mean = float(ckpt.get("loss", float("nan"))) if ckpt is not None else float("nan")
    mult = patch_multiple(net)
    for epoch in book.epochs():
        net.train()
        order = np.random.default_rng((settings.seed, epoch)).permutation(len(samples))
        for b in range(0, len(order), settings.batch_size):
            step = book.step
            set_lr(opt, base_lrs, warmup_cosine(step, int(settings.warmup * total), total, final=0.05))
            rng = np.random.default_rng((settings.seed, epoch, b))
            opt.zero_grad(set_to_none=True)
            loss = _step(net, [samples[int(i)] for i in order[b : b + settings.batch_size]], spec, settings,
                         device, rng, mult)
            check_finite(loss, stage="freemask pretrain", step=step, lr=settings.lr)
            opt.step()
            book.step_done()
            book.add({"loss": loss})
        loss_mean = end_epoch(book, "pretrain", epoch)
    net.eval()
    return {"loss": loss_mean}
