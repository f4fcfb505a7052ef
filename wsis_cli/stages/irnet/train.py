"""Training IRNet's branches on mined relations, and the dataset-wide displacement mean shift.

Each training sample is an image and its relation labels (from :mod:`wsis_cli.stages.irnet.relations`,
kept at the branches' stride, ``4 / scale`` of the image, so memory stays small), randomly flipped and
cropped to a common size on that grid (pad: 0 after normalisation for the image, 255 for the labels). SGD with momentum 0.9 (upstream
passes its momentum in the weight-decay slot, a bug not reproduced here), lr 0.1 for the edge branch and
1.0 for the displacement branch, weight decay 1e-4, poly decay per step; AMP on GPU; a checkpoint every
epoch. Under ``torchrun`` the model is wrapped in DDP and the sampler splits the images.

The displacement branch learns ``D`` only up to a constant (the losses see differences of ``D``), so the
mean of ``D`` over every pixel of every training image is subtracted at inference. Upstream measures it
with running statistics inside the model, which depend on the per-GPU batch and broke multi-GPU training;
here it is one pass after training whose sums are all-reduced, so any number of processes gives the
value one process would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wsis_cli.models.backbones import normalize
from wsis_cli.models.irnet_heads import IRNet
from wsis_cli.models.irnet_loss import TRAIN_RADIUS, irnet_losses
from wsis_cli.runtime.distributed import DistContext
from wsis_cli.runtime.log import get_logger

log = get_logger("irnet")

IGNORE = 255
STRIDE = 4


@dataclass
class Sample:
    """One training image: where to read it and its relation labels at the branches' stride."""

    image_id: int
    load: Callable[[], np.ndarray]  # () -> (H, W, 3) uint8 RGB
    labels: np.ndarray  # (ceil(H/s), ceil(W/s)) uint8 with s = 4 / the model's scale
    regions: np.ndarray | None = None  # same grid, int32 CAM basins (irnet_relations.cam_basins) or None


class RelationDataset(Dataset):
    """Flip + crop (on the labels' grid, ``stride`` pixels a cell) of images and relation labels to ``crop`` pixels.

    Items: ``(image (3, crop_h, crop_w) float32 normalised, labels (crop_h/s, crop_w/s) int64)``. The
    randomness comes from a generator seeded by ``(seed, epoch, index)``, so an epoch is the same with any
    number of workers and after a resume.
    """

    def __init__(self, samples: Sequence[Sample], crop: tuple[int, int], seed: int, stride: int = STRIDE) -> None:
        self.samples = list(samples)
        self.stride = stride
        self.crop = crop
        self.seed = seed
        self.epoch = 0
        self.load_images = True  # off when the features are cached

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """``(image, labels, regions, index, flipped)``; ``regions`` is all 0 for a sample without them."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        flip = bool(rng.random() < 0.5)
        if not self.load_images:
            s = self.samples[index]
            gh, gw = self.crop[0] // self.stride, self.crop[1] // self.stride
            lab = _on_grid(s.labels, flip, 0, 0, gh, gw, IGNORE)
            return torch.zeros(0), lab, _on_grid(s.regions, flip, 0, 0, gh, gw, 0), index, int(flip)
        image, labels, regions = self.views(index, flip, rng)
        return image, labels, regions, index, int(flip)

    def view(self, index: int, flip: bool, rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (optionally flipped) sample cropped at a random place (``rng``) or the top-left (``None``)."""
        return self.views(index, flip, rng)[:2]

    def views(self, index: int, flip: bool,
              rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`view` plus the same window of the sample's regions (all 0 without them)."""
        s = self.samples[index]
        image = s.load()
        labels = s.labels
        if flip:
            image, labels = image[:, ::-1], labels[:, ::-1]
            # a flipped image whose width is not a multiple of the stride shifts the grid: pad it back
            extra = (-image.shape[1]) % self.stride
            if extra:
                image = np.pad(image, ((0, 0), (extra, 0), (0, 0)))
        ch, cw = self.crop
        st = self.stride
        gh, gw = ch // st, cw // st
        h4, w4 = labels.shape
        oy = int(rng.integers(0, h4 - gh + 1)) if h4 > gh and rng is not None else 0
        ox = int(rng.integers(0, w4 - gw + 1)) if w4 > gw and rng is not None else 0
        img = torch.zeros(3, ch, cw)
        lab = torch.full((gh, gw), IGNORE, dtype=torch.int64)
        part = np.ascontiguousarray(image[oy * st : oy * st + ch, ox * st : ox * st + cw])
        ph, pw = part.shape[:2]
        img[:, :ph, :pw] = normalize(torch.from_numpy(part).permute(2, 0, 1)[None])[0]
        lpart = np.ascontiguousarray(labels[oy : oy + gh, ox : ox + gw])
        lab[: lpart.shape[0], : lpart.shape[1]] = torch.from_numpy(lpart.astype(np.int64))
        return img, lab, _on_grid(s.regions, flip, oy, ox, gh, gw, 0)


def _on_grid(grid: np.ndarray | None, flip: bool, oy: int, ox: int, gh: int, gw: int, fill: int) -> torch.Tensor:
    """``(gh, gw)`` int64 window of a (flipped) label grid at ``(oy, ox)``, padded with ``fill``."""
    out = torch.full((gh, gw), fill, dtype=torch.int64)
    if grid is None:
        return out
    part = np.ascontiguousarray((grid[:, ::-1] if flip else grid)[oy : oy + gh, ox : ox + gw])
    out[: part.shape[0], : part.shape[1]] = torch.from_numpy(part.astype(np.int64))
    return out


MIN_CROP = 80  # the radius-10 pairs need a stride-4 grid of at least 19 columns: smaller images are padded


def crop_size(sizes: Sequence[tuple[int, int]], crop: int) -> tuple[int, int]:
    """Common training crop: ``crop`` or the largest image side if smaller, a multiple of 16, at least 80."""
    def side(n: int) -> int:
        return max(MIN_CROP, math.ceil(min(n, max(crop, MIN_CROP)) / 16) * 16)
    return side(max(h for h, _ in sizes)), side(max(w for _, w in sizes))


class FeatureCache:
    """Backbone features of every sample in both orientations, computed once.

    The backbone is frozen, so when every image fits the crop (no random crop) its features are the
    same in every epoch; computing them once makes each step cost only the heads (5-10x faster for the
    small sets of quick runs and tests). Used only below ``max_bytes``.
    """

    def __init__(self, model: IRNet, dataset: RelationDataset, device: torch.device, amp: bool) -> None:
        from wsis_cli.runtime.device import autocast

        self.levels: list[list[torch.Tensor]] = []
        with torch.no_grad():
            for index in range(len(dataset)):
                pair = []
                for flip in (False, True):
                    image, _ = dataset.view(index, flip, None)
                    with autocast(device, amp):
                        pair.append([f[0] for f in model.features(image[None].to(device))])
                self.levels.append([torch.stack(level) for level in zip(*pair, strict=True)])

    def batch(self, index: torch.Tensor, flip: torch.Tensor) -> list[torch.Tensor]:
        return [torch.stack([self.levels[int(i)][k][int(f)] for i, f in zip(index, flip, strict=True)])
                for k in range(5)]

    @staticmethod
    def fits(model: IRNet, dataset: RelationDataset, max_bytes: int) -> bool:
        s = dataset.samples
        cell = dataset.stride
        if any(x.labels.shape[0] * cell > dataset.crop[0] or x.labels.shape[1] * cell > dataset.crop[1] for x in s):
            return False
        ch, cw = dataset.crop[0] * model.scale, dataset.crop[1] * model.scale
        channels = model.level_channels
        strides = [4, 4, 8, 16, 16]
        per = sum(c * math.ceil(ch / st) * math.ceil(cw / st) for c, st in zip(channels, strides, strict=True))
        return 2 * 4 * per * len(s) <= max_bytes


CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class IRNetTrainConfig:
    """What :func:`train` takes from :class:`~wsis_cli.stages.irnet.settings.IRNetSettings`, plus how it runs."""

    epochs: int
    batch_size: int
    crop: int
    edge_lr: float
    dp_lr: float
    weight_decay: float
    momentum: float
    seed: int
    amp: bool
    workers: int = 0
    radius: float = TRAIN_RADIUS


def make_optimizer(model: IRNet, cfg: IRNetTrainConfig) -> torch.optim.SGD:
    edge, disp = model.head_parameters()
    return torch.optim.SGD(
        [{"params": edge, "lr": cfg.edge_lr}, {"params": disp, "lr": cfg.dp_lr}],
        lr=cfg.edge_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
    )


def train(model: IRNet, samples: Sequence[Sample], cfg: IRNetTrainConfig, ctx: DistContext, run: Any,
          progress: Any) -> None:
    """Train the heads in place; ``run`` is the :class:`~wsis_cli.io.run_dir.RunDir` (checkpoints, metrics)."""
    from wsis_cli.runtime.device import autocast, grad_scaler
    from wsis_cli.runtime.seeding import worker_init_fn
    from wsis_cli.runtime.training import EpochBookkeeping, poly_lr, set_lr

    device = ctx.device
    if cfg.epochs == 0:
        return
    stride = STRIDE // model.scale
    crop = crop_size([(s.labels.shape[0] * stride, s.labels.shape[1] * stride) for s in samples], cfg.crop)
    dataset = RelationDataset(samples, crop, cfg.seed, stride)
    sampler = ctx.sampler(dataset, shuffle=True, seed=cfg.seed, drop_last=False)
    per_rank = max(1, cfg.batch_size // ctx.world_size)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=cfg.workers,
                        worker_init_fn=worker_init_fn, drop_last=len(dataset) // ctx.world_size > per_rank)
    steps_per_epoch = max(len(loader), 1)
    total = cfg.epochs * steps_per_epoch
    opt = make_optimizer(model, cfg)
    base_lrs = [cfg.edge_lr, cfg.dp_lr]
    scaler = grad_scaler(device, cfg.amp)
    net = ctx.wrap(model)
    cache = FeatureCache(model, dataset, device, cfg.amp) if FeatureCache.fits(model, dataset, CACHE_BYTES) else None
    dataset.load_images = cache is None
    with_regions = any(s.regions is not None for s in samples)
    book = EpochBookkeeping(run, {"model": _Heads(model), "optimizer": opt, "scaler": scaler}, cfg.epochs, ctx=ctx,
                            steps_per_epoch=steps_per_epoch, progress=progress, label="irnet train")
    book.resume()
    for epoch in book.epochs(sampler, cfg.seed):  # the shuffle reseeded per epoch: exact resumes
        model.train()
        dataset.set_epoch(epoch)
        for images, labels, regions, index, flip in loader:
            set_lr(opt, base_lrs, poly_lr(book.step, total))
            labels = labels.to(device, non_blocking=True)
            with autocast(device, cfg.amp):
                if cache is not None:
                    edge, disp = net(feats=cache.batch(index, flip))
                else:
                    edge, disp = net(images.to(device, non_blocking=True))
            regions = regions.to(device, non_blocking=True) if with_regions else None
            losses = irnet_losses(edge, disp, labels, cfg.radius, regions)
            opt.zero_grad(set_to_none=True)
            scaler.scale(losses.total).backward()
            scaler.step(opt)
            scaler.update()
            book.step_done()
            book.add(losses.items())
        means = book.means(all_ranks=False)  # each rank logs its own mean, as irnet always has
        if ctx.is_main:
            run.log_metrics({"epoch": epoch + 1, "step": book.step, **means})
            book.save(epoch + 1)
        log.info("irnet: epoch %d/%d loss %.4f (pos bg %.3f fg %.3f, neg %.3f, dp fg %.3f bg %.3f)",
                 epoch + 1, cfg.epochs, means.get("total", math.nan), means.get("pos_bg", math.nan),
                 means.get("pos_fg", math.nan), means.get("neg", math.nan), means.get("dp_fg", math.nan),
                 means.get("dp_bg", math.nan))
        ctx.barrier()


class _Heads:
    """The checkpoint's ``model`` entry: :func:`head_state` saved, loaded back into the full model."""

    def __init__(self, model: IRNet) -> None:
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return head_state(self.model)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("backbone.") for k in missing):
            raise RuntimeError(f"checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")


def head_state(model: IRNet) -> dict[str, torch.Tensor]:
    """The trained part of the model's state (heads and mean shift) for the per-epoch checkpoint: the frozen
    backbone is rebuilt from the same weights (or seed) on resume, and would be ~90% of each file."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}


@torch.no_grad()
def measure_mean_shift(model: IRNet, images: Sequence[Callable[[], np.ndarray]], ctx: DistContext,
                       amp: bool = False) -> torch.Tensor:
    """Mean displacement ``(2,)`` over every stride-4 pixel of every image (all ranks together).

    Each rank takes every ``world_size``-th image; sums and pixel counts are all-reduced in float64, so
    the result does not depend on the number of processes or on batching.
    """
    from wsis_cli.runtime.device import autocast

    model.eval()
    saved = model.mean_shift.clone()
    model.mean_shift.zero_()
    acc = torch.zeros(3, dtype=torch.float64, device=ctx.device)
    for load in list(images)[ctx.rank :: ctx.world_size]:
        x = normalize(torch.from_numpy(np.ascontiguousarray(load())).permute(2, 0, 1)[None]).to(ctx.device)
        with autocast(ctx.device, amp):
            _, disp = model(x)
        disp = disp[0].double()
        acc[:2] += disp.sum((1, 2))
        acc[2] += disp.shape[1] * disp.shape[2]
    ctx.all_reduce_sum(acc)
    model.mean_shift.copy_(saved)
    if acc[2] == 0:
        return torch.zeros(2)
    return (acc[:2] / acc[2]).float().cpu()
