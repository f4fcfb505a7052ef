"""``wsis refine-crf``: sharpen instance masks with a two-label mean-field CRF on their image.

Each instance is refined on its own crop: the mask's box expanded by a margin, so the CRF sees both sides
of every boundary. The mask becomes the unary (``confidence`` inside, ``1 - confidence`` outside, as in
IRNet's CRF with ``gt_prob = 0.7``), the crop's colours drive the bilateral kernel of
:func:`wsis_kernels.mean_field_crf`, and the thresholded result is pasted back. Box and area are
recomputed; id, category, score and every other key are kept. Crops of equal size are batched (rounding
crop sides up to a multiple of ``bucket`` pixels within the image makes equal sizes common on GPU).

The guard (``guard="contrast"``, the default) keeps the input mask wherever the image gives no clear reason
to move it: the CRF's mask replaces it only if its boundary lies on image edges ``guard_gain`` times as
strong (mean gradient magnitude over a 2-px band around the boundary) and it still overlaps the input by
``guard_iou``. A CRF
knows colour but not objects: on a confident, already well-placed mask it can leak into a neighbour of
similar colour or shrink onto texture, and then the image's edges do not back the change.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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


_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def edge_strength(crops: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` images in [0, 1] → ``(B, H, W)`` colour gradient magnitude (Sobel, channels summed in
    quadrature), after a 3x3 box blur so that pixel noise does not count as an edge."""
    b, c, h, w = crops.shape
    x = F.avg_pool2d(F.pad(crops, (1, 1, 1, 1), mode="replicate"), 3, stride=1).reshape(b * c, 1, h, w)
    k = torch.stack([_SOBEL, _SOBEL.T]).unsqueeze(1).to(crops)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k).reshape(b, c, 2, h, w)
    return g.pow(2).sum(dim=(1, 2)).sqrt()


def boundary_band(masks: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` bool masks → the band where a 3x3 dilation and erosion differ (both sides of the edge)."""
    m = masks.float().unsqueeze(1)
    dil = F.max_pool2d(m, 3, stride=1, padding=1)
    ero = -F.max_pool2d(-m, 3, stride=1, padding=1)
    return (dil - ero)[:, 0] > 0


def guard_accepts(edges: torch.Tensor, before: torch.Tensor, after: torch.Tensor, min_iou: float,
                  gain: float = 1.0, slope: float = 0.0) -> torch.Tensor:
    """Per instance: is the CRF's mask ``after`` backed by the image, against the input mask ``before``?

    Both ``(B, H, W)`` bool on one crop; ``edges`` from :func:`edge_strength`. Accepted where the mean edge
    strength on ``after``'s boundary band is at least ``gain + slope * (1 - IoU)`` times that on ``before``'s
    (the more of the mask a change moves, the stronger the edges it must find), and ``after`` overlaps
    ``before`` with IoU ≥ ``min_iou`` (a CRF that moves most of a mask has found another object). Uses only
    the image and the two masks: no ground truth, no learnt score.
    """
    def contrast(m: torch.Tensor) -> torch.Tensor:
        band = boundary_band(m).float()
        return (edges * band).sum(dim=(1, 2)) / band.sum(dim=(1, 2)).clamp_min(1.0)

    inter = (before & after).sum(dim=(1, 2)).float()
    iou = inter / (before | after).sum(dim=(1, 2)).float().clamp_min(1.0)
    return (contrast(after) >= (gain + slope * (1 - iou)) * contrast(before)) & (iou >= min_iou)


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
            if settings.guard == "contrast":
                ok = guard_accepts(edge_strength(crops), unary[:, 0] > 0.5, fg, settings.guard_iou,
                                   settings.guard_gain, settings.guard_slope).tolist()
            else:
                ok = [True] * len(chunk)
            for (k, mask, (y0, y1, x0, x1)), crop_fg, accept in zip(chunk, fg.cpu().numpy(), ok, strict=True):
                if not crop_fg.any():
                    stats.kept_empty += 1
                    continue
                if not accept:
                    stats.kept_guard += 1
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
    log.info("refine-crf: %d instances on %d images: %d refined, %d kept (CRF emptied them), %d kept by the "
             "guard (no image evidence for the change), %d passed through",
             stats.instances, len(ids), stats.refined, stats.kept_empty, stats.kept_guard, stats.skipped)
    return stats
