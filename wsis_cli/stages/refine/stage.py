"""``wsis refine-crf``: sharpen instance masks with a two-label mean-field CRF on their image.

Each instance is refined on its own crop: the mask's box expanded by a margin, so the CRF sees both sides
of every boundary. The mask becomes the unary (``confidence`` inside, ``1 - confidence`` outside, as in
IRNet's CRF with ``gt_prob = 0.7``), the crop's colours drive the bilateral kernel of
:func:`wsis_kernels.mean_field_crf`, and the thresholded result is pasted back. Box and area are
recomputed; id, category, score and every other key are kept. Crops of equal size are batched (rounding
crop sides up to a multiple of ``bucket`` pixels within the image makes equal sizes common on GPU).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from wsis_cli.io import rle as rle_utils
from wsis_cli.stages.refine.settings import RefineJob, RefineSettings, RefineStats
from wsis_kernels.crf import mean_field_crf


def crop_window(bbox: list[float], height: int, width: int, s: RefineSettings) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of the refinement crop around an XYWH box, inside the image."""
    x, y, w, h = bbox
    mx = max(s.margin * w, s.min_margin)
    my = max(s.margin * h, s.min_margin)
    x0, x1 = _span(x - mx, x + w + mx, width, s.bucket)
    y0, y1 = _span(y - my, y + h + my, height, s.bucket)
    return y0, y1, x0, x1


def _span(lo: float, hi: float, size: int, bucket: int) -> tuple[int, int]:
    a, b = max(int(math.floor(lo)), 0), min(int(math.ceil(hi)), size)
    want = min(-(-(b - a) // bucket) * bucket, size)  # round the side up to the bucket, within the image
    grow = want - (b - a)
    a = max(a - grow // 2, 0)
    b = min(a + want, size)
    return b - want, b


def refine_image(
    image: np.ndarray,
    annotations: Iterable[dict[str, Any]],
    settings: RefineSettings,
    device: torch.device,
    batch_size: int = 16,
    stats: RefineStats | None = None,
) -> list[dict[str, Any]]:
    """Refine every mask annotation of one ``(H, W, 3)`` uint8 RGB image; returns new annotation dicts."""
    stats = stats if stats is not None else RefineStats()
    H, W = image.shape[:2]
    img = torch.from_numpy(image).to(device).permute(2, 0, 1).float().div_(255.0)
    params = settings.crf_params()
    out: list[dict[str, Any]] = []
    jobs: dict[tuple[int, int], list[tuple[int, np.ndarray, tuple[int, int, int, int]]]] = defaultdict(list)
    anns = list(annotations)
    for k, ann in enumerate(anns):
        out.append(dict(ann))
        stats.instances += 1
        seg = ann.get("segmentation")
        if seg is None:
            stats.skipped += 1
            continue
        mask = rle_utils.decode(rle_utils.to_compressed(seg, H, W))
        if not mask.any():
            stats.skipped += 1
            continue
        win = crop_window(rle_utils.to_bbox(rle_utils.encode(mask)), H, W, settings)
        jobs[(win[1] - win[0], win[3] - win[2])].append((k, mask, win))

    for group in jobs.values():
        for i in range(0, len(group), batch_size):
            chunk = group[i : i + batch_size]
            crops = torch.stack([img[:, y0:y1, x0:x1] for _, _, (y0, y1, x0, x1) in chunk])
            unary = torch.stack([
                torch.from_numpy(m[y0:y1, x0:x1]).to(device) for _, m, (y0, y1, x0, x1) in chunk
            ]).unsqueeze(1).float()
            unary = unary * (2 * settings.confidence - 1) + (1 - settings.confidence)
            fg = mean_field_crf(crops, unary, None, params)[:, 0] >= settings.threshold
            for (k, mask, (y0, y1, x0, x1)), crop_fg in zip(chunk, fg.cpu().numpy(), strict=True):
                if not crop_fg.any():
                    stats.kept_empty += 1
                    continue
                new = np.zeros_like(mask)
                new[y0:y1, x0:x1] = crop_fg
                r = rle_utils.encode(new)
                out[k].update(segmentation=r, area=float(rle_utils.area(r)), bbox=rle_utils.to_bbox(r))
                stats.refined += 1
    return out


def run(settings: RefineSettings, job: RefineJob, progress: Any = None) -> RefineStats:
    """Refine every mask of ``job.pseudo`` (this shard's images only) and write ``job.out`` atomically.

    With ``job.resume`` the images finished by an interrupted run (recorded in ``<out>.partial``) are
    skipped. Annotations keep their ids, so shard outputs join with ``wsis merge``.
    """
    from wsis_cli.io import coco
    from wsis_cli.io.checkpoint import ImageCheckpoint
    from wsis_cli.io.images import load_image_for
    from wsis_cli.runtime.device import resolve_device
    from wsis_cli.runtime.log import get_logger
    from wsis_cli.runtime.progress import NullProgress
    from wsis_cli.runtime.sharding import resolve_shard, shard_ids

    log = get_logger("refine-crf")
    progress = progress or NullProgress()
    ds = coco.load_dataset(job.pseudo)
    device = resolve_device(job.device)
    shard = resolve_shard(job.shard)
    ids = shard_ids([im["id"] for im in ds.images], shard)
    index = ds.image_index
    by_image = ds.annotations_by_image()
    # what the partial output depends on: a resumed run must agree on all of it
    identity = {**settings.to_json(), "pseudo": str(job.pseudo), "shard": [shard.index, shard.count]}
    stats = RefineStats()
    with ImageCheckpoint(job.out, "refine-crf", identity, resume=job.resume,
                        inputs={"pseudo": job.pseudo}) as ckpt:
        progress.start(len(ids), "refine-crf")
        progress.advance(len([i for i in ids if i in ckpt.done]))
        for image_id in ids:
            if image_id in ckpt.done:
                continue
            anns = by_image[image_id]
            if anns:
                image = load_image_for(job.images, index[image_id], ds.source)
                anns = refine_image(image, anns, settings, device, job.batch_size, stats)
            ckpt.add(image_id, anns)
            progress.advance(1)
        progress.finish()
        keep = set(ids)
        images = [im for im in ds.images if im["id"] in keep]
        coco.write_dataset(coco.Dataset(images, ckpt.annotations(), ds.categories, dict(ds.extra), ds.source), job.out)
    log.info("refine-crf: %d instances on %d images: %d refined, %d kept (CRF emptied them), %d passed through",
             stats.instances, len(ids), stats.refined, stats.kept_empty, stats.skipped)
    return stats
