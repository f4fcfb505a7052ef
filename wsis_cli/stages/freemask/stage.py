"""``wsis freemask``: coarse class-agnostic instance masks without labels (FreeSOLO's Free Mask), or with a
few labelled masks that fine-tune the backbone first (``--labeled``).

Input: a folder of images (ids 1..N from the sorted file names) or a COCO file listing images with an
images root. Output: a COCO dataset with one category ("object" unless told otherwise), each annotation a
mask (RLE), its tight XYWH box, mask area and ``score`` = the decayed maskness; optionally the 128-d query
embeddings in an HDF5 sidecar (``/images/<id>``: ``embeddings`` (K, 128) float16, ``annotation_ids`` (K,)).
Shards with ``--shard``; resumes with ``--resume`` (finished images in ``<out>.partial``).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsis_cli.io import coco
from wsis_cli.runtime.errors import BadInputError
from wsis_cli.runtime.log import get_logger
from wsis_cli.stages.freemask.demo import DEMO_PRETRAIN, DEMO_SPEC
from wsis_cli.stages.freemask.features import (
    annotations_for,
    build_backbone,
    generate,
    load_backbone_state,
)
from wsis_cli.stages.freemask.masks import FreeMaskParams
from wsis_cli.stages.freemask.settings import STAGE, FreeMaskJob, FreeMaskSettings, FreeMaskSummary
from wsis_cli.stages.freemask.tune import Sample, fine_tune, make_sample

log = get_logger("freemask")


def input_images(job: FreeMaskJob) -> tuple[list[dict[str, Any]], str | None, str]:
    """``(image records, images root, source name)`` of the job's input (folder or COCO file)."""
    from wsis_cli.io.images import folder_images

    p = Path(job.inputs)
    if p.is_dir():
        return folder_images(p), str(p), str(p)
    ds = coco.load_dataset(job.inputs)
    if not ds.images:
        raise BadInputError(ds.source, "images", "lists no images")
    return ds.images, job.images, ds.source


class _Images(torch.utils.data.Dataset):
    """``(image_id, RGB array)`` of image records, read through :mod:`wsis_cli.io.images` (in workers)."""

    def __init__(self, records: list[dict[str, Any]], root: str | None, source: str) -> None:
        self.records, self.root, self.source = records, root, source

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        from wsis_cli.io.images import load_image_for

        im = self.records[i]
        return im["id"], load_image_for(self.root, im, self.source)


def _as_is(item: Any) -> Any:
    return item  # keep numpy arrays (the default would turn them into tensors)


def _read(records: list[dict[str, Any]], root: str | None, source: str, workers: int = 0):
    """Images in record order; ``workers`` > 0 decodes them in background processes."""
    data = _Images(records, root, source)
    if workers <= 0 or len(records) < 2:
        yield from (data[i] for i in range(len(data)))
        return
    loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=workers,
                                         prefetch_factor=4, collate_fn=_as_is)
    yield from loader


def labelled_samples(labeled: coco.Dataset, records: list[dict[str, Any]], root: str | None, source: str,
                     net: torch.nn.Module, settings: FreeMaskSettings, device: torch.device,
                     batch_size: int) -> list[Sample]:
    """Contrastive samples of the labelled images: Free Mask's masks matched to their ground truth.

    Labelled images are found among the inputs by ``file_name``; an image of the labels file that is not
    an input image is bad input, as is a labels file without any mask.
    """
    from wsis_cli.io import rle as rle_utils

    if not labeled.annotations:
        raise BadInputError(labeled.source, "annotations", "has no masks (--labeled needs instance masks)")
    by_name = {Path(im["file_name"]).as_posix(): im for im in records}
    by_image = labeled.annotations_by_image()
    chosen: list[tuple[dict[str, Any], np.ndarray]] = []
    for i, im in enumerate(labeled.images):
        if not by_image[im["id"]]:
            continue
        rec = by_name.get(Path(im["file_name"]).as_posix())
        if rec is None:
            raise BadInputError(labeled.source, f"images[{i}] (id {im['id']})",
                                f"file_name {im['file_name']!r} is not one of the input images")
        gts = np.stack([rle_utils.decode(rle_utils.to_compressed(a["segmentation"], im["height"], im["width"]))
                        for a in by_image[im["id"]]]).astype(bool)
        chosen.append((rec, gts))
    if not chosen:
        raise BadInputError(labeled.source, "annotations", "has no masks on any image")
    images = dict(_read([rec for rec, _ in chosen], root, source))
    for rec, gts in chosen:
        if gts.shape[1:] != images[rec["id"]].shape[:2]:
            raise BadInputError(labeled.source, f"image {rec['file_name']}", "mask size differs from the image")
    generated = dict(generate(net, ((rec["id"], images[rec["id"]]) for rec, _ in chosen), settings.backbone,
                              settings.params, device, batch_size=batch_size))
    return [make_sample(images[rec["id"]], gts, generated[rec["id"]].masks.cpu().numpy(), settings.tune.match_iou)
            for rec, gts in chosen]


def pretrained_weights(settings: FreeMaskSettings, job: FreeMaskJob, records: list[dict[str, Any]],
                       root: str | None, source: str, device: torch.device, progress: Any = None) -> str:
    """Self-supervised pre-training on every input image (``--pretrain``, no label read): the path of the
    resulting ``model.pt`` in ``<run>/pretrain``, which ``--weights`` accepts. A finished pre-training in
    that folder is reused with ``--resume``; an interrupted one continues from its last epoch."""
    from wsis_cli.io.run_dir import RunDir, default_run_dir
    from wsis_cli.stages.freemask.pretrain import build_pretrain_backbone, pretrain, region_samples

    assert settings.pretrain is not None
    folder = Path(job.run or default_run_dir(job.out, STAGE)) / "pretrain"
    if job.resume and (folder / "model.pt").exists():
        log.info("freemask: pre-trained backbone from %s", folder / "model.pt")
        return str(folder / "model.pt")
    run = RunDir(folder, STAGE, {"backbone": asdict(settings.backbone), "pretrain": settings.pretrain.to_json(),
                                 "inputs": str(job.inputs)}, resume=job.resume)
    torch.manual_seed(settings.pretrain.seed)
    images = [img for _, img in _read(records, root, source, job.workers)]
    samples = region_samples(images, settings.pretrain)
    log.info("freemask: self-supervised pre-training on %d images (%d regions)", len(samples),
             sum(len(s.labels) for s in samples))
    spec = settings.pretrain.train_spec(settings.backbone)
    net = build_pretrain_backbone(spec).to(device)
    result = pretrain(net, samples, spec, settings.pretrain, device, run, progress)
    run.save_model(net.state_dict(), {"loss": result["loss"], "images": len(samples), "kind": "pretrain"})
    log.info("freemask: pre-trained backbone in %s (use it again with --weights)", run.model_path)
    return str(run.model_path)


def prepare_backbone(settings: FreeMaskSettings, job: FreeMaskJob, records: list[dict[str, Any]],
                     root: str | None, source: str, device: torch.device, progress: Any = None) -> torch.nn.Module:
    """The backbone Free Mask runs on: as ``--weights`` gives it, loaded from ``--checkpoint``,
    pre-trained without labels on the inputs (``--pretrain``), and/or fine-tuned on ``--labeled`` (in the
    run folder, checkpointed every epoch, ``--resume``-able)."""
    from wsis_cli.io.run_dir import RunDir, default_run_dir, read_model

    if job.checkpoint:
        saved = read_model(job.checkpoint, STAGE)
        net = build_backbone(settings.backbone, weights="none").to(device)
        load_backbone_state(net, saved["model"], job.checkpoint)
        log.info("freemask: backbone from %s", job.checkpoint)
        return net
    if settings.pretrain is not None:
        # loaded back through the ordinary --weights path (frozen BatchNorm, key matching), as a user would
        weights = pretrained_weights(settings, job, records, root, source, device, progress)
        net = build_backbone(settings.backbone, weights=weights).to(device)
    else:
        net = build_backbone(settings.backbone).to(device)
    if not job.labeled:
        return net
    labeled = coco.load_dataset(job.labeled, need="segmentation")
    torch.manual_seed(settings.seed)
    run = RunDir(job.run or default_run_dir(job.out, STAGE), STAGE,
                 {**settings.to_json(), "labeled": str(job.labeled)}, resume=job.resume)
    samples = labelled_samples(labeled, records, root, source, net, settings, device, job.batch_size)
    log.info("freemask: fine-tuning on %d labelled images (%d masks)", len(samples),
             sum(len(s.labels) for s in samples))
    result = fine_tune(net, samples, settings.backbone, settings.tune, device, run, progress)
    run.save_model(net.state_dict(), {"loss": result["loss"], "labeled_images": len(samples)})
    log.info("freemask: fine-tuned backbone in %s", run.model_path)
    return net


def run(settings: FreeMaskSettings, job: FreeMaskJob, progress: Any = None) -> FreeMaskSummary:
    """Label every input image of this shard with Free Mask and write ``job.out`` (and the sidecar)."""
    from wsis_cli.io.checkpoint import ImageCheckpoint
    from wsis_cli.io.run_dir import default_run_dir
    from wsis_cli.models.registry import check_arch
    from wsis_cli.runtime.device import resolve_device
    from wsis_cli.runtime.errors import UsageError
    from wsis_cli.runtime.progress import NullProgress
    from wsis_cli.runtime.seeding import seed_everything
    from wsis_cli.runtime.sharding import resolve_shard, shard_ids

    try:
        check_arch(settings.backbone.arch)  # a timm name exists (settings.py checked its form only)
    except ValueError as e:
        raise UsageError(f"--arch: {e}") from None
    t0 = time.perf_counter()
    progress = progress or NullProgress()
    seed_everything(settings.seed)
    records, root, source = input_images(job)
    device = resolve_device(job.device)
    net = prepare_backbone(settings, job, records, root, source, device, progress)
    shard = resolve_shard(job.shard)
    ids = set(shard_ids([im["id"] for im in records], shard))
    todo_records = [im for im in records if im["id"] in ids]
    identity = {**settings.to_json(), "inputs": str(job.inputs), "labeled": job.labeled,
                "checkpoint": job.checkpoint, "shard": [shard.index, shard.count]}
    writer = None
    try:
        with ImageCheckpoint(job.out, STAGE, identity, resume=job.resume, inputs={
                "inputs": job.inputs, "labeled": job.labeled, "checkpoint": job.checkpoint}) as ckpt:
            if job.embeddings:
                from wsis_cli.io.h5 import H5Writer

                writer = H5Writer(job.embeddings, STAGE, identity, {"inputs": str(job.inputs)}, resume=job.resume)
                writer.open()
            done = ckpt.done if writer is None else ckpt.done & writer.done_ids
            progress.start(len(todo_records), "freemask")
            progress.advance(len([im for im in todo_records if im["id"] in done]))
            pending = [im for im in todo_records if im["id"] not in done]
            for image_id, res in generate(net, _read(pending, root, source, job.workers), settings.backbone,
                                          settings.params, device, batch_size=job.batch_size, amp=job.amp):
                anns = annotations_for(image_id, res)
                if writer is not None and not writer.has(image_id):
                    writer.put(image_id, {"embeddings": res.embeddings.cpu().numpy(),
                                          "annotation_ids": np.asarray([a["id"] for a in anns], np.int64),
                                          "scores": res.scores.cpu().numpy()},
                               dtypes={"embeddings": np.float16},
                               dataset_attrs={"embeddings": {"dim": settings.params.embed_dim}})
                ckpt.add(image_id, anns)
                progress.advance(1)
            progress.finish()
            out = coco.Dataset(todo_records, ckpt.annotations(), [{"id": 1, "name": settings.category}],
                               {"info": {"description": "wsis freemask coarse masks"}}, source)
            coco.write_dataset(out, job.out)
            if writer is not None:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.abort()
    log.info("freemask: %d masks on %d images", len(out.annotations), len(todo_records))
    trained = not job.checkpoint and (job.labeled or settings.pretrain is not None)
    return FreeMaskSummary(job.out, len(todo_records), len(out.annotations), job.embeddings,
                           str(job.run or default_run_dir(job.out, STAGE)) if trained else None,
                           time.perf_counter() - t0)


def demo_freemask(images_dir: Path, work: Path, labels: coco.Dataset | None = None) -> coco.Dataset:
    """Fast demo of the label-free path: a small ResNet pre-trained from scratch on the demo images
    themselves (``--pretrain``'s region contrast, no label read; ``labels`` is ignored), then Free Mask on
    images read at short side 384 (3x the demo's 128 px), as ``wsis freemask IMAGES --pretrain`` would with
    these settings. On the demo's 24 images of 128 px: 20 s, class-agnostic AP 4.9 / AP50 13.2 (colour
    components 9.3 / 16.1); read at 512 px: 94 s, 6.5 / 15.5; 6 epochs at 512: 9.7 AP50.
    """
    from wsis_cli.stages.freemask.pretrain import build_pretrain_backbone, pretrain, region_samples

    del labels  # the label-free path reads no label
    spec = DEMO_SPEC
    train_spec = DEMO_PRETRAIN.train_spec(spec)
    records, root, source = input_images(FreeMaskJob(inputs=str(images_dir), out="-"))
    images = dict(_read(records, root, source))
    device = torch.device("cpu")
    torch.manual_seed(0)
    trained = build_pretrain_backbone(train_spec)
    pretrain(trained, region_samples(list(images.values()), DEMO_PRETRAIN), train_spec, DEMO_PRETRAIN, device)
    net = build_backbone(spec, weights="none")
    load_backbone_state(net, trained.state_dict(), "demo pre-training")
    params = FreeMaskParams(min_score=None, split=False)  # the recipe its figures were measured with
    anns: list[dict[str, Any]] = []
    for image_id, res in generate(net, images.items(), spec, params, device, batch_size=8):
        anns += annotations_for(image_id, res)
    work.mkdir(parents=True, exist_ok=True)
    return coco.Dataset(records, anns, [{"id": 1, "name": "object"}], {}, source)

