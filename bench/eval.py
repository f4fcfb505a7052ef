"""Benchmark `wsis eval`: pycocotools vs faster-coco-eval through our stage, and our mean mask IoU.

Generates a synthetic ground truth (~500 images x ~10 disc/rectangle instances) and jittered predictions
(shifted, grown or shrunk, with misses and false positives) in memory, runs the eval stage with each
backend and prints seconds (best of --repeat) and the ratio against pycocotools measured in this run.
No assertions: this prints numbers, it does not judge them.

    uv run python bench/eval.py            # 500 images
    uv run python bench/eval.py --quick    # 100 images, one repeat
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from wsis_cli.io import rle
from wsis_cli.io.coco import Dataset, annotation
from wsis_cli.stages.evaluate.stage import EvalReport, EvalSettings, evaluate

H, W = 240, 320
CATEGORIES = [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)]


def _draw(kind: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(N, H, W) bool stack of discs (kind 0) and rectangles (kind 1)."""
    yy = np.arange(H)[None, :, None]
    xx = np.arange(W)[None, None, :]
    cy, cx, r = (v[:, None, None] for v in (cy, cx, r))
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    rect = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= (r * 2) // 3)
    return np.where(kind[:, None, None] == 0, disc, rect)


def make_data(n_images: int, per_image: int, seed: int = 0) -> tuple[Dataset, list[dict]]:
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], []
    for i in range(n_images):
        images.append({"id": i + 1, "file_name": f"{i:06d}.png", "height": H, "width": W})
        n = int(rng.integers(per_image - 3, per_image + 4))
        kind = rng.integers(0, 2, n)
        r = rng.choice([3, 8, 20, 45], n)  # every COCO size range
        cy, cx = rng.integers(r, H - r), rng.integers(r, W - r)
        cats = rng.choice([1, 2, 3], n)
        for m, c in zip(rle.encode_many(_draw(kind, cy, cx, r)), cats, strict=True):
            anns.append(annotation(len(anns) + 1, i + 1, int(c), m))
        keep = rng.random(n) > 0.1  # 10% misses
        jy, jx, jr = (rng.integers(-3, 4, n) for _ in range(3))
        pred_masks = _draw(kind, cy + jy, cx + jx, np.maximum(r + jr, 1))[keep]
        n_fp = 3
        fp_r = rng.choice([3, 8, 20], n_fp)
        fp = _draw(rng.integers(0, 2, n_fp), rng.integers(fp_r, H - fp_r), rng.integers(fp_r, W - fp_r), fp_r)
        pred_cats = list(cats[keep]) + list(rng.choice([1, 2, 3], n_fp))
        scores = list(rng.uniform(0.3, 1.0, int(keep.sum()))) + list(rng.uniform(0.0, 0.6, n_fp))
        for m, c, s in zip(rle.encode_many(np.concatenate([pred_masks, fp])), pred_cats, scores, strict=True):
            preds.append({"image_id": i + 1, "category_id": int(c), "segmentation": m, "score": float(s)})
    return Dataset(images, anns, CATEGORIES, source="<synthetic>"), preds


def _best(fn, repeat: int) -> tuple[float, EvalReport, dict[str, float]]:
    best, report, parts = float("inf"), None, {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        report = fn()
        dt = time.perf_counter() - t0
        if dt < best:
            best, parts = dt, dict(report.timings)
    return best, report, parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 images and one repeat")
    ap.add_argument("--images", type=int, default=None, help="number of images (default 500, 100 with --quick)")
    ap.add_argument("--per-image", type=int, default=10, help="mean GT instances per image")
    ap.add_argument("--repeat", type=int, default=None, help="best of this many runs (default 5, 1 with --quick)")
    args = ap.parse_args()
    n_images = args.images or (100 if args.quick else 500)
    repeat = args.repeat or (1 if args.quick else 5)

    t0 = time.perf_counter()
    gt, preds = make_data(n_images, args.per_image)
    print(f"data: {len(gt.images)} images, {len(gt.annotations)} GT instances, {len(preds)} predictions "
          f"({H}x{W}), generated in {time.perf_counter() - t0:.1f}s; best of {repeat}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    # warm-up: first calls pay for imports and thread-pool start-up, which are not what we compare
    small = Dataset(gt.images[:5], [a for a in gt.annotations if a["image_id"] <= 5], gt.categories)
    for backend in ("pycocotools", "faster"):
        evaluate(small, [p for p in preds if p["image_id"] <= 5], EvalSettings(backend=backend))

    rows: list[tuple[str, float, float]] = []
    results = {}
    for iou_type in ("segm", "bbox"):
        for backend in ("pycocotools", "faster"):
            settings = EvalSettings(iou_type=iou_type, backend=backend)
            results[iou_type, backend] = _best(lambda s=settings: evaluate(gt, preds, s), repeat)
        (_, rp, tp), (_, rf, tf) = results[iou_type, "pycocotools"], results[iou_type, "faster"]
        rows.append((f"COCOeval {iou_type}", tp[iou_type], tf[iou_type]))
        diff = max(abs((a or 0.0) - (b or 0.0))
                   for a, b in zip(rp.coco[iou_type].stats.values(), rf.coco[iou_type].stats.values(), strict=True))
        print(f"{iou_type}: AP {rp.coco[iou_type].ap:.4f} (pycocotools) vs {rf.coco[iou_type].ap:.4f} "
              f"(faster); max |difference| over the 12 stats {diff:.1e}")
    (tot_p, rep, parts_p), (tot_f, _, parts_f) = results["segm", "pycocotools"], results["segm", "faster"]
    rows.append(("mean mask IoU (ours)", parts_p["mean_iou"], parts_f["mean_iou"]))
    rows.append(("eval stage, segm total", tot_p, tot_f))
    print(f"mean mask IoU {rep.mean_iou:.4f}")

    print()
    print(f"{'part':<24} {'pycocotools s':>14} {'faster s':>10} {'speed-up':>9}")
    for name, slow, fast in rows:
        print(f"{name:<24} {slow:>14.3f} {fast:>10.3f} {slow / fast:>8.2f}x")
    print("speed-up = pycocotools seconds / faster-coco-eval seconds, both measured in this run "
          "(the mean IoU row runs the same code under both; its ratio is noise)")


if __name__ == "__main__":
    main()
