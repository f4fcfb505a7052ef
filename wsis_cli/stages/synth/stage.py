"""``wsis synth``: a deterministic synthetic instance-segmentation dataset to train and test on.

Each image is a textured background with a variable number of instances of up to eight shape classes
(see :mod:`wsis_cli.stages.synth.shapes`). Same-class instances are often placed touching or overlapping,
later instances are drawn on top, and the ground-truth mask of each instance is its *visible* part
(exact binary; the image edges are softly anti-aliased). Instances whose visible part would become too
small are never drawn, so every drawn object is labelled and no mask is empty.

Image ``i`` depends only on ``(seed, i)`` and the settings that shape images (size, classes, counts),
so generating N images and then N+10 gives the same first N, byte for byte.

Writes ``OUT/images/000001.png ...``, ``OUT/gt.json`` (instance masks), ``OUT/boxes.json`` (boxes only)
and ``OUT/labels.json`` (image-level labels), all atomically as one folder.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from wsis_cli.runtime.log import get_logger
from wsis_cli.stages.synth.settings import (  # noqa: F401  (re-exported: the stage's public names)
    MAX_INSTANCES,
    MAX_SIDE,
    MIN_SIDE,
    SynthJob,
    SynthSettings,
    SynthSummary,
)
from wsis_cli.stages.synth.shapes import (
    CLASSES,
    Polygons,
    background,
    instance_colours,
    pick_texture,
    texture,
)

log = get_logger("synth")

# Stream salt: the same --seed in another stage must not replay the synth stream.
_SALT = 0x5A17_0001

# Placement: share of instances placed against an earlier one of the same class, and of those, the share
# that only touch (the rest overlap it and hide part of it).
P_BUDDY = 0.45
P_TOUCH = 0.5
# Instance radius as a fraction of the shorter image side (log-uniform), and its floor in pixels.
RADIUS_RANGE = (0.06, 0.28)
MIN_RADIUS_PX = 4.0
# Drop rule: a visible part below max(MIN_AREA_PX, MIN_AREA_FRAC * H * W) pixels or below MIN_VISIBLE_FRAC
# of the instance's in-image shape is too small to label; such a placement is rejected.
MIN_AREA_PX = 12
MIN_AREA_FRAC = 2e-4
MIN_VISIBLE_FRAC = 0.25
MIN_INSIDE_FRAC = 0.35  # most of an instance lies inside the image
ATTEMPTS_PER_INSTANCE = 25
EDGE_SIGMA = 0.6  # anti-aliasing of the drawn edges, pixels
NOISE_SIGMA = 0.012  # sensor noise, in 0..1 intensity


def category_records(classes: int) -> list[dict[str, Any]]:
    """COCO categories of the first ``classes`` synthetic classes (ids 1..classes)."""
    return [{"id": i + 1, "name": c.name, "supercategory": "shape"} for i, c in enumerate(CLASSES[:classes])]


# ------------------------------------------------------------------------------------------ placement


@dataclass
class _Shape:
    cls: int  # 0-based class index
    r: float
    cx: float
    cy: float
    y0: int
    x0: int
    local: np.ndarray  # bool mask of the whole shape over its window (clipped to the image)
    vis: np.ndarray  # bool visible part over the same window
    polys: Polygons
    inside: int  # pixels of the shape inside the image


def _rasterize(polys: Polygons, cx: float, cy: float, h: int, w: int) -> tuple[int, int, np.ndarray] | None:
    """Fill the polygons (first filled, others holes) centred at (cx, cy): window origin and bool mask."""
    pts = [p + (cx, cy) for p in polys]
    allp = pts[0]
    margin = 2  # room for the anti-aliased edge around the exact mask
    x0 = max(int(math.floor(allp[:, 0].min())) - margin, 0)
    y0 = max(int(math.floor(allp[:, 1].min())) - margin, 0)
    x1 = min(int(math.ceil(allp[:, 0].max())) + margin + 1, w)
    y1 = min(int(math.ceil(allp[:, 1].max())) + margin + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    local = np.zeros((y1 - y0, x1 - x0), np.uint8)
    # 4 fractional bits: sub-pixel vertex positions, so small shapes keep their form
    fixed = [np.round((p - (x0, y0)) * 16.0).astype(np.int32) for p in pts]
    cv2.fillPoly(local, [fixed[0]], 1, cv2.LINE_8, 4)
    if len(fixed) > 1:
        cv2.fillPoly(local, fixed[1:], 0, cv2.LINE_8, 4)
    return y0, x0, local.view(bool)


def _overlap(ay: int, ax: int, a: np.ndarray, by: int, bx: int, b: np.ndarray) -> tuple[slice, slice, slice, slice] | None:
    """Slices of the common part of two windows (into a, then into b), or None when disjoint."""
    y0, x0 = max(ay, by), max(ax, bx)
    y1, x1 = min(ay + a.shape[0], by + b.shape[0]), min(ax + a.shape[1], bx + b.shape[1])
    if y1 <= y0 or x1 <= x0:
        return None
    return (slice(y0 - ay, y1 - ay), slice(x0 - ax, x1 - ax), slice(y0 - by, y1 - by), slice(x0 - bx, x1 - bx))


def _touches(partner: _Shape, polys: Polygons, cx: float, cy: float, h: int, w: int) -> bool:
    ras = _rasterize(polys, cx, cy, h, w)
    if ras is None:
        return False
    ov = _overlap(partner.y0, partner.x0, partner.local, ras[0], ras[1], ras[2])
    return ov is not None and bool((partner.local[ov[0], ov[1]] & ras[2][ov[2], ov[3]]).any())


def _contact_distance(partner: _Shape, polys: Polygons, angle: float, h: int, w: int) -> float:
    """About the largest centre distance along ``angle`` at which the new shape still meets the partner."""
    lo = 0.0
    hi = float(np.abs(partner.polys[0]).max() + np.abs(polys[0]).max()) * 1.5 + 2.0
    ca, sa = math.cos(angle), math.sin(angle)
    for _ in range(8):
        mid = 0.5 * (lo + hi)
        if _touches(partner, polys, partner.cx + mid * ca, partner.cy + mid * sa, h, w):
            lo = mid
        else:
            hi = mid
    return lo


def _propose(rng: np.random.Generator, classes: int, kept: list[_Shape], h: int, w: int) -> _Shape | None:
    side = min(h, w)
    r_lo, r_hi = max(MIN_RADIUS_PX, RADIUS_RANGE[0] * side), max(MIN_RADIUS_PX, RADIUS_RANGE[1] * side)
    if kept and rng.random() < P_BUDDY:
        partner = kept[int(rng.integers(len(kept)))]
        cls = partner.cls
        r = float(np.clip(partner.r * rng.uniform(0.7, 1.3), r_lo, r_hi))
        polys = CLASSES[cls].outline(rng, r)
        angle = rng.uniform(0, 2 * math.pi)
        d = _contact_distance(partner, polys, angle, h, w)
        if rng.random() >= P_TOUCH:
            d *= rng.uniform(0.55, 0.9)
        cx, cy = partner.cx + d * math.cos(angle), partner.cy + d * math.sin(angle)
    else:
        cls = int(rng.integers(classes))
        r = float(math.exp(rng.uniform(math.log(r_lo), math.log(r_hi)))) if r_hi > r_lo else r_lo
        polys = CLASSES[cls].outline(rng, r)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    ras = _rasterize(polys, cx, cy, h, w)
    if ras is None:
        return None
    y0, x0, local = ras
    inside = int(local.sum())
    return _Shape(cls, r, cx, cy, y0, x0, local, local.copy(), polys, inside)


def _accept(cand: _Shape, kept: list[_Shape], min_area: int) -> bool:
    """Place ``cand`` on top if it and every instance it hides stay large enough; update visibilities."""
    full = abs(cv2.contourArea(cand.polys[0].astype(np.float32)))
    full -= sum(abs(cv2.contourArea(p.astype(np.float32))) for p in cand.polys[1:])
    if cand.inside < min_area or cand.inside < MIN_INSIDE_FRAC * full:
        return False
    hits = []
    for k in kept:
        ov = _overlap(k.y0, k.x0, k.vis, cand.y0, cand.x0, cand.local)
        if ov is None:
            continue
        lost = int((k.vis[ov[0], ov[1]] & cand.local[ov[2], ov[3]]).sum())
        if lost:
            left = int(k.vis.sum()) - lost
            if left < max(min_area, MIN_VISIBLE_FRAC * k.inside):
                return False
            hits.append((k, ov))
    for k, ov in hits:
        k.vis[ov[0], ov[1]] &= ~cand.local[ov[2], ov[3]]
    kept.append(cand)
    return True


def _place(rng: np.random.Generator, settings: SynthSettings) -> list[_Shape]:
    h, w = settings.height, settings.width
    n = int(rng.integers(settings.min_instances, settings.max_instances + 1))
    min_area = max(MIN_AREA_PX, round(MIN_AREA_FRAC * h * w))
    kept: list[_Shape] = []
    for _ in range(ATTEMPTS_PER_INSTANCE * n):
        if len(kept) >= n:
            break
        cand = _propose(rng, settings.classes, kept, h, w)
        if cand is not None:
            _accept(cand, kept, min_area)
    return kept


# ---------------------------------------------------------------------------------------------- render


def _render(rng: np.random.Generator, kept: list[_Shape], h: int, w: int) -> np.ndarray:
    img = background(rng, h, w)
    for k in kept:
        hh, ww = k.local.shape
        cls = CLASSES[k.cls]
        c1, c2 = instance_colours(rng, cls)
        xs = (np.arange(k.x0, k.x0 + ww, dtype=np.float32) - np.float32(k.cx))[None, :]
        ys = (np.arange(k.y0, k.y0 + hh, dtype=np.float32) - np.float32(k.cy))[:, None]
        col = texture(rng, pick_texture(rng, cls), xs, ys, k.r, c1, c2)
        # soft edge for the picture only; the label stays the exact binary mask
        alpha = cv2.GaussianBlur(k.local.astype(np.float32), (0, 0), EDGE_SIGMA)[..., None]
        win = img[k.y0:k.y0 + hh, k.x0:k.x0 + ww]
        win *= 1.0 - alpha
        win += col * alpha
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(NOISE_SIGMA)
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def generate_image(settings: SynthSettings, index: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Image ``index`` (0-based) of the dataset ``settings`` describes.

    Returns the RGB image, ``(H, W, 3)`` uint8, and its instances bottom to top as
    ``(category_id, mask)`` with 1-based category ids and ``(H, W)`` bool visible masks: non-empty,
    mutually disjoint, each at least a small area.
    """
    rng = np.random.default_rng([_SALT, settings.seed % 2**64, index])
    kept = _place(rng, settings)
    rgb = _render(rng, kept, settings.height, settings.width)
    out = []
    for k in kept:
        mask = np.zeros((settings.height, settings.width), bool)
        mask[k.y0:k.y0 + k.vis.shape[0], k.x0:k.x0 + k.vis.shape[1]] = k.vis
        out.append((k.cls + 1, mask))
    return rgb, out


# ------------------------------------------------------------------------------------------------- run


def run(settings: SynthSettings, job: SynthJob, progress: Any = None) -> SynthSummary:
    """Generate the dataset and write it as the folder ``job.out_dir`` (atomically, as a whole).

    ``progress`` is accepted for the stage contract; generation logs a line every tenth of the images.
    """
    from wsis_cli import __version__
    from wsis_cli.io import atomic, coco, images, rle

    del progress
    out_dir = job.out_dir
    t0 = time.perf_counter()
    cats = category_records(settings.classes)
    image_recs: list[dict[str, Any]] = []
    gt_anns: list[dict[str, Any]] = []
    box_anns: list[dict[str, Any]] = []
    label_anns: list[dict[str, Any]] = []
    per_class = dict.fromkeys(range(1, settings.classes + 1), 0)
    step = max(1, settings.num_images // 10)
    with atomic.atomic_dir(out_dir, force=settings.force, subdirs=("images",)) as tmp:
        for index in range(settings.num_images):
            image_id = index + 1
            name = f"{image_id:06d}.png"
            rgb, instances = generate_image(settings, index)
            images.write_image(tmp / "images" / name, rgb)
            image_recs.append({"id": image_id, "file_name": name, "width": settings.width,
                               "height": settings.height})
            for cat, mask in instances:
                ann = coco.annotation(len(gt_anns) + 1, image_id, cat, rle.encode(mask))
                gt_anns.append(ann)
                x, y, bw, bh = ann["bbox"]
                box_anns.append({"id": ann["id"], "image_id": image_id, "category_id": cat,
                                 "bbox": ann["bbox"], "area": float(bw * bh), "iscrowd": 0})
                per_class[cat] += 1
            for cat in sorted({c for c, _ in instances}):
                label_anns.append({"id": len(label_anns) + 1, "image_id": image_id, "category_id": cat})
            if (index + 1) % step == 0:
                log.debug("synth: %d/%d images", index + 1, settings.num_images)
        info = {"description": "wsis synth: synthetic shapes for weakly supervised instance segmentation",
                "version": __version__,
                "settings": {k: v for k, v in asdict(settings).items() if k != "force"}}
        for fname, anns in (("gt.json", gt_anns), ("boxes.json", box_anns), ("labels.json", label_anns)):
            ds = coco.Dataset(image_recs, anns, cats, {"info": info})
            coco.write_dataset(ds, tmp / fname)
    seconds = time.perf_counter() - t0
    summary = SynthSummary(str(out_dir), settings.num_images, len(gt_anns),
                           {CLASSES[c - 1].name: n for c, n in per_class.items()}, seconds)
    counts = ", ".join(f"{k} {v}" for k, v in summary.per_class.items())
    log.info("synth: wrote %d images (%dx%d), %d instances (%s) to %s in %.1f s",
             summary.num_images, settings.height, settings.width, summary.num_instances, counts, out_dir, seconds)
    return summary
