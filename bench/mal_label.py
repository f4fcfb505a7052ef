"""Labelling throughput of ``wsis mal-label``: boxes per second of the inference pass (crop, encode, decode,
paste, RLE) for a few encoder/crop configurations, with randomly initialised networks (speed does not
depend on the weights), on a synthetic set; and the share of the time the network takes.

    uv run python bench/mal_label.py --images 20 --configs demo,vit_tiny128 [--device cuda]

Configurations: ``demo`` (the demo's settings at 96² crops, what auto picks for its boxes), ``demo_48`` (the
same at 48², what auto picks for tiny boxes), ``demo_64`` (the earlier 64²
recipe: 64² crops, 16 epochs, threshold 0.6, overlapping masks), ``vit_tiny128`` (vit_tiny, 128² crops),
``vit_b_16`` (upstream: vit_b_16 at 512², best on a GPU).

Each configuration is labelled with the network channels-last (``cl``, the default) and contiguous
(``nchw``), and ``--train-steps N`` also times N training forward/backward passes (student with
gradient + teacher without, batch ``--train-batch``) in both memory formats, interleaved.

``--quality SEEDS`` (e.g. ``0,1,2``) instead trains each configuration with each training seed on ``--images``
synthetic images of ``--size`` (the quality test's set: 40 of 256) and prints mean instance IoU / mask AP of
its labels, raw and after ``refine-crf``, with the CPU seconds of train + label, then the means per
configuration and their ratios to the first configuration's (run them in the same process, the same load):

    uv run python bench/mal_label.py --quality 0,1,2 --images 40 --size 256 --configs demo,demo_64 --threads 1

Compare ``boxes/cpu s`` (one thread's CPU time) on a shared machine; wall-clock figures swing with the load.
What these runs measured is in bench/NOTES.md ("mal-label throughput").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from wsis_cli.io import coco
from wsis_cli.stages.mal.data import RoiImageSet
from wsis_cli.stages.mal.stage import DEMO_SETTINGS, label_images
from wsis_cli.stages.mal.train import build_model
from wsis_cli.stages.synth import stage as synth

CONFIGS = {
    # the demo's settings at each auto crop size (the demo's own boxes get 96²)
    "demo": replace(DEMO_SETTINGS, crop_size=96),
    "demo_48": replace(DEMO_SETTINGS, crop_size=48),
    # the earlier 64² demo recipe (overlapping masks): "demo_64 nchw" is how it labelled before channels-last
    "demo_64": replace(DEMO_SETTINGS, crop_size=64, epochs=16, threshold=0.6, exclusive=False),
    "vit_tiny128": replace(DEMO_SETTINGS, encoder="vit_tiny", encoder_depth=0, crop_size=128, decoder_dim=64),
    "vit_b_16": replace(DEMO_SETTINGS, encoder="vit_b_16", encoder_depth=0, crop_size=512, decoder_dim=256),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--configs", default="demo,vit_tiny128")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--train-steps", type=int, default=0)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--quality", default="", help="training seeds, e.g. 0,1,2: compare label quality instead")
    ap.add_argument("--size", type=int, default=256, help="--quality: image side")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.quality:
        quality(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "d"
        synth.run(synth.SynthSettings(num_images=args.images, seed=0), synth.SynthJob(root))
        ds = coco.load_dataset(root / "boxes.json")
        ids = [im["id"] for im in ds.images]
        by_image = ds.annotations_by_image()
        # CPU seconds (one thread) are what to compare on a shared machine; wall seconds only when idle
        print(f"{'config':<14}{'boxes':>7}{'seconds':>9}{'boxes/s':>9}{'cpu s':>8}{'boxes/cpu s':>13}{'net share':>11}")
        for name, fmt in [(c, f) for c in args.configs.split(",") for f in ("cl", "nchw")]:
            s = CONFIGS[name]
            model = build_model(s.model_spec(), "none").to(device).eval()
            net_time = 0.0
            forward = model.forward

            def timed(*a, _f=forward):
                nonlocal net_time
                t = time.perf_counter()
                out = _f(*a)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                net_time += time.perf_counter() - t
                return out

            model.forward = timed  # type: ignore[method-assign]
            roi = RoiImageSet(ids, by_image, ds.image_index, str(root / "images"), ds.source, s.crop_size)
            t0, c0 = time.perf_counter(), time.process_time()
            n = sum(len(r) for _, r in label_images(model, roi, device, args.batch_size, s.threshold,
                                                    exclusive=s.exclusive, channels_last=fmt == "cl", flip=s.flip))
            sec, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(f"{name + ' ' + fmt:<14}{n:>7}{sec:>9.2f}{n / sec:>9.1f}{cpu:>8.2f}{n / cpu:>13.1f}{net_time / sec:>10.0%}")

        if args.train_steps:
            train_steps(args, device)


def train_steps(args: argparse.Namespace, device: torch.device) -> None:
    """CPU seconds per training forward/backward (student + no-grad teacher), both memory formats interleaved."""
    print(f"{'config':<14}{'format':>7}{'ms/step (cpu)':>15}")
    for name in args.configs.split(","):
        s = CONFIGS[name]
        cost = {"cl": 0.0, "nchw": 0.0}
        nets = {}
        for fmt in cost:
            torch.manual_seed(0)
            memory = torch.channels_last if fmt == "cl" else torch.contiguous_format
            nets[fmt] = (build_model(s.model_spec(), "none").to(device, memory_format=memory), memory)
        x = torch.rand(args.train_batch, 3, s.crop_size, s.crop_size, device=device)
        buckets = torch.zeros(args.train_batch, dtype=torch.long, device=device)
        for step in range(args.train_steps + 2):
            for fmt, (net, memory) in nets.items():
                c0 = time.process_time()
                xs = x.to(memory_format=memory)
                net(xs, buckets).sum().backward()
                with torch.no_grad():
                    net(xs, buckets)
                if step >= 2:  # the first two warm up
                    cost[fmt] += time.process_time() - c0
        for fmt, c in cost.items():
            print(f"{name:<14}{fmt:>7}{1e3 * c / args.train_steps:>15.1f}")


def quality(args: argparse.Namespace) -> None:
    """Label quality (raw and refined) and CPU seconds per configuration and training seed."""
    from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate
    from wsis_cli.stages.mal.stage import MalJob, run
    from wsis_cli.stages.refine import stage as refine_crf

    seeds = [int(v) for v in args.quality.split(",")]
    names = args.configs.split(",")
    segm = EvalSettings(iou_type="segm")
    rows: dict[str, list[tuple[float, ...]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "d"
        synth.run(synth.SynthSettings(num_images=args.images, height=args.size, width=args.size, seed=0), synth.SynthJob(root))
        gt = coco.load_dataset(root / "gt.json")
        print(f"{'config':<12}{'seed':>5}{'mIoU':>8}{'AP':>8}{'ref mIoU':>10}{'ref AP':>8}{'cpu s':>8}")
        for seed in seeds:
            for name in names:
                work = Path(tmp) / f"{name}-{seed}"
                c0 = time.process_time()
                run(replace(CONFIGS[name], seed=seed), MalJob(boxes=str(root / "boxes.json"), images=str(root / "images"),
                                                             out=str(work / "m.json"), run=str(work / "run"),
                                                             device=args.device))
                cpu = time.process_time() - c0
                refine_crf.run(refine_crf.RefineSettings(), refine_crf.RefineJob(
                    str(work / "m.json"), str(root / "images"), str(work / "r.json"), device=args.device))
                raw = evaluate(gt, coco.load_dataset(work / "m.json").annotations, segm)
                ref = evaluate(gt, coco.load_dataset(work / "r.json").annotations, segm)
                row = (raw.mean_iou, raw.mask_ap, ref.mean_iou, ref.mask_ap, cpu)
                rows[name].append(row)
                print(f"{name:<12}{seed:>5}" + "".join(f"{v:>{w}.3f}" for v, w in zip(row[:4], (8, 8, 10, 8), strict=True))
                      + f"{cpu:>8.1f}", flush=True)
    means = {n: [sum(col) / len(col) for col in zip(*r, strict=True)] for n, r in rows.items()}
    first = means[names[0]]
    for name, m in means.items():
        print(f"{name:<12} mean {m[0]:.3f} / {m[1]:.3f}, refined {m[2]:.3f} / {m[3]:.3f}, {m[4]:.1f} s CPU "
              f"({m[4] / first[4]:.2f}x {names[0]})")


if __name__ == "__main__":
    main()
