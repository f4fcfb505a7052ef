"""``wsis irnet``: class attention maps + image-level labels → instance pseudo-labels (IRNet, Ahn et al. 2019).

1. Relation mining (:mod:`~wsis_cli.stages.irnet.relations`): confident foreground/background labels from
   the CAMs, refined by our CRF kernel.
2. Training (:mod:`~wsis_cli.stages.irnet.train`) of the boundary and displacement branches
   (:mod:`wsis_cli.models.irnet_heads`) on a frozen backbone: by default the CAM classifier's, found
   through the provenance ``cams.h5`` records; ``weights`` overrides it. Skipped with ``checkpoint``.
3. Inference per image (:mod:`~wsis_cli.stages.irnet.instances`): boundary → affinities, displacement →
   centroids → instance map, instance-wise CAMs, sparse random walk, instance synthesis with scores
   (centroids must be sinks of the field and the walk keeps instances apart: see ``irnet_instances``).

Writes a COCO dataset (RLE masks, XYWH boxes, mask areas, scores) and optionally semantic label maps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsis_cli.runtime.errors import BadInputError
from wsis_cli.runtime.log import get_logger
from wsis_cli.stages.irnet.demo import DEMO_SETTINGS
from wsis_cli.stages.irnet.settings import (
    FROM_CAM,
    IDS_PER_IMAGE,
    STAGE,
    IRNetJob,
    IRNetResult,
    IRNetSettings,
)

log = get_logger("irnet")

# ------------------------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    reader: Any  # H5Reader of the CAMs
    dataset: Any  # coco.Dataset of the image records and categories
    ids: list[int]  # every image id in the CAM store, sorted
    images: str | None  # the images folder: --images, else the one cams.h5 records


def open_inputs(job: IRNetJob) -> Inputs:
    """Open ``cams.h5`` (stage ``cam``) and the labels file it names (or ``job.labels``), cross-checked."""
    from wsis_cli.io import coco
    from wsis_cli.io.h5 import H5Reader

    reader = H5Reader(job.cams, expect_stage="cam")
    labels = job.labels or reader.inputs.get("labels")
    if not labels or labels == "-":
        raise BadInputError(job.cams, None, "records no labels file; pass --labels with the image records")
    ds = coco.load_dataset(labels)
    index = ds.image_index
    ids = reader.ids()
    for image_id in ids:
        if image_id not in index:
            raise BadInputError(job.cams, f"image {image_id}", f"not an image of {labels}")
    images = job.images or reader.inputs.get("images")  # wsis cam records its image folder
    return Inputs(reader, ds, ids, images)


def image_cams(inputs: Inputs, image_id: int) -> tuple[np.ndarray, list[int]]:
    """``(K, ceil(H/4), ceil(W/4))`` float32 CAMs and their category ids, checked against the image record."""
    rec = inputs.dataset.image_index[image_id]
    arr = inputs.reader.get(image_id, ["cams"], dtype=np.float32)["cams"]
    attrs = inputs.reader.dataset_attrs(image_id, "cams")
    cats = [int(c) for c in attrs.get("category_ids", [])]
    h4, w4 = -(-rec["height"] // 4), -(-rec["width"] // 4)
    where = f"image {image_id}"
    if arr.ndim != 3 or arr.shape[1:] != (h4, w4) or arr.shape[0] != len(cats):
        raise BadInputError(inputs.reader.path, where, f"cams of shape {arr.shape} with {len(cats)} category ids; "
                            f"expected (K, {h4}, {w4}) at stride 4 for a {rec['height']}x{rec['width']} image")
    if int(attrs.get("stride", 4)) != 4:
        raise BadInputError(inputs.reader.path, where, f"cams at stride {attrs.get('stride')}, expected 4")
    known = set(inputs.dataset.category_ids)
    bad = [c for c in cats if c not in known]
    if bad:
        raise BadInputError(inputs.reader.path, where, f"category ids {bad} are not categories of the labels file")
    return np.clip(np.nan_to_num(arr), 0.0, 1.0), cats


def _loader(inputs: Inputs, images: str | None, image_id: int) -> Any:
    from wsis_cli.io.images import load_image_for

    rec = inputs.dataset.image_index[image_id]
    return lambda: load_image_for(images, rec, inputs.dataset.source)


# ------------------------------------------------------------------------------------------- model


def build_backbone(settings: IRNetSettings, cams_reader: Any) -> Any:
    """The frozen backbone: the CAM classifier's (``weights="cam"``) or one built from ``settings.weights``."""
    from wsis_cli.models import registry

    if settings.weights == FROM_CAM:
        from wsis_cli.io.run_dir import read_model

        path = cams_reader.inputs.get("checkpoint")
        if not path:
            raise BadInputError(cams_reader.path, None, "records no CAM classifier checkpoint; pass --weights "
                                "(a torchvision weights name, a checkpoint file or none)")
        obj = read_model(path, "cam")
        arch = obj.get("settings", {}).get("arch", "resnet50")
        # same weights, but always IRNet's strides (2, 2, 2, 1): a stride change needs no new weights
        return registry.build(arch, obj["model"], output_stride=16, source=str(path))
    from wsis_cli.stages.backbone import build_backbone as build

    return build(settings.arch, settings.weights, output_stride=16)


def load_irnet(path: str) -> Any:
    """Rebuild a trained IRNet from a ``model.pt`` of stage ``irnet`` (``--checkpoint``)."""
    from wsis_cli.io.run_dir import read_model
    from wsis_cli.models import registry
    from wsis_cli.models.irnet_heads import IRNet

    obj = read_model(path, STAGE)
    model = IRNet(registry.build(obj.get("arch", "resnet50"), None, output_stride=16), scale=int(obj.get("scale", 1)))
    try:
        model.load_state_dict(obj["model"])
    except RuntimeError as e:
        raise BadInputError(path, None, f"weights do not fit an IRNet: {str(e).splitlines()[0]}") from None
    return model


def mine_relations(inputs: Inputs, images: str | None, settings: IRNetSettings, device: torch.device,
                   progress: Any) -> list[Any]:
    """Relation labels of every image (at the branches' stride, ``4 / scale``), as training samples."""
    from wsis_cli.stages.irnet.relations import cam_basins, relation_labels, strided_labels
    from wsis_cli.stages.irnet.train import Sample
    from wsis_kernels.crf import CRFParams

    params = CRFParams(iterations=settings.crf_iterations)
    samples = []
    progress.start(len(inputs.ids), "irnet relations")
    for image_id in inputs.ids:
        load = _loader(inputs, images, image_id)
        cams, _ = image_cams(inputs, image_id)
        full = relation_labels(load(), cams, fg_threshold=settings.fg_threshold,
                               bg_threshold=settings.bg_threshold, params=params, device=device)
        stride = 4 // settings.scale
        regions = strided_labels(cam_basins(full, cams, settings.basin_threshold), stride) \
            if settings.basin_threshold > 0 else None
        samples.append(Sample(image_id, load, strided_labels(full, stride), regions))
        progress.advance(1)
    progress.finish()
    return samples


def train_model(inputs: Inputs, settings: IRNetSettings, job: IRNetJob, ctx: Any, progress: Any) -> Any:
    """Mine relations, train the heads (or resume), measure the mean shift, save ``model.pt``."""
    from wsis_cli.io.run_dir import RunDir, default_run_dir
    from wsis_cli.models.irnet_heads import IRNet
    from wsis_cli.runtime.seeding import seed_everything
    from wsis_cli.stages.irnet.train import IRNetTrainConfig, Sample, measure_mean_shift, train

    run_path = Path(job.run) if job.run else default_run_dir(job.out, STAGE)
    run = RunDir(run_path, STAGE, {**settings.to_json(), "cams": str(Path(job.cams).resolve())}, resume=job.resume)
    if job.resume and run.model_path.exists():
        log.info("irnet: %s holds the trained model; predicting with it", run.model_path)
        return load_irnet(str(run.model_path))
    seed_everything(settings.seed)
    model = IRNet(build_backbone(settings, inputs.reader), scale=settings.scale).to(ctx.device)
    if settings.epochs > 0:
        samples = mine_relations(inputs, inputs.images, settings, ctx.device, progress)
    else:  # nothing to learn: only the mean shift is measured
        samples = [Sample(i, _loader(inputs, inputs.images, i), np.zeros((1, 1), np.uint8)) for i in inputs.ids]
    amp = settings.amp and ctx.device.type == "cuda"
    cfg = IRNetTrainConfig(settings.epochs, settings.batch_size, settings.crop, settings.edge_lr, settings.dp_lr,
                           settings.weight_decay, 0.9, settings.seed, amp, job.workers, settings.train_radius)
    train(model, samples, cfg, ctx, run, progress)
    shift = measure_mean_shift(model, [s.load for s in samples], ctx, amp)
    model.mean_shift.copy_(shift.to(model.mean_shift.device))
    log.info("irnet: displacement mean shift (dy, dx) = (%.3f, %.3f) over %d images", *shift.tolist(), len(samples))
    if ctx.is_main:
        run.save_model(model.state_dict(), {"arch": model.backbone.arch, "last_stride": 1, "scale": model.scale})
    ctx.barrier()
    return model


# ------------------------------------------------------------------------------------------- inference


def predict_image(model: Any, image: np.ndarray, cams: np.ndarray, settings: IRNetSettings,
                  device: torch.device, semantic: bool = False) -> tuple[list[Any], np.ndarray | None]:
    """Detections (channel = index into ``cams``) and, if asked, the semantic map (class index + 1)."""
    from wsis_cli.models.backbones import normalize
    from wsis_cli.models.irnet_heads import infer_maps
    from wsis_cli.stages.irnet.instances import semantic_labels, synthesize

    height, width = image.shape[:2]
    x = normalize(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None])[0].to(device)
    edge, disp = infer_maps(model, x)
    walk = {"beta": settings.beta, "steps": settings.walk_steps, "radius": settings.walk_radius}
    dets = synthesize(cams, edge, disp.cpu().numpy(), height, width, bg_threshold=settings.ins_bg_threshold,
                      refine_steps=settings.refine_steps, centroid_threshold=settings.centroid_threshold,
                      sink_divergence=settings.centroid_divergence, separate_instances=settings.separate_instances,
                      fragment_fraction=settings.fragment_fraction,
                      field_cam_threshold=settings.field_cam_threshold, peak_split=settings.peak_split, **walk)
    sem = semantic_labels(cams, edge, height, width, bg_threshold=settings.sem_bg_threshold, **walk) if semantic \
        else None
    return dets, sem


def to_annotations(image_id: int, dets: list[Any], cats: list[int], min_score: float) -> list[dict[str, Any]]:
    from wsis_cli.io import coco, rle

    out = []
    kept = sorted((d for d in dets if d.score >= min_score), key=lambda d: -d.score)
    for k, d in enumerate(kept[: IDS_PER_IMAGE - 1]):
        out.append(coco.annotation(image_id * IDS_PER_IMAGE + k + 1, image_id, cats[d.channel], rle.encode(d.mask),
                                   score=round(d.score, 6)))
    return out


def semantic_name(rec: dict[str, Any]) -> str:
    """File name of an image's semantic label map: its file_name as .png, sub-folders joined by ``__``."""
    parts = Path(rec["file_name"]).with_suffix(".png").parts
    return "__".join(p for p in parts if p not in ("/", ".."))  # never a name outside --semantic


def run(settings: IRNetSettings, job: IRNetJob, progress: Any = None) -> IRNetResult:
    """Train (or load) IRNet and write the pseudo-label dataset of this shard's images to ``job.out``."""
    from wsis_cli.io import coco
    from wsis_cli.io.checkpoint import ImageCheckpoint
    from wsis_cli.io.images import write_image
    from wsis_cli.runtime.distributed import init_distributed
    from wsis_cli.runtime.progress import NullProgress
    from wsis_cli.runtime.sharding import resolve_shard, shard_ids

    progress = progress or NullProgress()
    inputs = open_inputs(job)
    ctx = init_distributed(job.device)
    try:
        t0 = time.perf_counter()
        if job.checkpoint:
            model = load_irnet(job.checkpoint).to(ctx.device)
        else:
            model = train_model(inputs, settings, job, ctx, progress)
        t_train = time.perf_counter() - t0
        if not ctx.is_main:  # under torchrun only rank 0 predicts; shards split prediction instead
            return IRNetResult(0, 0, t_train, 0.0, None)
    finally:
        ctx.shutdown()
    model.to(ctx.device).eval()
    shard = resolve_shard(job.shard) if not ctx.enabled else resolve_shard("0/1")
    ids = shard_ids(inputs.ids, shard)
    identity = {**settings.to_json(), "cams": str(job.cams), "checkpoint": str(job.checkpoint or ""),
                "shard": [shard.index, shard.count]}
    t1 = time.perf_counter()
    with ImageCheckpoint(job.out, STAGE, identity, resume=job.resume,
                        inputs={"cams": job.cams, "labels": job.labels, "checkpoint": job.checkpoint}) as ckpt:
        progress.start(len(ids), "irnet")
        progress.advance(len([i for i in ids if i in ckpt.done]))
        for image_id in ids:
            if image_id in ckpt.done:
                continue
            rec = inputs.dataset.image_index[image_id]
            cams, cats = image_cams(inputs, image_id)
            image = _loader(inputs, inputs.images, image_id)()
            dets, sem = predict_image(model, image, cams, settings, ctx.device, semantic=job.semantic is not None)
            if sem is not None:
                lut = np.array([0, *cats], dtype=np.int64)
                label = lut[sem]
                dtype = np.uint8 if lut.max() <= 255 else np.uint16
                write_image(Path(job.semantic) / semantic_name(rec), label.astype(dtype))
            ckpt.add(image_id, to_annotations(image_id, dets, cats, settings.min_score))
            progress.advance(1)
        progress.finish()
        annotations = ckpt.annotations()
        keep = set(ids)
        images = [im for im in inputs.dataset.images if im["id"] in keep]
        out = coco.Dataset(images, annotations, inputs.dataset.categories, {}, inputs.dataset.source)
        coco.write_dataset(out, job.out)
    t_infer = time.perf_counter() - t1
    log.info("irnet: %d instances on %d images (%.2f s per image)", len(annotations), len(ids),
             t_infer / max(len(ids), 1))
    return IRNetResult(len(ids), len(annotations), t_train, t_infer, out)


# ------------------------------------------------------------------------------------------- demo


def demo_irnet(images_dir: Path, cams_h5: Path, work: Path, settings: IRNetSettings | None = None) -> Any:
    """A quick IRNet run for ``wsis demo``: trains briefly on the CAMs of ``cams_h5`` and labels instances.

    Uses the CAM classifier's backbone when ``cams_h5`` records one, otherwise a random ResNet-18. Writes
    ``work/pseudo.json`` and the run folder ``work/irnet-run``; returns the :class:`~wsis_cli.io.coco.Dataset`.
    """
    from wsis_cli.io.h5 import H5Reader

    settings = settings or DEMO_SETTINGS
    Path(work).mkdir(parents=True, exist_ok=True)
    with H5Reader(cams_h5, expect_stage="cam") as reader:
        has_classifier = bool(reader.inputs.get("checkpoint"))
    if not has_classifier and settings.weights == FROM_CAM:
        settings = IRNetSettings(**{**settings.to_json(), "weights": "none", "arch": "resnet18"})
    job = IRNetJob(cams=str(cams_h5), out=str(Path(work) / "pseudo.json"), images=str(images_dir),
                   run=str(Path(work) / "irnet-run"), device="auto")
    return run(settings, job).dataset
