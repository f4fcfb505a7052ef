"""``wsis mal-label``: boxes in, instance masks out (MAL, Lan et al. CVPR 2023).

Trains the class-agnostic MAL network on the boxes themselves (:mod:`wsis_cli.stages.mal_train`; or
loads ``--checkpoint``), then labels every box: the 1.3 x crop around it is decoded, the probability map
is resized into that window, pasted into the image (clipped at its borders), cut to the box, thresholded
and written as RLE; pixels shared by boxes of one image go to the most confident box
(:mod:`wsis_cli.stages.mal_writeback`, ``--no-exclusive`` keeps overlaps). Each output annotation keeps the input's ``id``, ``image_id``, ``bbox``,
``category_id``, ``score`` and other keys; ``area`` is the *mask* area (upstream writes the box area).
Without an input ``score`` the score is the mask's mean foreground probability, so that AP ranks
confident masks first.

Threshold: upstream thresholds ``sigmoid x box mask`` at 0.1 with its MAE-pretrained ViT after 10
COCO epochs. Our default 0.5 was picked by measurement on the 40-image ``wsis synth`` set with the demo's
from-scratch encoders, whose maps are soft: mean IoU 0.631 / 0.639 / 0.646 / 0.651 / 0.650 / 0.638 and
mask AP 0.247 / 0.260 / 0.272 / 0.286 / 0.295 / 0.277 at 0.2 / 0.3 / 0.4 / 0.5 / 0.6 / 0.7; with today's
demo configuration 0.5 and 0.6 stay within 0.01 of each other (0.759 / 0.765 there). A mask never
comes out empty: if nothing passes the threshold, the pixels of the box within half of the box's peak
probability are kept.

Training needs the whole box set on every process; label shards (``--shard``) are best produced with
``--checkpoint`` from one training run. Under ``torchrun`` training is data-parallel and rank 0 labels.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsis_cli.io import coco
from wsis_cli.runtime.errors import BadInputError, UsageError
from wsis_cli.runtime.log import get_logger
from wsis_cli.stages.mal_data import RoiImageSet, RoiTrainSet
from wsis_cli.stages.mal_inputs import check_boxes, load_boxes
from wsis_cli.stages.mal_settings import MalJob, MalSettings, ModelSpec
from wsis_cli.stages.mal_train import build_model, train
from wsis_cli.stages.mal_writeback import image_records, paste_mask

__all__ = ["DEMO_SETTINGS", "MalJob", "MalSettings", "MalSummary", "check_boxes", "demo_mal", "label_images",
           "paste_mask", "run", "training_boxes"]

log = get_logger("mal-label")
STAGE = "mal-label"


@dataclass
class MalSummary:
    boxes: int = 0
    images: int = 0
    trained_on: int = 0
    train_seconds: float = 0.0
    label_seconds: float = 0.0
    run_dir: str | None = None

    @property
    def boxes_per_second(self) -> float:
        return self.boxes / self.label_seconds if self.label_seconds > 0 else float("nan")


# -------------------------------------------------------------------------------------------- inputs


def training_boxes(ds: coco.Dataset, settings: MalSettings) -> list[dict[str, Any]]:
    """Boxes that train: w, h > 2 pixels and area >= ``min_train_area`` (upstream: > 2048, w, h > 2)."""
    out = []
    for a in ds.annotations:
        _, _, w, h = a["bbox"]
        if w > 2 and h > 2 and w * h >= settings.min_train_area and not a.get("iscrowd", 0):
            out.append(a)
    return out


@torch.no_grad()
def label_images(model: torch.nn.Module, dataset: RoiImageSet, device: torch.device, batch_size: int,
                 threshold: float, workers: int = 0, amp: bool = True,
                 exclusive: bool = True, channels_last: bool = True) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Yield ``(image_id, labelled annotations)`` for every image of ``dataset``, in order.

    RoIs of consecutive images are batched together up to ``batch_size``. ``exclusive``: pixels shared by
    boxes of one image go to the most confident box (:mod:`wsis_cli.stages.mal_writeback`).
    ``channels_last``: the network runs channels-last (1.9x faster on one CPU thread for the demo's
    ResNet; the same masks up to float rounding).
    """
    from torch.utils.data import DataLoader

    from wsis_cli.runtime.device import autocast
    from wsis_cli.runtime.seeding import worker_init_fn

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.eval().to(device, memory_format=fmt)
    # worker_init_fn: workers ignore SIGTERM, so a requeue stops the run with one line and no traceback
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, worker_init_fn=worker_init_fn)
    pending: list[dict[str, Any]] = []

    def flush() -> Iterator[tuple[int, list[dict[str, Any]]]]:
        crops = [it["crops"] for it in pending]
        buckets = [it["buckets"] for it in pending]
        probs = []
        if sum(len(c) for c in crops):
            x, b = torch.cat(crops), torch.cat(buckets)
            for i in range(0, len(x), batch_size):
                with autocast(device, amp):
                    crops = x[i : i + batch_size].to(device, memory_format=fmt)
                    logits = model(crops, b[i : i + batch_size].to(device))
                probs.append(torch.sigmoid(logits.float()).cpu())
        flat = torch.cat(probs).numpy() if probs else np.zeros((0, 1, 1), np.float32)
        start = 0
        for it in pending:
            n = len(it["crops"])
            image_id = it["image_id"]
            anns = dataset.boxes_by_image[image_id]
            yield image_id, image_records(flat[start : start + n], it["bounds"].numpy(), anns,
                                          dataset.images[image_id], threshold, exclusive)
            start += n
        pending.clear()

    waiting = 0
    for item in loader:
        pending.append(item)
        waiting += len(item["crops"])
        if waiting >= batch_size:
            yield from flush()
            waiting = 0
    if pending:
        yield from flush()


# ----------------------------------------------------------------------------------------------- run


def _load_model(path: str, settings: MalSettings) -> torch.nn.Module:
    from wsis_cli.io.run_dir import read_model

    obj = read_model(path, STAGE)
    try:
        spec = ModelSpec(**obj["spec"])
        model = build_model(spec, "none")
        model.load_state_dict(obj["teacher"] if settings.predict_with == "teacher" else obj["model"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise BadInputError(path, None, f"does not hold a mal-label model ({type(e).__name__}: {e})") from None
    log.info("mal-label: loaded %s (%s, crop %d)", path, spec.encoder, spec.crop_size)
    return model


def _train(ds: coco.Dataset, settings: MalSettings, job: MalJob, ctx: Any, progress: Any,
           summary: MalSummary) -> torch.nn.Module:
    from wsis_cli.io.run_dir import RunDir, default_run_dir

    run_path = Path(job.run) if job.run else default_run_dir(job.out, STAGE)
    run_dir = RunDir(run_path, STAGE, {**asdict(settings), "boxes": str(job.boxes)}, resume=job.resume)
    summary.run_dir = str(run_path)
    boxes = training_boxes(ds, settings)
    if not boxes:
        raise UsageError(f"mal-label: no box is large enough to train on (w, h > 2 and area >= "
                         f"{settings.min_train_area:g}); lower --min-train-area or pass --checkpoint")
    summary.trained_on = len(boxes)
    try:
        model = build_model(settings.model_spec(), settings.weights)
    except ValueError as e:  # e.g. a crop size that is not a multiple of the encoder's stride
        raise UsageError(f"mal-label: {e}") from None
    dataset = RoiTrainSet(boxes, ds.image_index, job.images, ds.source, settings.crop_size,
                          max_rate=settings.max_expand, outside=settings.outside,  # type: ignore[arg-type]
                          seed=settings.seed)
    t0 = time.perf_counter()
    student, teacher = train(model, dataset, settings.train_config(job.workers), run_dir, ctx, progress,
                             extra={"spec": asdict(settings.model_spec())})
    summary.train_seconds = time.perf_counter() - t0
    return teacher if settings.predict_with == "teacher" else student


def run(settings: MalSettings, job: MalJob, progress: Any = None, boxes: coco.Dataset | None = None) -> MalSummary:
    """Train (or load ``job.checkpoint``), then label every box of this shard's images into ``job.out``.

    ``boxes``: ``job.boxes`` already read by :func:`wsis_cli.stages.mal_inputs.load_boxes` (the command
    line checks them before torch loads); read here when ``None``. With ``job.resume`` both the training run (its ``last.pt``) and the labelling pass (``<out>.partial``)
    continue where they stopped.
    """
    from wsis_cli.io.checkpoint import ImageCheckpoint
    from wsis_cli.runtime.distributed import init_distributed
    from wsis_cli.runtime.progress import NullProgress
    from wsis_cli.runtime.seeding import seed_everything
    from wsis_cli.runtime.sharding import Shard, parse_shard, resolve_shard, shard_ids

    progress = progress or NullProgress()
    summary = MalSummary()
    ds = boxes if boxes is not None else load_boxes(job.boxes)
    seed_everything(settings.seed)
    ctx = init_distributed(job.device)
    try:
        if job.checkpoint:
            model = _load_model(job.checkpoint, settings)
        else:
            model = _train(ds, settings, job, ctx, progress, summary)
        if not ctx.is_main:
            return summary
        # under torchrun the ranks were the training's data-parallel workers, not label shards
        if ctx.enabled:
            shard = parse_shard(job.shard) if job.shard else Shard()
        else:
            shard = resolve_shard(job.shard)
        ids = shard_ids([im["id"] for im in ds.images], shard)
        by_image = ds.annotations_by_image()
        identity = {**asdict(settings), "boxes": str(job.boxes), "shard": [shard.index, shard.count],
                    "checkpoint": str(Path(job.checkpoint).resolve()) if job.checkpoint else None}
        crop_size = model.crop_size  # a --checkpoint's own, whatever the flags say
        t0 = time.perf_counter()
        with ImageCheckpoint(job.out, STAGE, identity, resume=job.resume) as ckpt:
            todo = [i for i in ids if i not in ckpt.done]
            dataset = RoiImageSet(todo, by_image, ds.image_index, job.images, ds.source, crop_size, settings.outside)  # type: ignore[arg-type]
            progress.start(len(ids), "mal-label: labelling")
            progress.advance(len(ids) - len(todo))
            fresh = 0  # boxes labelled by this run (the rate's); a resumed run's summary counts them all
            for image_id, records in label_images(model, dataset, ctx.device, settings.batch_size,
                                                  settings.threshold, job.workers, settings.amp,
                                                  settings.exclusive):
                ckpt.add(image_id, records)
                fresh += len(records)
                progress.advance(1)
            progress.finish()
            summary.label_seconds = time.perf_counter() - t0
            keep = set(ids)
            images = [im for im in ds.images if im["id"] in keep]
            annotations = ckpt.annotations()
            coco.write_dataset(coco.Dataset(images, annotations, ds.categories, dict(ds.extra), ds.source),
                               job.out)
        summary.images = len(ids)
        summary.boxes = len(annotations)
        earlier = f" ({len(ids) - len(todo)} of them resumed from {ckpt.path})" if len(todo) < len(ids) else ""
        log.info("mal-label: labelled %d boxes on %d images%s; %d boxes in %.1f s (%.1f boxes/s)", summary.boxes,
                 len(ids), earlier, fresh, summary.label_seconds,
                 fresh / summary.label_seconds if summary.label_seconds > 0 else float("nan"))
        return summary
    finally:
        ctx.shutdown()


# ---------------------------------------------------------------------------------------------- demo

# The demo's CPU-minute configuration. MAL's strength is a pretrained ViT (MAE on ImageNet); the demo and
# the tests have no network, so the encoder learns from scratch, where a small ConvNet picks up colour and
# shape within a few hundred steps and a ViT does not (mean IoU 0.659 vs 0.651 for vit_tiny with 2 blocks
# at 8 epochs, box-filled 0.620). Steps are ~1000x fewer than upstream, so the warm-ups shrink and the
# teacher follows faster (momentum 0.95: at 0.996 it would still be about half its initial weights).
# Measured on the quality test's set (40 synthetic images of 256², 164 boxes; mean IoU / mask AP at
# threshold 0.5; box-filled 0.620 / 0.228; seed noise about +-0.01 IoU), from the old configuration
# (ResNet-18 stages 1-2, scale buckets on, 8 epochs, MAL's CRF, weight 0.5: 0.659 / 0.295):
# - scale buckets off: 0.693 / 0.367. At 64² crops the buckets decode medium boxes on a 4x4 grid (MAL's
#   512² crops get 32x32); the output grid itself is no limit (a perfect 16x16 map pastes back at 0.978,
#   and a crop/2 output grid measured the same as crop/4);
# - ResNet-18 stage 1 only (stride 4, a 16x16 grid): 0.710 / 0.394, and ~40% cheaper;
# - more epochs (16, 24): 0.731 / 0.463, 0.731 / 0.470 - the from-scratch encoder is undertrained;
# - CRF loss weight 2 instead of 0.5 (24 epochs): 0.756 / 0.514 (seed 1: 0.761 / 0.537) - the CRF
#   self-training, not the MIL box fit, is what sharpens the masks (weights 0 / 0.5 / 2 with buckets off
#   at 8 epochs: 0.683 / 0.693 / 0.710);
# - CRF loss target from the dense variant (refine-crf's CRF) instead of MAL's MeanField: at 16 epochs,
#   weight 0.5, 0.737 vs 0.731; at 24 epochs, weight 2, 0.759 / 0.511 (seed 1: 0.766 / 0.538), within the
#   noise of MAL's; on the demo set 0.751 / 0.477 vs 0.732 / 0.448. Its targets are closer to the truth
#   (crop-space IoU 0.89 vs 0.80 for MAL's, from predictions at 0.72).
# Measured and not kept: lr 2e-3 or 3e-3 (worse), batch 8, decoder 64 channels, shorter warm-ups (worse),
# crop 128 (+0.02 for 4x the time), MAL's zeta 0.5 (as the paper's text), the CRF target computed at 2x
# or 4x the mask grid, labelling with the teacher or with flip averaging (all within the noise); a box
# expansion bound of 0.6 or 2.0 instead of MAL's 1.2 (24 epochs: 0.750 / 0.478 and 0.758 / 0.528).
# Session 4, same set and protocol (base: the configuration above, 24 epochs of batch 16 = 240 steps,
# 0.759 / 0.511, seed 1 0.766 / 0.538; after refine-crf 0.841 / 0.666): the encoder learns from scratch and
# is starved of optimiser steps, and the CPU cost is per step as much as per crop (our CRF kernel has a
# fixed per-call cost: batch 8 costs 1.4x batch 16 per epoch).
# - epochs 32 / 40 at batch 16: 0.793 / 0.606 (seed 1: 0.792 / 0.593) / 0.822 / 0.661, for 1.4x / 1.9x CPU;
# - batch 8 / 4 at 24 epochs: 0.816 / 0.650 (seed 1: 0.783 / 0.590) / 0.848 / 0.720, for 1.3x / 1.9x CPU;
# - 10 CRF iterations instead of 20: the same (32 epochs: 0.794 / 0.607 vs 0.793 / 0.606), and cheaper;
# - so batch 4 x 16 epochs (640 steps) with 10 CRF iterations, at the base's CPU (27.7 s vs 27.6 s):
#   0.799 / 0.607 (seed 1: 0.790 / 0.586); refined 0.879 / 0.750 (0.872 / 0.732). On the demo's 24
#   images of 128² it is flat (0.739 / 0.460 and 0.733 / 0.458 vs 0.751 / 0.477 and 0.738 / 0.461);
# - CRF loss weight 4 instead of 2 on top: 0.809 / 0.624 (seed 1: 0.785 / 0.561); demo 0.765 / 0.531
#   (seed 1: 0.745 / 0.472); refined 0.884 / 0.755 (0.862 / 0.708), demo 0.869 / 0.729 (0.853 / 0.677);
# - threshold 0.6 instead of 0.5 on top: 0.822 / 0.655 (seed 1: 0.780 / 0.567), demo 0.762 / 0.522
#   (seed 1: 0.748 / 0.483); refined +0.003 to +0.024 AP in the four runs. The CLI keeps 0.5.
# Measured and not kept: decoder 64 channels (0.752 / 0.504), crop 96 (0.763 / 0.526, 2.2x CPU), CRF
# weight 4 at batch 16 (seed 0 / 1: 0.773 / 0.543, 0.767 / 0.540: +0.01 / +0.02 AP, within noise), a
# ViT-tiny encoder (2 blocks, 4-pixel tokens, 12 epochs of batch 8; 3x the base's CPU): 0.744 / 0.469
# with a patch embedding, 0.761 / 0.496 with MAL's conv stem (--conv-stem); labelling with the teacher
# (seed 0 / 1: +0.011 / -0.012 IoU), pasting logits instead of probabilities, or other box scores (the
# mean certainty over the box, row/column coverage): all within +-0.006 AP; scoring by the true IoU
# (an oracle) would add only 0.07 AP, so the masks themselves, not their ranking, limit AP.
# On the demo's 24 images of 128² this recipe takes about 17 s of one CPU core, as before.
# Session 5, same set, every figure the mean over training seeds 0, 1, 2 (a single seed swings by +-0.04 AP);
# base: the recipe above (crop 64, 16 epochs, threshold 0.6): 0.806 / 0.624, refined 0.880 / 0.764.
# - exclusive write-back (mal_writeback: a pixel two boxes claim goes to the more confident one): the masks
#   of occluded boxes had claimed their occluders; seed 0 0.822 / 0.655 -> 0.837 / 0.669, refined
#   0.890 / 0.779 -> 0.913 / 0.821;
# - channels-last convolutions: a training step's forward/backward 31 -> 23 ms of CPU, so 20 epochs cost
#   what 16 did: 0.834 / 0.656 at threshold 0.6, 0.842 / 0.671 at 0.5 (0.45 / 0.55: 0.669 / 0.669 AP),
#   refined 0.912 / 0.819;
# - crop 48 instead of 64 (a 12x12 mask grid) and 24 epochs, at about the same CPU (below): 0.850 / 0.692
#   (seeds: 0.849 / 0.692, 0.853 / 0.702, 0.848 / 0.683), refined 0.926 / 0.849; demo set, seed 0:
#   0.807 / 0.589, refined 0.893 / 0.775, against 0.762 / 0.522 and 0.870 / 0.732 (seed 1: 0.798 / 0.571,
#   refined 0.898 / 0.777, against 0.748 / 0.483 and 0.858 / 0.689), at the same CPU (17.6 s vs 18.3 s);
#   32 epochs (1.3x CPU): 0.864 / 0.737 at threshold 0.5 (seeds 0, 1). Crop 40 (28 epochs) fell back
#   (seed 0: 0.842 / 0.671). On a set it was not tuned on (synth seed 1, training seeds 0 and 1):
#   0.859 / 0.712, refined 0.928 / 0.856, against 0.825 / 0.657 and 0.898 / 0.801 for the base.
# Measured and not kept (threshold 0.6, 20 epochs): cosine to 0 instead of 0.2 x lr (0.831 / 0.649),
# lr 1.5e-3 (0.818 / 0.621); at write-back: the largest connected component only (+0.003 AP raw, -0.007
# refined), hole filling (no change), a per-box Otsu threshold (-0.014 AP). An encoder pre-trained without
# labels on the same 40 images (`wsis freemask --pretrain`'s region contrast, ResNet-18 stem + stage 1 at
# 256 px, 20 epochs = 87 s of CPU, loaded with --weights): 0.748 / 0.500 with frozen BN, 0.748 / 0.488
# with BN trained, against 0.822 / 0.655 from scratch (with the pixel-to-region term too, 10 epochs, 60 s,
# exclusive write-back: 0.743 / 0.477 against 0.837 / 0.669; without the position term, 10 epochs, with
# this recipe: 0.806 / 0.601 against 0.849 / 0.692): those features hurt MAL here, on top of costing
# 1.5-3x its CPU.
DEMO_SETTINGS = MalSettings(
    encoder="resnet18", weights="none", encoder_depth=1, crop_size=48, decoder_dim=32, scale_buckets=False,
    epochs=24, batch_size=4, lr=1e-3, warmup_epochs=0.5, mil_warmup=20, crf_warmup=60, crf_iterations=10,
    crf_variant="dense", crf_weight=4.0, ema_momentum=0.95, min_train_area=64.0, threshold=0.5,
)


def demo_mal(images_dir: Path, boxes: coco.Dataset, work: Path, settings: MalSettings = DEMO_SETTINGS) -> coco.Dataset:
    """The demo's box → mask path: train a small MAL on ``boxes`` and label them (CPU-friendly)."""
    work.mkdir(parents=True, exist_ok=True)
    boxes_path = work / "mal-boxes.json"
    coco.write_dataset(boxes, boxes_path)
    out = work / "mal-label.json"
    run_dir = work / "mal-label-run"
    model = run_dir / "model.pt"
    # a finished model is reused; an interrupted demo continues its run folder
    job = MalJob(boxes=str(boxes_path), images=str(images_dir), out=str(out), run=str(run_dir),
                 checkpoint=str(model) if model.exists() else None, resume=not model.exists(), device="cpu")
    run(settings, job)
    return coco.load_dataset(out)
