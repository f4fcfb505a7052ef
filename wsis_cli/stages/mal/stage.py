"""``wsis mal-label``: boxes in, instance masks out (MAL, Lan et al. CVPR 2023).

Trains the class-agnostic MAL network on the boxes themselves (:mod:`wsis_cli.stages.mal.train`; or
loads ``--checkpoint``), then labels every box: the 1.3 x crop around it is decoded, the probability map
is resized into that window, pasted into the image (clipped at its borders), cut to the box, thresholded
and written as RLE; pixels shared by boxes of one image go to one box (a nested box's claim first, else the
most confident box: :mod:`wsis_cli.stages.mal.writeback`, ``--no-exclusive`` keeps overlaps). Each output
annotation keeps the input's ``id``, ``image_id``, ``bbox``, ``category_id``, ``score`` and other keys;
``area`` is the *mask* area (upstream writes the box area). Without an input ``score`` the score is the
mask's mean foreground probability, so that AP ranks confident masks first.

Threshold: upstream thresholds ``sigmoid x box mask`` at 0.1 with its MAE-pretrained ViT after 10
COCO epochs. Our default is 0.4 (``MalSettings.threshold``): a few hundred steps leave the maps soft at
object edges, and human masks include the edge (figures: bench/NOTES.md, "mal-label mask threshold" and
README "Real images"). A mask never comes out empty: if nothing passes the threshold, the pixels of the box within
half of the box's peak probability are kept.

Training needs the whole box set on every process; label shards (``--shard``) are best produced with
``--checkpoint`` from one training run. Under ``torchrun`` training is data-parallel and rank 0 labels.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsis_cli.io import coco
from wsis_cli.runtime.errors import BadInputError, UsageError
from wsis_cli.runtime.log import get_logger
from wsis_cli.stages.mal.data import RoiImageSet, RoiTrainSet
from wsis_cli.stages.mal.demo import DEMO_SETTINGS
from wsis_cli.stages.mal.inputs import check_boxes, load_boxes
from wsis_cli.stages.mal.settings import MalJob, MalSettings, ModelSpec
from wsis_cli.stages.mal.train import build_model, train
from wsis_cli.stages.mal.writeback import image_records, paste_mask

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
                 exclusive: bool = True, channels_last: bool = True,
                 flip: bool = False) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Yield ``(image_id, labelled annotations)`` for every image of ``dataset``, in order.

    RoIs of consecutive images are batched together, but every forward pass has one shape: ``batch_size``
    crops of one scale bucket (all buckets alike when the network has none), a partial batch padded with
    copies of its last crop whose outputs are dropped. Float kernels may pick another algorithm for
    another batch size (CPU convolutions do for batches of 1-3), so a box's map, its mask and its score
    would otherwise depend on its neighbours in the batch, which shard boundaries and resumes move
    (issue 17). Padding costs at most one partial batch per bucket at the end, plus one wherever an image
    waits on a bucket for more than ``4 x batch_size`` labelled boxes. ``exclusive``: pixels shared by
    boxes of one image go to one box (:mod:`wsis_cli.stages.mal.writeback`).
    ``channels_last``: the network runs channels-last (1.9x faster on one CPU thread for the demo's
    ResNet; the same masks up to float rounding). ``flip``: each crop's map is the mean of the maps of the
    crop and of its mirror image (mirrored back), at twice the network time.
    """
    from torch.utils.data import DataLoader

    from wsis_cli.runtime.device import autocast
    from wsis_cli.runtime.seeding import worker_init_fn

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.eval().to(device, memory_format=fmt)
    by_bucket = getattr(getattr(model, "decoder", None), "scale_buckets", True)
    # worker_init_fn: workers ignore SIGTERM, so a requeue stops the run with one line and no traceback
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, worker_init_fn=worker_init_fn)
    pending: deque[dict[str, Any]] = deque()  # images in order, until every box of theirs has its map
    queues: dict[int, list[tuple[dict[str, Any], int]]] = {}  # bucket -> (image, box) awaiting the network
    held = 0  # maps of pending images

    def key(item: dict[str, Any], j: int) -> int:
        return int(item["buckets"][j]) if by_bucket else 0

    def forward(bucket: int) -> None:
        nonlocal held
        take, queues[bucket] = queues[bucket][:batch_size], queues[bucket][batch_size:]
        crops = torch.stack([it["crops"][j] for it, j in take])
        buckets = torch.stack([it["buckets"][j] for it, j in take])
        pad = batch_size - len(take)
        if pad:  # copies, so that the shape never changes; their outputs are dropped below
            crops = torch.cat([crops, crops[-1:].expand(pad, -1, -1, -1)])
            buckets = torch.cat([buckets, buckets[-1:].expand(pad)])
        x, b = crops.to(device, memory_format=fmt), buckets.to(device)
        with autocast(device, amp):
            probs = torch.sigmoid(model(x, b).float())
            if flip:
                probs = (probs + torch.sigmoid(model(x.flip(-1), b).float()).flip(-1)) / 2
        probs = probs.cpu().numpy()
        for (it, j), p in zip(take, probs, strict=False):
            it["probs"][j] = p
            it["left"] -= 1
            if not it["left"]:
                it["crops"] = None
        held += len(take)

    def ready() -> Iterator[tuple[int, list[dict[str, Any]]]]:
        nonlocal held
        while pending and not pending[0]["left"]:
            it = pending.popleft()
            held -= len(it["probs"])
            image_id = it["image_id"]
            probs = np.stack(it["probs"]) if it["probs"] else np.zeros((0, 1, 1), np.float32)
            yield image_id, image_records(probs, it["bounds"].numpy(), dataset.boxes_by_image[image_id],
                                          dataset.images[image_id], threshold, exclusive)

    for item in loader:
        n = len(item["crops"])
        item["probs"], item["left"] = [None] * n, n
        pending.append(item)
        for j in range(n):
            queue = queues.setdefault(key(item, j), [])
            queue.append((item, j))
            if len(queue) == batch_size:
                forward(key(item, j))
        # the oldest image waits on a bucket that fills slowly: run it padded rather than hold many maps
        while pending[0]["left"] and held >= 4 * batch_size:
            first = pending[0]
            forward(key(first, next(j for j, p in enumerate(first["probs"]) if p is None)))
        yield from ready()
    for bucket, queue in queues.items():
        while queue:
            forward(bucket)
            queue = queues[bucket]
    yield from ready()


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

    boxes = training_boxes(ds, settings)
    if not boxes:
        raise UsageError(f"mal-label: no box is large enough to train on (w, h > 2 and area >= "
                         f"{settings.min_train_area:g}); lower --min-train-area or pass --checkpoint")
    summary.trained_on = len(boxes)
    if settings.crop_size is None:  # resolved before the run folder records the settings
        settings = settings.with_crop_for(boxes)
        side = statistics.median((a["bbox"][2] * a["bbox"][3]) ** 0.5 for a in boxes)
        log.info("mal-label: crop %d² (auto: median training box side %.0f px)", settings.crop_size, side)
    run_path = Path(job.run) if job.run else default_run_dir(job.out, STAGE)
    run_dir = RunDir(run_path, STAGE, {**asdict(settings), "boxes": str(job.boxes)}, resume=job.resume)
    summary.run_dir = str(run_path)
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


def run(settings: MalSettings, job: MalJob, progress: Any = None) -> MalSummary:
    """Train (or load ``job.checkpoint``), then label every box of this shard's images into ``job.out``.

    ``job.boxes_data``: ``job.boxes`` already read by :func:`wsis_cli.stages.mal.inputs.load_boxes` (the
    command line checks them before torch loads); read here when ``None``. With ``job.resume`` both the training run (its ``last.pt``) and the labelling pass (``<out>.partial``)
    continue where they stopped.
    """
    from wsis_cli.io.checkpoint import ImageCheckpoint
    from wsis_cli.runtime.distributed import init_distributed
    from wsis_cli.runtime.progress import NullProgress
    from wsis_cli.runtime.seeding import seed_everything
    from wsis_cli.runtime.sharding import Shard, parse_shard, resolve_shard, shard_ids

    progress = progress or NullProgress()
    summary = MalSummary()
    ds = job.boxes_data if job.boxes_data is not None else load_boxes(job.boxes)
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
        with ImageCheckpoint(job.out, STAGE, identity, resume=job.resume,
                            inputs={"boxes": job.boxes, "checkpoint": job.checkpoint}) as ckpt:
            todo = [i for i in ids if i not in ckpt.done]
            dataset = RoiImageSet(todo, by_image, ds.image_index, job.images, ds.source, crop_size, settings.outside)  # type: ignore[arg-type]
            progress.start(len(ids), "mal-label: labelling")
            progress.advance(len(ids) - len(todo))
            fresh = 0  # boxes labelled by this run (the rate's); a resumed run's summary counts them all
            for image_id, records in label_images(model, dataset, ctx.device, settings.batch_size,
                                                  settings.threshold, job.workers, settings.amp,
                                                  settings.exclusive, flip=settings.flip):
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
