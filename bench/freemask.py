"""Benchmark Free Mask per image: the score-map kernel path against the materialising N x H*W computation.

    uv run python bench/freemask.py              # FreeSOLO-sized C5 (E=2048, 25x38) and a stride-16 map
    uv run python bench/freemask.py --quick      # the FreeSOLO-sized case only
    uv run python bench/freemask.py --backbone   # also whole images through a ResNet-50 (random weights)
    uv run python bench/freemask.py --quick --case 128,48,48,96,96   # any E,h,w,H,W case

"ours" is :func:`wsis_cli.stages.freemask.masks.free_masks`: per-query statistics from
``wsis_kernels.score_map_stats`` (never holding the N x H*W scores), then soft masks and matrix NMS only
for a prefix of the maskness ranking grown until the top-k is provably exact. "materialising" is the
same function with ``dense=True``: the whole normalised score block, every candidate's mask and matrix NMS
over all candidates, as FreeSOLO's script does. Both give the same masks (tests/stages). Images per
second is 1 / median time per image in this run; peak memory is described in ``_common`` (inputs
excluded). Nothing asserts a timing.

What it measured is in ``bench/NOTES.md`` (Free Mask per image).
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import describe_machine, fmt_mib, fmt_ratio, fmt_s, peak_memory, print_table, time_call  # noqa: E402

from wsis_cli.stages.freemask.masks import FreeMaskParams, free_masks  # noqa: E402


def make_features(e: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """Backbone-like features: smooth regions (objects, stuff) plus noise, ReLU'd like a ResNet output."""
    g = torch.Generator().manual_seed(0)
    coarse = F.interpolate(torch.randn(1, e, max(h // 5, 1), max(w // 5, 1), generator=g), size=(h, w),
                           mode="nearest")[0]
    return F.relu(coarse + 0.4 * torch.randn(e, h, w, generator=g)).to(device)


def run(cases: list[tuple[int, int, int, int, int]], repeat: int, device: torch.device) -> None:
    print(f"# freemask benchmark (Free Mask on given features), {describe_machine(device)}")
    print("# img/s: 1 / median time per image; peak MiB: rise during one image (CPU: peak RSS; CUDA: allocator)")
    print()
    params = FreeMaskParams()
    rows = []
    for e, h, w, img_h, img_w in cases:
        feats = make_features(e, h, w, device)
        n = h * w + (h // 2) * (w // 2) + (h // 4) * (w // 4)
        label = f"E={e} {h}x{w} (N={n})"
        res = {}
        for name, dense in (("materialising", True), ("ours (kernel)", False)):
            fn = partial(free_masks, feats, (img_h, img_w), params, dense=dense)
            t = time_call(fn, device, repeat=repeat, budget_s=60.0)
            mem = peak_memory(fn, device)
            res[name] = (t, mem, fn())
        (bt, bm, bref), (ot, om, oref) = res["materialising"], res["ours (kernel)"]
        same = torch.equal(bref.queries, oref.queries) and torch.equal(bref.masks, oref.masks)
        rows.append([label, "materialising", f"{1 / bt.median:.2f}", fmt_s(bt.median), fmt_mib(bm),
                     fmt_mib(4.0 * n * h * w), "-", "-", "-"])
        rows.append([label, "ours (kernel)", f"{1 / ot.median:.2f}", fmt_s(ot.median), fmt_mib(om), "-",
                     fmt_ratio(bt.median / ot.median), "-" if not bm or om is None else f"{om / bm:.3f}",
                     "yes" if same else "NO"])
    print_table(["case", "method", "img/s", "time", "peak MiB", "NxHW MiB", "speed-up", "mem / baseline",
                 "same masks"], rows)


def run_backbone(device: torch.device, images: int = 4) -> None:
    """Whole images (480x640 → short side 512) through a random ResNet-50 C5 and Free Mask, both paths."""
    from wsis_cli.stages.freemask.features import BackboneSpec, build_backbone, generate

    spec = BackboneSpec(arch="resnet50", weights="none", last_stride=2, short_side=512)
    net = build_backbone(spec).to(device)
    g = torch.Generator().manual_seed(0)
    batch = [(i, torch.randint(0, 255, (480, 640, 3), generator=g, dtype=torch.uint8).numpy())
             for i in range(images)]
    rows = []
    for name, dense in (("materialising", True), ("ours (kernel)", False)):
        def fn(dense: bool = dense) -> list:
            return list(generate(net, batch, spec, FreeMaskParams(), device, batch_size=images, dense=dense))
        t = time_call(fn, device, repeat=2, budget_s=120.0)
        rows.append([name, f"{images / t.median:.2f}", fmt_s(t.median / images), fmt_mib(peak_memory(fn, device))])
    print()
    print(f"# whole images: {images} random 480x640 images, ResNet-50 C5 at short side 512, batch {images}")
    print_table(["method", "img/s", "time/img", "peak MiB"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the FreeSOLO-sized case only")
    parser.add_argument("--backbone", action="store_true", help="also time whole images through a ResNet-50")
    parser.add_argument("--case", action="append", default=[], metavar="E,h,w,H,W",
                        help="an extra case: E channels on an h x w grid, masks upsampled to H x W (repeatable)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases = [(2048, 25, 38, 800, 1216)]  # FreeSOLO: C5 of an 800x1216 input
    if not args.quick:
        cases.append((1024, 40, 60, 640, 960))  # stride 16 (last stride 1) of a 640x960 input
        cases.append((128, 48, 48, 96, 96))  # the quality test's --pretrain ResNet-18 stage 2 at 4x upsampling
    for spec in args.case:
        try:
            e, h, w, img_h, img_w = (int(v) for v in spec.split(","))
        except ValueError:
            parser.error(f"--case wants five integers E,h,w,H,W, got {spec!r}")
        cases.append((e, h, w, img_h, img_w))
    run(cases, args.repeat, device)
    if args.backbone:
        run_backbone(device)


if __name__ == "__main__":
    main()
