"""Predictions of a trained student as a COCO results list (what ``wsis eval`` and self-training read).

Each kept detection becomes ``{"image_id", "category_id" (the dataset's own id), "segmentation" (RLE,
ASCII counts), "bbox" (XYWH), "score"}``; masks are torchvision's pasted soft masks thresholded at 0.5,
and a detection whose mask comes out empty is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from wsis_cli.io import rle as rle_utils
from wsis_cli.io.images import load_image_for
from wsis_cli.models.student import StudentSpec, build_student
from wsis_cli.runtime.device import autocast
from wsis_cli.runtime.errors import BadInputError
from wsis_cli.runtime.log import get_logger
from wsis_cli.runtime.progress import NullProgress, Progress
from wsis_cli.stages.student.settings import STAGE, PredictJob

log = get_logger("train-student")

MASK_THRESHOLD = 0.5


def load_student(payload: Mapping[str, Any], source: str) -> tuple[nn.Module, StudentSpec, list[int]]:
    """Rebuild the student saved in a ``model.pt`` payload (see :func:`wsis_cli.io.run_dir.read_model`)."""
    try:
        spec = StudentSpec.from_json(payload["spec"])
        category_ids = [int(c) for c in payload["category_ids"]]
        model, _ = build_student(spec)
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInputError(source, None, f"not a usable train-student model ({first})") from None
    return model, spec, category_ids


def detections_to_results(image_id: int, out: Mapping[str, torch.Tensor], category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """One image's torchvision detections (original image size) as COCO result records."""
    masks = (out["masks"][:, 0] > MASK_THRESHOLD).to(torch.uint8).cpu().numpy()
    rles = rle_utils.encode_many(masks)
    boxes = out["boxes"].float().cpu().numpy()
    scores = out["scores"].float().cpu().numpy()
    labels = out["labels"].cpu().numpy()
    results = []
    for k, rle in enumerate(rles):
        if not masks[k].any():
            continue
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        results.append({"image_id": int(image_id), "category_id": int(category_ids[int(labels[k]) - 1]),
                        "segmentation": rle, "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                        "score": round(float(scores[k]), 5)})
    return results


@torch.no_grad()
def predict(model: nn.Module, category_ids: Sequence[int], records: Sequence[Mapping[str, Any]], root: str | None,
            source: str, device: torch.device, *, score_threshold: float = 0.05, max_dets: int = 100,
            batch_size: int = 2, amp: bool = True, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Run ``model`` on every image record; returns the COCO results list in record order."""
    progress = progress or NullProgress()
    heads = model.roi_heads
    saved = heads.score_thresh, heads.detections_per_img
    heads.score_thresh, heads.detections_per_img = float(score_threshold), int(max_dets)
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    progress.start(len(records), "predict")
    try:
        for start in range(0, len(records), max(batch_size, 1)):
            chunk = records[start:start + batch_size]
            images = [torch.from_numpy(np.ascontiguousarray(load_image_for(root, r, source).transpose(2, 0, 1)))
                      .to(device).float().div_(255.0) for r in chunk]
            with autocast(device, amp):
                outputs = model(images)
            for rec, out in zip(chunk, outputs, strict=True):
                results.extend(detections_to_results(rec["id"], out, category_ids))
            progress.advance(len(chunk))
    finally:
        progress.finish()
        heads.score_thresh, heads.detections_per_img = saved
        model.train(was_training)
    log.info("predict: %d detections on %d images (score >= %g, at most %d per image)", len(results), len(records),
             score_threshold, max_dets)
    return results


def results_to_dataset_annotations(results: Sequence[Mapping[str, Any]], *, score_threshold: float,
                                   max_per_image: int, image_widths: Mapping[int, int] | None = None,
                                   max_width: float = 1.0) -> list[dict[str, Any]]:
    """Self-training labels: per image the ``max_per_image`` best results scoring ≥ ``score_threshold``,
    as dataset annotations (ids 1..n, mask area, tight box from the mask, the score kept).

    With ``image_widths`` (image id -> width), a mask whose box spans at least ``max_width`` of its image's
    width is dropped first: FreeSOLO keeps only boxes narrower than 0.95 W when it turns predictions into
    the next round's labels (image-wide masks are background, not objects).
    """
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    dropped = 0
    for r in results:
        if r["score"] < score_threshold:
            continue
        if image_widths is not None and max_width < 1.0:
            width = image_widths.get(int(r["image_id"]))
            if width and rle_utils.to_bbox(r["segmentation"])[2] >= max_width * width:
                dropped += 1
                continue
        by_image.setdefault(int(r["image_id"]), []).append(r)
    if dropped:
        log.info("self-training labels: dropped %d mask(s) at least %g of the image wide", dropped, max_width)
    anns: list[dict[str, Any]] = []
    for image_id in sorted(by_image):
        best = sorted(by_image[image_id], key=lambda r: -r["score"])[:max_per_image]
        for r in best:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(r["category_id"]),
                         "segmentation": r["segmentation"], "area": float(rle_utils.area(r["segmentation"])),
                         "bbox": rle_utils.to_bbox(r["segmentation"]), "iscrowd": 0, "score": float(r["score"])})
    return anns


@dataclass
class PredictSummary:
    output: str
    images: int
    results: int  # detections written (results) or annotations (dataset)


def run_predict(job: PredictJob, progress: Progress | None = None) -> PredictSummary:
    """``train-student --checkpoint``: predict on ``job.source`` (a dataset or a folder of images) and write
    a COCO results list or, with ``output_format="dataset"``, a dataset trainable as labels."""
    from pathlib import Path

    from wsis_cli.io.coco import Dataset, load_dataset, write_dataset
    from wsis_cli.io.images import folder_images
    from wsis_cli.io.run_dir import read_model
    from wsis_cli.io.stdio import write_json
    from wsis_cli.runtime.device import resolve_device
    from wsis_cli.stages.student.data import check_images

    if job.source != "-" and Path(job.source).is_dir():
        records, root, name = folder_images(job.source), job.source, job.source
    else:
        ds = load_dataset(job.source)
        records, root, name = ds.images, job.images, ds.source
        check_images(ds, root)
    payload = read_model(job.checkpoint, STAGE)
    model, _spec, category_ids = load_student(payload, job.checkpoint)
    dev = resolve_device(job.device)
    model.to(dev)
    results = predict(model, category_ids, records, root, name, dev, score_threshold=job.score_threshold,
                      max_dets=job.max_dets, batch_size=job.batch_size, amp=job.amp, progress=progress)
    if job.output_format == "results":
        write_json(results, job.out)
        return PredictSummary(job.out, len(records), len(results))
    anns = results_to_dataset_annotations(results, score_threshold=job.score_threshold, max_per_image=job.max_dets)
    write_dataset(Dataset(list(records), anns, list(payload.get("categories", [])),
                          {"info": {"description": f"wsis train-student predictions of {job.checkpoint}"}}), job.out)
    return PredictSummary(job.out, len(records), len(anns))

