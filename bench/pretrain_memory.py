"""Benchmark one ``freemask --pretrain`` step: its views in one backbone pass against passes of bounded size.

    uv run python bench/pretrain_memory.py              # 8 images of 512 x 680 (16 views), EfficientNet-Lite0
    uv run python bench/pretrain_memory.py --quick      # 4 images of 256 x 340
    uv run python bench/pretrain_memory.py --arch resnet50 --budgets 0,1000000

A contrastive step needs every view of its batch; the backbone's activations of all of them were the
peak memory of ``--pretrain`` (12.2 GB on the 60 nuclei images). With gradient caching
(``wsis_cli.runtime.passes``) only one pass's activations are held. "one pass" is budget 0 (every view
of a shape in one pass, as before); the other rows run passes of at most that many input pixels. Peak
memory is the step's extra resident memory (``_common``), time the median of the repeats; the loss of
the first step is printed to show the rows compute the same thing (BatchNorm statistics are per pass, so
the gradients agree exactly only where the passes do). Nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import describe_machine, fmt_mib, fmt_ratio, fmt_s, peak_memory, print_table, time_call  # noqa: E402

from wsis_cli.stages.freemask.pretrain import _step, build_pretrain_backbone, region_samples  # noqa: E402
from wsis_cli.stages.freemask.settings import BackboneSpec, PretrainSettings  # noqa: E402


def blob_images(n: int, h: int, w: int) -> list[np.ndarray]:
    """Nuclei-like images: bright blobs on a dark background (the regions need some structure)."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        img = np.full((h, w), 20.0)
        for _ in range(30):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(6, 20)
            img += 180 * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * r * r))
        img = np.clip(img + rng.normal(0, 5, (h, w)), 0, 255).astype(np.uint8)
        out.append(np.repeat(img[:, :, None], 3, axis=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--arch", default=BackboneSpec().arch)
    ap.add_argument("--budgets", default=None,
                    help="pixels per pass, comma-separated; 0 = one pass per shape (default: the CLI's and "
                         "about two views')")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    n, h, w = (4, 256, 340) if args.quick else (8, 512, 680)
    budgets = args.budgets or f"0,{PretrainSettings().pass_pixels},{2 * h * w}"
    spec = BackboneSpec(arch=args.arch, weights="none", short_side=0)
    settings = PretrainSettings(batch_size=n)
    samples = region_samples(blob_images(n, h, w), settings)
    device = torch.device("cpu")
    print(describe_machine(device))
    print(f"{n} images of {h} x {w} ({2 * n} views, {2 * n * h * w:,} input pixels), {args.arch}")
    rows, base = [], None
    for budget in (int(b) for b in budgets.split(",")):
        s = replace(settings, pass_pixels=budget if budget > 0 else 10**12)
        torch.manual_seed(0)  # the same initial network in every row
        net = build_pretrain_backbone(spec).train()

        def step(s: PretrainSettings = s, net: torch.nn.Module = net) -> torch.Tensor:
            net.zero_grad(set_to_none=True)
            return _step(net, samples, spec, s, device, np.random.default_rng(0), 1)

        loss = float(step())
        mem = peak_memory(step)
        sec = time_call(step, device, repeat=args.repeat, warmup=0).median
        base = base or (mem, sec)
        label = "one pass" if budget <= 0 else f"{budget:,} px per pass"
        rows.append([label, f"{loss:.5f}", fmt_mib(mem), fmt_ratio(mem / base[0] if mem and base[0] else None),
                     fmt_s(sec), fmt_ratio(sec / base[1])])
    print_table(["views", "loss", "peak", "vs one pass", "time", "vs one pass"], rows)


if __name__ == "__main__":
    main()
