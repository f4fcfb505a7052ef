"""Scale benchmark (issue #18): does every per-dataset step stay linear up to COCO train (118k images)?

Generates COCO-train-shaped sets (80 categories, ~7.3 instances per image, 640x480-ish images; boxes, or
with ``--masks`` small rectangle RLE masks too), writes each to a temporary file and measures, per size:

* ``json.load`` of the file (the baseline) and ``coco.load_dataset`` (load + validate), with their ratio;
* shard resolution (``shard_ids`` for 4 shards);
* the per-image bookkeeping of each stage's loop with its compute left out: the dataset lookups each stage
  makes per image (irnet: image record three times and the category list; refine-crf and mal-label:
  annotations by image and the image record; freemask and cam: the image record and label sets);
* resume bookkeeping: an ``ImageCheckpoint`` half done, reopened with resume, the loop's ``in done`` test;
* ``wsis merge`` of 4 shard files (the stage's ``run``: read, check, write);
* ``wsis eval --iou-type bbox`` (``--iou-type segm`` with ``--masks``) of the file against itself, chunked
  backend (``--eval-backends`` adds others; pycocotools needs ~100 kB per instance).

It prints seconds, peak extra RSS (bench/_common.peak_memory) and, between consecutive sizes, each step's
time growth divided by the image ratio (1.0 = linear; the target is <= 1.2). No assertions.

    uv run python bench/scale.py                     # 10k and 30k images, boxes
    uv run python bench/scale.py --sizes 10000,30000,118000 --masks
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import fmt_mib, peak_memory, print_table  # noqa: E402

from wsis_cli.io import coco, rle  # noqa: E402

INSTANCES_PER_IMAGE = 860_000 / 118_000
N_CATEGORIES = 80


def generate(n_images: int, masks: bool, seed: int = 0) -> dict[str, Any]:
    """A COCO-train-shaped dataset as a JSON-ready dict (annotations carry a score: it is its own prediction)."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice([(480, 640), (427, 640), (640, 480), (375, 500)], n_images)
    counts = rng.poisson(INSTANCES_PER_IMAGE, n_images)
    images, anns = [], []
    for i in range(n_images):
        h, w = (int(v) for v in sizes[i])
        images.append({"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "height": h, "width": w,
                       "license": 1, "coco_url": "", "date_captured": ""})
        n = int(counts[i])
        bw = np.minimum(rng.integers(2, 24, n) * rng.choice([1, 4, 12], n), w - 1)
        bh = np.minimum(rng.integers(2, 24, n) * rng.choice([1, 4, 12], n), h - 1)
        x0, y0 = rng.integers(0, w - bw), rng.integers(0, h - bh)
        cats, scores = rng.integers(1, N_CATEGORIES + 1, n), rng.random(n)
        for k in range(n):
            a: dict[str, Any] = {"id": len(anns) + 1, "image_id": i + 1, "category_id": int(cats[k]),
                                 "bbox": [int(x0[k]), int(y0[k]), int(bw[k]), int(bh[k])],
                                 "area": float(bw[k] * bh[k]), "iscrowd": 0, "score": round(float(scores[k]), 3)}
            if masks:
                a["segmentation"] = _rect_rle(h, w, int(x0[k]), int(y0[k]), int(bw[k]), int(bh[k]))
            anns.append(a)
    cats = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in range(1, N_CATEGORIES + 1)]
    return {"info": {"description": "bench/scale.py"}, "images": images, "annotations": anns, "categories": cats}


def _rect_rle(h: int, w: int, x: int, y: int, bw: int, bh: int) -> dict[str, Any]:
    """Compressed RLE of a filled rectangle, built from its column-major runs (no (H, W) array)."""
    start = x * h + y
    runs = [start] + [bh, h - bh] * (bw - 1) + [bh, h * w - start - (bw - 1) * h - bh]
    return rle.to_compressed({"size": [h, w], "counts": runs}, h, w)


# ------------------------------------------------------------------------------------------------ steps


def _measure(fn: Callable[[], Any]) -> tuple[float, float | None, Any]:
    out: dict[str, Any] = {}

    def call() -> None:
        t0 = time.perf_counter()
        out["result"] = fn()
        out["dt"] = time.perf_counter() - t0

    gc.collect()
    peak = peak_memory(call)
    return out["dt"], peak, out.pop("result")


def _loops(ds: coco.Dataset) -> dict[str, Callable[[], Any]]:
    def irnet() -> int:
        n = 0
        for image_id in [im["id"] for im in ds.images]:
            n += ds.image_index[image_id]["height"]  # image_cams
            n += len(ds.category_ids)
            n += ds.image_index[image_id]["width"]  # the loader
            n += ds.image_index[image_id]["id"]  # the loop
        return n

    def refine_or_mal() -> int:
        by_image = ds.annotations_by_image()
        return sum(len(by_image[i]) + ds.image_index[i]["height"] for i in [im["id"] for im in ds.images])

    def freemask_cam() -> int:
        labels = coco.label_sets(ds)
        return sum(len(labels[i]) + ds.image_index[i]["height"] for i in [im["id"] for im in ds.images])

    return {"loop irnet": irnet, "loop refine-crf/mal-label": refine_or_mal, "loop freemask/cam": freemask_cam}


def _resume(ds: coco.Dataset, tmp: Path) -> int:
    from wsis_cli.io.checkpoint import ImageCheckpoint

    ids = [im["id"] for im in ds.images]
    out = tmp / "resume.json"
    with ImageCheckpoint(out, "scale", {}, resume=False) as ck:
        for i in ids[: len(ids) // 2]:
            ck.add(i, [])
        ck.close(completed=False)
    n = 0
    with ImageCheckpoint(out, "scale", {}, resume=True) as ck:
        for i in ids:
            if i in ck.done:
                continue
            ck.add(i, [])
            n += 1
    return n


def _merge(ds: coco.Dataset, tmp: Path) -> Any:
    from wsis_cli.runtime.sharding import Shard, shard_ids
    from wsis_cli.stages.merge.settings import MergeJob, MergeSettings
    from wsis_cli.stages.merge.stage import run

    paths = []
    for k in range(4):
        keep = set(shard_ids([im["id"] for im in ds.images], Shard(k, 4)))
        part = coco.Dataset([im for im in ds.images if im["id"] in keep],
                            [a for a in ds.annotations if a["image_id"] in keep], ds.categories)
        paths.append(tmp / f"shard{k}.json")
        coco.write_dataset(part, paths[-1])
    t0 = time.perf_counter()
    run(MergeSettings(), MergeJob(tuple(paths), str(tmp / "merged.json")))
    return time.perf_counter() - t0


def bench_size(n: int, args: argparse.Namespace) -> dict[str, tuple[float, float | None]]:
    from wsis_cli.runtime.sharding import Shard, shard_ids
    from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate

    rows: dict[str, tuple[float, float | None]] = {}
    with tempfile.TemporaryDirectory(prefix="wsis-scale-") as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        path = tmp / "train.json"
        with open(path, "w") as fh:
            json.dump(generate(n, args.masks), fh)
        gc.collect()
        print(f"{n} images: generated {path.stat().st_size / 2**20:.0f} MB in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr)

        def json_load() -> Any:
            with open(path) as fh:
                return json.load(fh)

        dt, peak, obj = _measure(json_load)
        rows["json.load (baseline)"] = (dt, peak)
        del obj
        dt, peak, ds = _measure(lambda: coco.load_dataset(path))
        rows["load + validate"] = (dt, peak)
        ids = [im["id"] for im in ds.images]
        rows["shard resolution x4"] = _measure(lambda: [shard_ids(ids, Shard(k, 4)) for k in range(4)])[:2]
        for name, fn in _loops(ds).items():
            ds.invalidate_indices()
            rows[name] = _measure(fn)[:2]
        if "resume" not in args.skip:
            rows["resume bookkeeping"] = _measure(lambda: _resume(ds, tmp))[:2]
        _, peak, t_merge = _measure(lambda: _merge(ds, tmp))  # time: the merge alone, not writing the shards
        rows["merge 4 shards"] = (t_merge, peak)
        iou_type = "segm" if args.masks else "bbox"
        for backend in args.eval_backends.split(","):
            s = EvalSettings(iou_type=iou_type, backend=backend)  # type: ignore[arg-type]
            dt, peak, rep = _measure(lambda s=s: evaluate(ds, ds.annotations, s))
            rows[f"eval {iou_type} {backend}"] = (dt, peak)
            print(f"  eval {backend}: AP {rep.coco[iou_type].ap:.6f}", file=sys.stderr)
            del rep
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,30000", help="comma-separated image counts (COCO train: 118000)")
    ap.add_argument("--masks", action="store_true", help="small rectangle RLE masks on every instance")
    ap.add_argument("--eval-backends", default="chunked", help="comma-separated: chunked, pycocotools, faster")
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out (resume)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{'boxes + masks' if args.masks else 'boxes'}")
    results = {n: bench_size(n, args) for n in sizes}
    steps = list(results[sizes[0]])
    headers = ["step"] + [f"{n} s" for n in sizes] + [f"{n} MiB" for n in sizes]
    headers += [f"growth {a}->{b}" for a, b in zip(sizes, sizes[1:], strict=False)]
    rows = []
    for step in steps:
        t = [results[n][step][0] for n in sizes]
        m = [results[n][step][1] for n in sizes]
        growth = [f"{(t[i + 1] / t[i]) / (sizes[i + 1] / sizes[i]):.2f}" if t[i] > 0 else "-"
                  for i in range(len(sizes) - 1)]
        rows.append([step, *(f"{v:.2f}" for v in t), *(fmt_mib(v) for v in m), *growth])
    print_table(headers, rows)
    for n in sizes:
        base, load = results[n]["json.load (baseline)"][0], results[n]["load + validate"][0]
        print(f"{n}: load + validate = {load / base:.2f}x json.load; merge of 4 shards "
              f"{results[n]['merge 4 shards'][0]:.1f}s")
    print("growth = (time ratio) / (image ratio) between consecutive sizes: 1.0 is linear, target <= 1.2")


if __name__ == "__main__":
    main()
