"""``wsis cam``: class attention maps from image-level labels (IRNet's first step).

Trains the multi-label CAM classifier (:mod:`wsis_cli.stages.cam.train`) unless a ``--checkpoint`` is
given, then writes, for every image of this shard, the maps of the classes its labels name into an HDF5
store (the layout below; HDF5 conventions in :mod:`wsis_cli.io.h5_format`)::

    /images/<id>/cams   float16 (K, (H-1)//4+1, (W-1)//4+1), attrs stride=4, category_ids=[K], image_size=[H, W]
                        group attrs height, width; K = 0 for an image without labels

Inference follows upstream ``make_cam``: at each scale (default 1.0, 0.5, 1.5, 2.0) the image and its
mirror go through the network, the mirrored map is flipped back and added, the sum is bilinearly resized
to the stride-4 grid, the scales are summed, and each class map is divided by its own maximum (+1e-5), so
it lies in [0, 1]. ``method="gradcam"`` computes Grad-CAM maps (paper 003) from the same classifier with
the same aggregation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsis_cli.io import coco
from wsis_cli.models.backbones import normalize
from wsis_cli.models.cam_net import CamNet
from wsis_cli.runtime.device import autocast
from wsis_cli.runtime.log import get_logger
from wsis_cli.stages.cam.demo import DEMO_SETTINGS
from wsis_cli.stages.cam.settings import EPS, STRIDE, CamJob, CamSettings, CamSummary

log = get_logger("cam")


def strided_size(height: int, width: int, stride: int = STRIDE) -> tuple[int, int]:
    """Upstream's ``((H-1)//s+1, (W-1)//s+1)``: ceil(H/s) x ceil(W/s)."""
    return (height - 1) // stride + 1, (width - 1) // stride + 1


def _rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return x
    h, w = x.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=scale < 1.0)


def multiscale_maps(model: CamNet, images: torch.Tensor, classes: Sequence[Sequence[int]], settings: CamSettings,
                    amp: bool = True) -> list[torch.Tensor]:
    """Normalised maps of one batch of equal-sized images.

    ``images``: ``(B, 3, H, W)`` uint8 or float [0, 1] on the model's device; ``classes``: per image, the
    class *indices* (positions in the classifier) to map. Returns per image a float32
    ``(K_i, (H-1)//4+1, (W-1)//4+1)`` tensor in [0, 1] (each channel divided by its max + 1e-5).
    """
    b, _, h, w = images.shape
    out_size = strided_size(h, w)
    wanted = sorted({c for cs in classes for c in cs})
    if not wanted:
        return [images.new_zeros((0, *out_size), dtype=torch.float32) for _ in range(b)]
    x0 = normalize(images)
    acc = torch.zeros((b, len(wanted), *out_size), device=images.device)
    for scale in settings.scales:
        x = _rescale(x0, scale)
        if settings.flip:
            x = torch.cat([x, x.flip(-1)])
        with autocast(images.device, amp):
            if settings.method == "gradcam":
                maps = model.gradcams(x, wanted, settings.gradcam_stage)
            else:
                with torch.no_grad():
                    maps = model.cams(x)[:, wanted]
        maps = maps.float()
        if settings.flip:
            maps = maps[:b] + maps[b:].flip(-1)
        acc += F.interpolate(maps, size=out_size, mode="bilinear", align_corners=False)
    pos = {c: k for k, c in enumerate(wanted)}
    result = []
    for i, cs in enumerate(classes):
        m = acc[i, [pos[c] for c in cs]] if cs else acc.new_zeros((0, *out_size))
        m = m.clamp_(min=0)
        result.append(m / (m.amax(dim=(1, 2), keepdim=True) + EPS))
    return result


def build_model(checkpoint: dict[str, Any], source: str) -> tuple[CamNet, list[int]]:
    """Rebuild the classifier of a cam ``model.pt`` (as read by :func:`wsis_cli.io.run_dir.read_model`)."""
    from wsis_cli.runtime.errors import BadInputError

    settings = checkpoint.get("settings") or {}
    cats = checkpoint.get("category_ids")
    if not isinstance(cats, list) or not cats:
        raise BadInputError(source, None, "has no category_ids (not a cam classifier?)")
    try:
        model = CamNet(settings.get("arch", "resnet50"), len(cats), None, int(settings.get("last_stride", 1)))
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise BadInputError(source, None, f"weights do not fit a CamNet: {str(e).splitlines()[0]}") from None
    return model.eval(), [int(c) for c in cats]


def run(settings: CamSettings, job: CamJob, progress: Any = None) -> CamSummary:
    """Train (``settings.train``) or load the classifier and write this shard's CAMs to ``job.out`` (or its shard name).

    Raises :class:`BadInputError` for labels without any annotation, missing image files, unreadable or
    mismatching checkpoints; :class:`UsageError` for training under a non-distributed ``--shard``.
    """
    from wsis_cli.io.h5 import H5Writer
    from wsis_cli.io.images import load_image_for
    from wsis_cli.io.labels import load_labels
    from wsis_cli.io.run_dir import RunDir, default_run_dir, read_model
    from wsis_cli.io.weights import load_weights
    from wsis_cli.runtime.distributed import init_distributed
    from wsis_cli.runtime.errors import BadInputError, UsageError
    from wsis_cli.runtime.progress import NullProgress
    from wsis_cli.runtime.seeding import seed_everything
    from wsis_cli.runtime.sharding import resolve_shard, shard_ids, with_shard_suffix
    from wsis_cli.stages.cam import train as cam_train

    progress = progress or NullProgress()
    train = settings.train
    t_start = time.perf_counter()
    ds = load_labels(job.labels, job.images)  # a dataset, or a results list numbering --images
    if not ds.annotations:
        raise BadInputError(ds.source, None, "no image-level labels: the file has no annotations")
    cam_train.check_images_exist(ds, job.images)
    seed_everything(train.seed)
    shard = resolve_shard(job.shard)
    ctx = init_distributed(job.device)
    device = ctx.device
    val_map: float | None = None
    trained = False
    try:
        if job.checkpoint:
            ckpt = read_model(job.checkpoint, "cam")
            model, category_ids = build_model(ckpt, str(job.checkpoint))
            model_path = Path(job.checkpoint).resolve()
            arch, last_stride = model.arch, model.last_stride
            val_map = ckpt.get("val_map")
            known = set(category_ids)
            for i, a in enumerate(ds.annotations):
                if a["category_id"] not in known:
                    raise BadInputError(ds.source, f"annotations[{i}]", f"category {a['category_id']} is unknown to "
                                        f"the classifier {job.checkpoint} (it knows {sorted(known)})")
        else:
            if not shard.is_whole and not ctx.enabled:
                raise UsageError(f"--shard {shard}: train once without sharding, then give each shard "
                                 "--checkpoint RUN/model.pt")
            run_path = Path(job.run_dir) if job.run_dir else default_run_dir(job.out, "cam")
            run_settings = {**asdict(train), "labels": os.path.abspath(job.labels) if job.labels != "-" else "-"}
            run = RunDir(run_path, "cam", run_settings, resume=job.resume)
            val_ds = coco.load_dataset(train.val) if train.val else None
            if val_ds is not None:
                cam_train.check_images_exist(val_ds, job.images)
            state = load_weights(train.weights, train.arch)
            result = cam_train.train(train, ds, job.images, run, state, ctx, val_ds)
            model, category_ids, model_path, val_map = (result.model, result.category_ids, result.model_path,
                                                        result.val_map)
            arch, last_stride, trained = train.arch, train.last_stride, True
        model = model.to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)

        out = Path(job.out)
        if not shard.is_whole and shard.count > 1 and f".shard-{shard.index}-of-" not in out.name:
            out = with_shard_suffix(out, shard)
        ids = shard_ids([im["id"] for im in ds.images], shard)
        col = {c: k for k, c in enumerate(category_ids)}
        labels = coco.label_sets(ds)
        index = ds.image_index
        h5_settings = {**settings.maps_dict(), "arch": arch, "last_stride": last_stride, "stride": STRIDE,
                       "shard": str(shard), "output": str(out)}
        inputs = {"labels": os.path.abspath(job.labels) if job.labels != "-" else "-",
                  "images": os.path.abspath(job.images) if job.images else None, "checkpoint": str(model_path)}
        n_done = 0
        t_infer = time.perf_counter()
        with H5Writer(out, "cam", h5_settings, inputs, resume=job.resume) as writer:
            todo = [i for i in ids if not writer.has(i)]
            progress.start(len(ids), "cam")
            progress.advance(len(ids) - len(todo))
            pending: list[tuple[int, np.ndarray]] = []

            def flush() -> None:
                batch = torch.from_numpy(np.stack([p[1] for p in pending])).to(device).permute(0, 3, 1, 2)
                cats = [sorted(labels.get(i, ())) for i, _ in pending]
                maps = multiscale_maps(model, batch, [[col[c] for c in cs] for cs in cats], settings, train.amp)
                if not all(bool(torch.isfinite(m).all()) for m in maps):
                    raise BadInputError(model_path, None, "the classifier produces non-finite maps (its training "
                                        "diverged); retrain with a lower --lr")
                for (image_id, rgb), cs, m in zip(pending, cats, maps, strict=True):
                    h, w = rgb.shape[:2]
                    writer.put(image_id, {"cams": m.cpu().numpy()}, attrs={"height": h, "width": w},
                               dataset_attrs={"cams": {"stride": STRIDE, "category_ids": np.asarray(cs, np.int64),
                                                       "image_size": [h, w]}},
                               dtypes={"cams": np.float16})
                progress.advance(len(pending))
                pending.clear()

            for image_id in todo:
                rgb = load_image_for(job.images, index[image_id], ds.source)
                if pending and (pending[0][1].shape != rgb.shape or len(pending) >= job.batch_size):
                    flush()
                pending.append((image_id, rgb))
                n_done += 1
            if pending:
                flush()
            progress.finish()
        seconds = time.perf_counter() - t_infer
        log.info("cam: wrote %s maps of %d images to %s in %.1f s (%.3f s per image; classifier %s)",
                 settings.method, n_done, out, seconds, seconds / max(n_done, 1), model_path)
        return CamSummary(out, model_path, n_done, seconds, val_map, trained,
                          {"total_seconds": time.perf_counter() - t_start})
    finally:
        ctx.shutdown()


def demo_cams(images_dir: Path, labels: coco.Dataset, work: Path) -> Path:
    """Train the demo's classifier (:data:`~wsis_cli.stages.cam.demo.DEMO_SETTINGS`: the packaged ImageNet EfficientNet-Lite0, as the
    paper's ImageNet setting) on the demo's synthetic data and write ``work/cams.h5``; returns its path.
    Everything else is ``wsis cam``'s defaults (geometry, multi-scale maps)."""
    from wsis_cli.io.stdio import write_json

    work.mkdir(parents=True, exist_ok=True)
    labels_path = work / "cam-labels.json"
    write_json(labels.to_json(), labels_path)
    settings = DEMO_SETTINGS
    out = work / "cams.h5"
    run_dir = work / "cam-run"
    job = CamJob(labels=str(labels_path), images=str(images_dir), out=str(out), run_dir=str(run_dir), device="cpu",
                 batch_size=8, resume=(run_dir / "run.json").exists())
    run(settings, job)
    return out

