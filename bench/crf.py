"""Benchmark the mean-field CRF of ``wsis_kernels`` against pydensecrf and an unfold-based implementation.

    uv run python bench/crf.py            # 512x512, 2 and 21 labels, 5 and 10 iterations, windows 3/7/11
    uv run python bench/crf.py --quick    # 256x256, a few configurations

For each case: wall time (median of repeats, measured in this run), peak memory (see ``_common``), and
quality as the IoU gain over the unrefined mask on a synthetic scene (coloured blobs on a textured
background; the noisy soft mask is the ground truth warped, eroded/dilated, with spurious spots, blurred and
noised). The unfold baseline computes the same local model as ours (as MAL's code is written: the
``(k*k, H*W)`` kernel stored, the label map unfolded each iteration), so its masks equal ours. pydensecrf is
the fully connected CRF with its usual settings (Gaussian sxy 3 compat 3, bilateral sxy 80 srgb 13
compat 10). Nothing here asserts a timing.

What it measured for each version of the CPU path is in ``bench/NOTES.md`` (mean-field CRF).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    Timing,
    describe_machine,
    fmt_mib,
    fmt_ratio,
    fmt_s,
    peak_memory,
    print_table,
    time_call,
)

from wsis_kernels.crf import CRFParams, crf_labels, mean_field_crf  # noqa: E402

try:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax
except ImportError:  # optional extra `bench`
    dcrf = None

UNFOLD_MAX_BYTES = 3 * 1024**3  # skip unfold cases that would need more than this


# ----------------------------------------------------------------------------------------- synthetic data
def _smooth_noise(g: torch.Generator, channels: int, grid: int, size: int) -> torch.Tensor:
    return F.interpolate(torch.rand(1, channels, grid, grid, generator=g), size=(size, size), mode="bicubic",
                         align_corners=False)


def make_scene(size: int, labels: int, seed: int = 0, peaked: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image ``(1, 3, S, S)`` in [0, 1], ground truth ``(S, S)`` int64, noisy probabilities ``(1, L, S, S)``.

    The default scene's probabilities are flat: the top label's median probability is about 0.4 and every
    absent label keeps ~0.03 everywhere, with spurious spots of any of the L labels. ``peaked`` is closer
    to a segmentation network's softmax: logits 8x (not 3x) the degraded one-hot, so the top label's median
    probability is 0.99 and absent labels sit near 3e-4, and the spots only confuse labels present in the
    scene. Same image, ground truth and degradation.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    image = 0.45 + 0.35 * (_smooth_noise(g, 3, 6, size) - 0.5) + 0.2 * (_smooth_noise(g, 3, 40, size) - 0.5)
    image = image + 0.05 * torch.sin(xx / 2.5 + 0.7 * yy / 3.0)
    gt = torch.zeros(size, size, dtype=torch.int64)
    n_blobs = 7
    for i in range(n_blobs):
        u = torch.rand(8, generator=g)
        cy, cx = size * (0.15 + 0.7 * u[0]), size * (0.15 + 0.7 * u[1])
        ry, rx = size * (0.06 + 0.1 * u[2]), size * (0.06 + 0.1 * u[3])
        ang = float(u[4]) * math.pi
        dy, dx = yy - cy, xx - cx
        ay = (dy * math.cos(ang) + dx * math.sin(ang)) / ry
        ax = (-dy * math.sin(ang) + dx * math.cos(ang)) / rx
        theta = torch.atan2(ay, ax)
        bound = 1 + 0.18 * torch.sin(3 * theta + 6 * float(u[5])) + 0.08 * torch.sin(7 * theta + 6 * float(u[6]))
        inside = ay * ay + ax * ax <= bound * bound
        colour = torch.rand(3, 1, 1, generator=g)
        texture = 0.06 * (_smooth_noise(g, 3, 24, size)[0] - 0.5)
        image[0] = torch.where(inside, colour + texture, image[0])
        gt[inside] = 1 if labels == 2 else 1 + (i * 3) % (labels - 1)
    image = (image + 0.04 * torch.randn(image.shape, generator=g)).clamp_(0, 1)

    # Degrade: warp the labels with a smooth displacement, erode/dilate, add spurious spots.
    onehot = F.one_hot(gt, labels).permute(2, 0, 1)[None].float()
    disp = (_smooth_noise(g, 2, 8, size) - 0.5) * 2 * (7.0 / size)
    base = torch.stack([xx, yy], dim=-1)[None] / (size - 1) * 2 - 1
    warped = F.grid_sample(onehot, base + disp.permute(0, 2, 3, 1), mode="nearest", align_corners=True)
    grow = F.max_pool2d(warped, 5, 1, 2)
    shrink = -F.max_pool2d(-warped, 5, 1, 2)
    pick = (_smooth_noise(g, 1, 5, size) > 0.5).float()
    degraded = pick * grow + (1 - pick) * shrink
    spots = (_smooth_noise(g, 1, 48, size) > 0.82).float()
    pick_label = torch.randint(0, labels, (size, size), generator=g)
    if peaked:
        present = torch.unique(gt)
        pick_label = present[pick_label % len(present)]
    spot_label = F.one_hot(pick_label, labels).permute(2, 0, 1)[None]
    degraded = (1 - spots) * degraded + spots * spot_label.float()
    soft = F.avg_pool2d(degraded, 5, 1, 2, count_include_pad=False)
    logits = (8.0 if peaked else 3.0) * soft + 0.5 * torch.randn(soft.shape, generator=g)
    return image.contiguous(), gt, torch.softmax(logits, dim=1)


def mean_iou(pred: torch.Tensor, gt: torch.Tensor, labels: int) -> float:
    if labels == 2:
        inter = ((pred == 1) & (gt == 1)).sum().item()
        union = ((pred == 1) | (gt == 1)).sum().item()
        return inter / max(union, 1)
    ious = []
    for lab in range(labels):
        p, t = pred == lab, gt == lab
        union = (p | t).sum().item()
        if union:
            ious.append((p & t).sum().item() / union)
    return sum(ious) / len(ious)


# -------------------------------------------------------------------------------------------- baselines
def unfold_crf(image: torch.Tensor, probs: torch.Tensor, params: CRFParams) -> torch.Tensor:
    """The same local mean-field model written the straightforward way (stored kernel, unfold per step)."""
    b, c, h, w = image.shape
    k, d = params.kernel_size, params.dilation
    pad = d * (k // 2)
    img = image.float()
    cols = F.unfold(img, k, dilation=d, padding=pad).view(b, c, k * k, h * w)
    colour = ((cols - img.view(b, c, 1, h * w)) ** 2).sum(1)
    inside = F.unfold(torch.ones(1, 1, h, w, device=img.device), k, dilation=d, padding=pad).view(1, k * k, h * w)
    taps = torch.tensor([(ty * d) ** 2 + (tx * d) ** 2 for ty in range(-(k // 2), k // 2 + 1)
                         for tx in range(-(k // 2), k // 2 + 1)], dtype=torch.float32, device=img.device)
    spatial_a = torch.zeros_like(taps) if math.isinf(params.theta_alpha) else taps / (2 * params.theta_alpha**2)
    kernel = params.w_appearance * torch.exp(-spatial_a.view(1, -1, 1) - colour / (2 * params.theta_beta**2))
    kernel = kernel + params.w_smooth * torch.exp(-taps / (2 * params.theta_gamma**2)).view(1, -1, 1)
    kernel = kernel * inside
    if not params.include_centre:
        kernel[:, (k * k) // 2] = 0
    unary = params.unary_weight * probs.float().clamp_min(params.unary_floor).log()
    q = torch.softmax(unary, dim=1)
    labels = probs.shape[1]
    for _ in range(params.iterations):
        cols_q = F.unfold(q, k, dilation=d, padding=pad).view(b, labels, k * k, h * w)
        msg = (cols_q * kernel[:, None]).sum(2).view(b, labels, h, w)
        q = torch.softmax(unary + msg, dim=1)
    return q


def unfold_bytes(labels: int, k: int, hw: int) -> int:
    return 4 * hw * k * k * (2 * labels + 4)


def densecrf(image_u8, probs, iterations: int):
    """pydensecrf2 fully connected CRF, usual settings; returns ``(L, H, W)`` probabilities (numpy)."""
    labels, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, labels)
    crf.setUnaryEnergy(unary_from_softmax(probs))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image_u8, compat=10)
    return np.asarray(crf.inference(iterations), dtype=np.float32)


# ----------------------------------------------------------------------------------------------- runner
@dataclass
class Case:
    """One measured method on one configuration."""

    method: str
    k: str
    dilation: str
    iters: int
    timing: Timing | None
    mem: float | None
    gain: float | None
    note: str = ""


CPU_TIME = False  # --cpu-time: time.process_time instead of wall time (fairer under load, with --threads 1)


def _cpu_time_call(fn: Callable[[], Any], repeat: int, budget_s: float = 60.0) -> Timing:
    """Median and best process CPU time of ``fn`` over up to ``repeat`` runs, after one warm-up call."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat and (not times or time.perf_counter() - start < budget_s):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return Timing(statistics.median(times), min(times), len(times))


def _measure(fn: Callable[[], torch.Tensor], device: torch.device, repeat: int) -> tuple[Timing, float | None, Any]:
    if CPU_TIME and device.type == "cpu":
        timing = _cpu_time_call(fn, repeat)
    else:
        timing = time_call(fn, device, repeat=repeat)
    mem = peak_memory(fn, device)
    return timing, mem, fn()


def _ours(image: torch.Tensor, probs: torch.Tensor, params: CRFParams, backend: str) -> torch.Tensor:
    os.environ["WSIS_KERNELS"] = backend
    try:
        return mean_field_crf(image, probs, None, params)
    finally:
        os.environ.pop("WSIS_KERNELS", None)


def _densecrf_call(image: torch.Tensor, probs: torch.Tensor, iterations: int) -> torch.Tensor:
    image_u8 = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).contiguous().numpy()
    q = densecrf(image_u8, probs[0].contiguous().numpy(), iterations)
    return torch.from_numpy(q).view(probs.shape[1:])[None]


def bench_labels(size: int, labels: int, iter_counts: list[int], windows: list[tuple[int, int]], repeat: int,
                 device: torch.device, scenes: int, peaked: bool = False) -> tuple[list[float], list[Case]]:
    """Time and memory on scene 0; IoU gain averaged over ``scenes`` scenes (seeds 0, 1, ...)."""
    data = [make_scene(size, labels, seed, peaked) for seed in range(scenes)]
    bases = [mean_iou(probs.argmax(1)[0], gt, labels) for _, gt, probs in data]
    image_d, probs_d = data[0][0].to(device), data[0][2].to(device)

    def mean_gain(first: torch.Tensor, run_scene: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
        gains = []
        for i, (image, gt, probs) in enumerate(data):
            q = first if i == 0 else run_scene(image.to(device), probs.to(device))
            gains.append(mean_iou(crf_labels(q.cpu())[0], gt, labels) - bases[i])
        return sum(gains) / len(gains)

    cases: list[Case] = []
    for iters in iter_counts:
        if dcrf is not None:
            t, mem, q = _measure(partial(_densecrf_call, data[0][0], data[0][2], iters), torch.device("cpu"),
                                 repeat)
            gain = mean_gain(q, lambda im, pr, iters=iters: _densecrf_call(im.cpu(), pr.cpu(), iters))
            cases.append(Case("pydensecrf (FC)", "all", "-", iters, t, mem, gain))
        for k, d in windows:
            params = ours_params(k, d, iters)
            t, mem, q_ref = _measure(partial(_ours, image_d, probs_d, params, "reference"), device, repeat)
            gain = mean_gain(q_ref, lambda im, pr, params=params: _ours(im, pr, params, "reference"))
            cases.append(Case(f"ours reference ({device.type})", str(k), str(d), iters, t, mem, gain))
            if device.type == "cuda":
                t, mem, q = _measure(partial(_ours, image_d, probs_d, params, "triton"), device, repeat)
                diff = (q - q_ref).abs().max().item()
                cases.append(Case("ours triton", str(k), str(d), iters, t, mem, gain, f"max|diff| {diff:.1e}"))
                print(_floor_line(size, labels, k, iters, t))
            need = unfold_bytes(labels, k, size * size)
            if need > UNFOLD_MAX_BYTES:
                cases.append(Case("unfold (same model)", str(k), str(d), iters, None, None, None,
                                  f"skipped: needs ~{need / 1024**3:.1f} GiB"))
                continue
            t, mem, q = _measure(partial(unfold_crf, image_d, probs_d, params), device, max(1, repeat // 2))
            diff = (q - q_ref).abs().max().item()
            same = bool(torch.equal(crf_labels(q.cpu()), crf_labels(q_ref.cpu())))
            cases.append(Case("unfold (same model)", str(k), str(d), iters, t, mem, gain if same else None,
                              f"max|diff| {diff:.1e}" + ("" if same else ", labels differ")))
    return bases, cases


def _ratio(cases: list[Case], ref: Case, method: str, same_window: bool) -> float | None:
    for c in cases:
        if (c.method == method and c.iters == ref.iters and c.timing is not None and ref.timing is not None
                and (not same_window or (c.k, c.dilation) == (ref.k, ref.dilation))):
            return c.timing.median / ref.timing.median
    return None


def report(labels: int, bases: list[float], cases: list[Case]) -> None:
    kind = "IoU" if labels == 2 else "mean IoU"
    print(f"## {labels} labels (unrefined {kind} of the {len(bases)} scenes: {', '.join(f'{b:.4f}' for b in bases)})")
    rows = []
    for c in cases:
        ours = c.method.startswith("ours")
        vs_dense = _ratio(cases, c, "pydensecrf (FC)", False) if ours else None
        vs_unfold = _ratio(cases, c, "unfold (same model)", True) if ours else None
        rows.append([c.method, c.k, c.dilation, str(c.iters), fmt_s(c.timing.median if c.timing else None),
                     fmt_s(c.timing.best if c.timing else None),
                     fmt_mib(c.mem), "-" if c.gain is None else f"{c.gain:+.4f}", fmt_ratio(vs_dense),
                     fmt_ratio(vs_unfold), c.note])
    print_table(["method", "k", "dil", "iters", "time", "best", "peak MiB", "IoU gain", "x vs densecrf", "x vs unfold",
                 "note"], rows)


def ours_params(k: int, dilation: int, iterations: int) -> CRFParams:
    return dataclasses.replace(CRFParams(), kernel_size=k, dilation=dilation, iterations=iterations)


def _floor_line(size: int, labels: int, k: int, iters: int, t: Timing) -> str:
    """Memory-traffic and arithmetic floors of the fused kernel on this GPU (copy bandwidth measured here)."""
    x = torch.empty(256 * 1024 * 1024 // 4, device="cuda")
    y = torch.empty_like(x)
    copy = time_call(lambda: y.copy_(x), "cuda", repeat=10)
    bandwidth = 2 * x.numel() * 4 / copy.median
    hw = size * size
    rows = 2 if labels <= 2 else labels
    bytes_iter = 4 * hw * (3 + 3 * rows)  # image + state in + state out + bias, window taps served by cache
    flops_iter = hw * k * k * (12 + 2 * rows) + hw * rows * 8
    return (f"   GPU floor L={labels} k={k} iters={iters}: {bytes_iter * iters / 1e6:.1f} MB of traffic -> "
            f"{bytes_iter * iters / bandwidth * 1e3:.3f} ms at the measured {bandwidth / 1e9:.0f} GB/s copy rate; "
            f"{flops_iter * iters / 1e9:.2f} GFLOP; measured {t.median * 1e3:.3f} ms")


def run(size: int, label_counts: list[int], iter_counts: list[int], windows: list[tuple[int, int]], repeat: int,
        device: torch.device, scenes: int, peaked: bool = False) -> None:
    kind = "peaked (segmentation-like)" if peaked else "noisy, flat"
    print(f"# CRF benchmark: {size}x{size} synthetic scene ({kind} probabilities), {describe_machine(device)}")
    clock = "process CPU time" if CPU_TIME else "wall time"
    print(f"# time: median (and best) {clock} over repeated calls in this run; the ratios use medians")
    print("# peak MiB: CPU = rise of the peak resident set during one call, all allocations (see bench/_common.py);")
    print("#   CUDA = torch.cuda.max_memory_allocated rise")
    print("# IoU gain: IoU (2 labels) or mean IoU over present labels (21) after refinement minus before,")
    print(f"#   averaged over {scenes} synthetic scenes (time and memory: scene 0); unfold computes our model, so")
    print("#   its gain is ours when its labels on scene 0 are identical")
    print(f"# ours: {CRFParams()} with kernel_size / dilation / iterations as listed")
    if dcrf is None:
        print("# pydensecrf: not importable (optional extra 'bench': uv sync --extra bench --inexact); skipped")
    print()
    for labels in label_counts:
        bases, cases = bench_labels(size, labels, iter_counts, windows, repeat, device, scenes, peaked)
        report(labels, bases, cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256x256, 5 iterations, windows 3 and 5 (dilation 2)")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--scenes", type=int, default=None, help="scenes averaged for quality (default 3, quick 1)")
    parser.add_argument("--scene", choices=("noisy", "peaked"), default="noisy",
                        help="noisy: flat probabilities (default); peaked: segmentation-like (see make_scene)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with process CPU time, not wall time (CPU only; fairer on a loaded machine with "
                             "--threads 1, pydensecrf being single-threaded)")
    parser.add_argument("--labels", default=None, help="label counts, comma-separated (default 2,21)")
    parser.add_argument("--iters", default=None, help="iteration counts, comma-separated (default 5,10; quick 5)")
    parser.add_argument("--windows", default=None,
                        help="windows as k:dilation, comma-separated (default 3:1,7:1,11:1,3:3,5:2; quick 3:1,5:2)")
    args = parser.parse_args()
    global CPU_TIME
    CPU_TIME = args.cpu_time
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    labels = [int(x) for x in args.labels.split(",")] if args.labels else [2, 21]
    iters = [int(x) for x in args.iters.split(",")] if args.iters else ([5] if args.quick else [5, 10])
    default_windows = "3:1,5:2" if args.quick else "3:1,7:1,11:1,3:3,5:2"
    windows = [tuple(int(v) for v in w.split(":")) for w in (args.windows or default_windows).split(",")]
    if args.quick:
        run(args.size or 256, labels, iters, windows, args.repeat or 2, device, args.scenes or 1,  # type: ignore[arg-type]
            args.scene == "peaked")
    else:
        run(args.size or 512, labels, iters, windows, args.repeat or 5, device, args.scenes or 3,  # type: ignore[arg-type]
            args.scene == "peaked")


if __name__ == "__main__":
    main()
