"""Scale benchmark (issue #18): does every per-dataset step stay linear up to COCO train (118k images)?

Generates COCO-train-shaped sets (80 categories, ~7.3 instances per image, 640x480-ish images; boxes, or
with ``--masks`` small rectangle RLE masks too), writes each to a temporary file and measures, per size:

* ``json.load`` of the file (the baseline) and ``coco.load_dataset`` (load + validate), with their ratio;
* shard resolution (``shard_ids`` for 4 shards);
* each stage's own ``run`` -- refine-crf (also resumed from a half-done ``.partial``), mal-label, freemask,
  cam and irnet (reading cam's HDF5 store) -- with its compute stubbed (networks, CRF and image reads
  patched with trivial functions of the right shape) on 16x16 images with the same ids and instance
  counts: input load, the per-image loop with its checkpoint or HDF5 store, and the write;
* ``wsis merge`` of 4 shard files (the stage's ``run``: read, check, write);
* ``wsis eval --iou-type bbox`` (``--iou-type segm`` with ``--masks``) of the file against itself, chunked
  backend (``--eval-backends`` adds others; pycocotools needs ~100 kB per instance).

It prints wall and CPU seconds, peak extra RSS (bench/_common.peak_memory) and, between consecutive sizes,
each step's CPU time growth divided by the image ratio (1.0 = linear; the target is <= 1.2; CPU time, as
the cores are often shared). No assertions.

    uv run python bench/scale.py                     # 10k and 30k images, boxes
    uv run python bench/scale.py --sizes 10000,30000,118000 --masks
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

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


Row = tuple[float, float, float | None]  # wall seconds, CPU seconds of this process, peak extra RSS


def _measure(fn: Callable[[], Any]) -> tuple[Row, Any]:
    """Wall and CPU time and peak memory of ``fn()``, and its result. CPU time counts this process's own
    work only, so it moves much less than wall time when other jobs share the cores."""
    out: dict[str, Any] = {}

    def call() -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        out["result"] = fn()
        out["dt"], out["cpu"] = time.perf_counter() - t0, time.process_time() - c0

    gc.collect()
    peak = peak_memory(call)
    return (out["dt"], out["cpu"], peak), out.pop("result")


TINY = 16  # side of the images the stage runs see: the loops' bookkeeping, not the pixels, is measured


def _tiny(ds: coco.Dataset) -> coco.Dataset:
    """The same image ids, categories and instance counts on 16x16 images (one 4x4 box per instance)."""
    images = [{**im, "height": TINY, "width": TINY} for im in ds.images]
    anns = [{**a, "bbox": [1, 1, 4, 4], "area": 16.0} for a in ds.annotations]
    for a in anns:
        a.pop("segmentation", None)
    return coco.Dataset(images, anns, ds.categories, {}, "tiny")


class _FakeModel:
    """Stands in for every network: moves nowhere, has no parameters."""

    arch, last_stride, crop_size = "fake", 1, TINY

    def to(self, *_: Any, **__: Any) -> _FakeModel:
        return self

    def eval(self) -> _FakeModel:
        return self

    def parameters(self) -> list[Any]:
        return []


class _Stop(Exception):
    pass


def _stubs(stop_after: int | None = None) -> contextlib.ExitStack:
    """Patch each stage's compute (networks, CRF, image reads) with trivial functions of the right shape.

    ``stop_after``: refine-crf raises :class:`_Stop` on the image after that many (an interrupted run).
    """
    import torch

    from wsis_cli.stages.cam.stage import strided_size
    from wsis_cli.stages.irnet.instances import Detection

    tiny = np.zeros((TINY, TINY, 3), np.uint8)
    seen = [0]

    def refine_image(image: Any, anns: Any, *_: Any, **__: Any) -> list[dict[str, Any]]:
        seen[0] += 1
        if stop_after is not None and seen[0] > stop_after:
            raise _Stop
        return [dict(a) for a in anns]

    def label_images(model: Any, dataset: Any, *_: Any, **__: Any) -> Any:
        for image_id in dataset.image_ids:
            yield image_id, [{**a, "score": 1.0} for a in dataset.boxes_by_image[image_id]]

    def multiscale_maps(model: Any, images: Any, classes: Any, *_: Any, **__: Any) -> list[Any]:
        size = strided_size(*images.shape[2:])
        return [torch.zeros((len(c), *size)) for c in classes]

    mask = np.zeros((TINY, TINY), bool)
    mask[2:6, 2:6] = True

    def predict_image(model: Any, image: Any, cams: Any, *_: Any, **__: Any) -> tuple[list[Any], None]:
        return [Detection(k % len(cams), mask, 0.5) for k in range(7 if len(cams) else 0)], None

    def generate(net: Any, items: Any, *_: Any, **__: Any) -> Any:
        masks = torch.from_numpy(mask).expand(7, TINY, TINY)
        for image_id, _image in items:
            yield image_id, SimpleNamespace(masks=masks, scores=torch.full((7,), 0.5))

    patches = {
        "wsis_cli.io.images.load_image_for": lambda *_, **__: tiny,
        "wsis_cli.stages.refine.stage.refine_image": refine_image,
        "wsis_cli.stages.mal.stage._load_model": lambda *_: _FakeModel(),
        "wsis_cli.stages.mal.stage.label_images": label_images,
        "wsis_cli.stages.cam.train.check_images_exist": lambda *_: None,
        "wsis_cli.io.run_dir.read_model": lambda *_: {},
        "wsis_cli.stages.cam.stage.build_model": lambda *_: (_FakeModel(), list(range(1, N_CATEGORIES + 1))),
        "wsis_cli.stages.cam.stage.multiscale_maps": multiscale_maps,
        "wsis_cli.stages.irnet.stage.load_irnet": lambda *_: _FakeModel(),
        "wsis_cli.stages.irnet.stage.predict_image": predict_image,
        "wsis_cli.stages.freemask.stage.prepare_backbone": lambda *_, **__: None,
        "wsis_cli.stages.freemask.stage.generate": generate,
    }
    stack = contextlib.ExitStack()
    for target, fn in patches.items():
        stack.enter_context(mock.patch(target, fn))
    return stack


def _stage_runs(ds: coco.Dataset, tmp: Path) -> dict[str, tuple[Callable[[], Any], Callable[[], Any] | None]]:
    """Each stage's own ``run`` (load, per-image loop with its checkpoint or HDF5 store, write) with its
    compute stubbed (:func:`_stubs`) on :func:`_tiny` images, and what to do before timing it. cam's store
    is irnet's input."""
    from wsis_cli.stages.cam.settings import CamJob, CamSettings, TrainSettings
    from wsis_cli.stages.cam.stage import run as cam_run
    from wsis_cli.stages.freemask.stage import FreeMaskJob, FreeMaskSettings
    from wsis_cli.stages.freemask.stage import run as freemask_run
    from wsis_cli.stages.irnet.settings import IRNetJob, IRNetSettings
    from wsis_cli.stages.irnet.stage import run as irnet_run
    from wsis_cli.stages.mal.settings import MalJob, MalSettings
    from wsis_cli.stages.mal.stage import run as mal_run
    from wsis_cli.stages.refine.settings import RefineJob, RefineSettings
    from wsis_cli.stages.refine.stage import run as refine_run

    data, model = tmp / "tiny.json", tmp / "model.pt"
    coco.write_dataset(_tiny(ds), data)
    model.write_bytes(b"stub")  # fingerprinted by the checkpoints, never read
    d, m = str(data), str(model)

    def refine(out: str, resume: bool = False) -> Any:
        return refine_run(RefineSettings(), RefineJob(d, None, str(tmp / out), device="cpu", resume=resume))

    def interrupt() -> None:  # half the images done, then stopped: the state --resume continues from
        with _stubs(stop_after=len(ds.images) // 2), contextlib.suppress(_Stop):
            refine("resumed.json")

    def stubbed(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with _stubs():
                return fn()
        return call

    return {
        "run refine-crf": (stubbed(lambda: refine("refined.json")), None),
        "run refine-crf --resume (half done)": (stubbed(lambda: refine("resumed.json", resume=True)), interrupt),
        "run mal-label": (stubbed(lambda: mal_run(MalSettings(), MalJob(d, None, str(tmp / "mal.json"),
                                                                       checkpoint=m, device="cpu"))), None),
        "run freemask": (stubbed(lambda: freemask_run(FreeMaskSettings(), FreeMaskJob(
            d, str(tmp / "freemask.json"), checkpoint=m, device="cpu"))), None),
        "run cam (HDF5 store)": (stubbed(lambda: cam_run(CamSettings(), TrainSettings(), CamJob(
            d, None, str(tmp / "cams.h5"), checkpoint=m, device="cpu"))), None),
        "run irnet (reads cam's store)": (stubbed(lambda: irnet_run(IRNetSettings(), IRNetJob(
            str(tmp / "cams.h5"), str(tmp / "irnet.json"), checkpoint=m, device="cpu"))), None),
    }


def _warm_up() -> None:
    """Run every stage once on a few images, so that the first size measured pays no imports."""
    with tempfile.TemporaryDirectory(prefix="wsis-scale-") as d:
        d64 = generate(64, False)
        ds = coco.Dataset(d64["images"], d64["annotations"], d64["categories"])
        for fn, before in _stage_runs(ds, Path(d)).values():
            if before is not None:
                before()
            fn()


def _merge_shards(ds: coco.Dataset, tmp: Path) -> Callable[[], Any]:
    """Write 4 shard files (not timed); returns the merge of them (the stage's ``run``: read, check, write)."""
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
    return lambda: run(MergeSettings(), MergeJob(tuple(paths), str(tmp / "merged.json")))


def bench_size(n: int, args: argparse.Namespace) -> dict[str, Row]:
    from wsis_cli.runtime.sharding import Shard, shard_ids
    from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate

    rows: dict[str, Row] = {}
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

        rows["json.load (baseline)"], obj = _measure(json_load)
        del obj
        rows["load + validate"], ds = _measure(lambda: coco.load_dataset(path))
        ids = [im["id"] for im in ds.images]
        rows["shard resolution x4"], _ = _measure(lambda: [shard_ids(ids, Shard(k, 4)) for k in range(4)])
        if "stages" not in args.skip:
            for name, (fn, before) in _stage_runs(ds, tmp).items():
                if "cam" in args.skip and name.startswith(("run cam", "run irnet")):
                    continue
                if before is not None:
                    before()
                rows[name], _ = _measure(fn)
                print(f"  {name}: {rows[name][0]:.2f}s", file=sys.stderr)
        if "merge" not in args.skip:
            rows["merge 4 shards"], _ = _measure(_merge_shards(ds, tmp))
        iou_type = "segm" if args.masks else "bbox"
        for backend in args.eval_backends.split(","):
            s = EvalSettings(iou_type=iou_type, backend=backend)  # type: ignore[arg-type]
            rows[f"eval {iou_type} {backend}"], rep = _measure(lambda s=s: evaluate(ds, ds.annotations, s))
            print(f"  eval {backend}: AP {rep.coco[iou_type].ap:.6f}, mean IoU {rep.mean_iou}", file=sys.stderr)
            del rep
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,30000", help="comma-separated image counts (COCO train: 118000)")
    ap.add_argument("--masks", action="store_true", help="small rectangle RLE masks on every instance")
    ap.add_argument("--eval-backends", default="chunked", help="comma-separated: chunked, pycocotools, faster")
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out: stages (every stage run), "
                    "cam (cam and irnet, which reads cam's store: ~3 ms CPU per image, mostly HDF5), merge")
    args = ap.parse_args()
    args.skip = args.skip.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; "
          f"{'boxes + masks' if args.masks else 'boxes'}")
    if "stages" not in args.skip:
        _warm_up()
    results = {n: bench_size(n, args) for n in sizes}
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    steps = list(results[sizes[0]])
    headers = ["step"] + [f"{n} s" for n in sizes] + [f"{n} cpu s" for n in sizes] + [f"{n} MiB" for n in sizes]
    headers += [f"growth {a}->{b}" for a, b in zip(sizes, sizes[1:], strict=False)]
    rows = []
    for step in steps:
        wall, cpu, mem = ([results[n][step][k] for n in sizes] for k in range(3))
        growth = [f"{(cpu[i + 1] / cpu[i]) / (sizes[i + 1] / sizes[i]):.2f}" if cpu[i] > 0 else "-"
                  for i in range(len(sizes) - 1)]
        rows.append([step, *(f"{v:.2f}" for v in wall), *(f"{v:.2f}" for v in cpu), *(fmt_mib(v) for v in mem),
                     *growth])
    print_table(headers, rows)
    for n in sizes:
        base, load = results[n]["json.load (baseline)"][1], results[n]["load + validate"][1]
        merge = results[n].get("merge 4 shards")
        print(f"{n}: load + validate = {load / base:.2f}x json.load (CPU)"
              + (f"; merge of 4 shards {merge[0]:.1f}s ({merge[1]:.1f}s CPU)" if merge else ""))
    print("growth = (CPU time ratio) / (image ratio) between consecutive sizes: 1.0 is linear, target <= 1.2")


if __name__ == "__main__":
    main()
