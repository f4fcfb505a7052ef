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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from wsis_cli.io import rle as rle_utils
from wsis_kernels.crf import CRFParams, mean_field_crf


@dataclass(frozen=True)
class RefineSettings:
    """Settings of ``wsis refine-crf`` that shape the result (one field per flag)."""

    margin: float = 0.25  # crop = box expanded by this fraction of its side on every side ...
    min_margin: int = 8  # ... and by at least this many pixels
    confidence: float = 0.7  # unary probability that the input mask is right, per pixel
    threshold: float = 0.5  # refined foreground probability that becomes mask
    # 5x5 taps spaced 2 px: measured on degraded synthetic masks (16 images, 192²) a better mean IoU than
    # 7x7 dense on eroded (0.83 vs 0.77) and dilated (0.95 vs 0.95) masks, near on jagged (0.949 vs 0.957),
    # for half the taps
    kernel_size: int = 5
    dilation: int = 2
    iterations: int = 10
    w_appearance: float = 1.0
    theta_alpha: float = 6.0
    theta_beta: float = 0.06  # colour std on [0, 1] intensities
    w_smooth: float = 0.5
    theta_gamma: float = 1.5
    bucket: int = 16  # crop sides rounded up to a multiple of this (batching); 1 disables

    def __post_init__(self) -> None:
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0.5, 1), got {self.confidence}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.margin < 0 or self.min_margin < 0 or self.bucket < 1:
            raise ValueError("margin, min-margin must be >= 0 and bucket >= 1")
        self.crf_params()  # validates the CRF fields

    def crf_params(self) -> CRFParams:
        return CRFParams(
            kernel_size=self.kernel_size, dilation=self.dilation, iterations=self.iterations,
            w_appearance=self.w_appearance, theta_alpha=self.theta_alpha, theta_beta=self.theta_beta,
            w_smooth=self.w_smooth, theta_gamma=self.theta_gamma,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RefineStats:
    instances: int = 0
    refined: int = 0
    kept_empty: int = 0  # refinement emptied the mask: the input mask was kept
    skipped: int = 0  # no segmentation or an empty input mask: passed through unchanged


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


@dataclass(frozen=True)
class RefineJob:
    """Where ``run`` reads and writes, and how it executes (does not change the result)."""

    pseudo: str  # input COCO dataset with masks ("-" for stdin)
    images: str | None  # folder the file_names are relative to
    out: str  # output COCO dataset ("-" for stdout)
    device: str = "auto"
    batch_size: int = 16
    shard: str | None = None
    resume: bool = False


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
