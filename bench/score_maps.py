"""Benchmark Free Mask score maps: ``wsis_kernels.score_map_stats`` against the materialising computation.

    uv run python bench/score_maps.py           # N = 2,100; E = 256 and 2,048; H*W = 100^2 and 160^2
    uv run python bench/score_maps.py --quick   # N = 2,100, E = 256, H*W = 100^2 only

The baseline is Free Mask's scoring written the usual eager way: the whole ``(N, H*W)`` score matrix,
then min-max normalisation, threshold, maskness and area with out-of-place ops. Ours never holds more
than one chunk of scores (CPU reference) or any (Triton). Time is the median of repeated calls in this
run; peak memory is measured as described in ``_common`` (inputs excluded). Nothing asserts a timing.

Measured on the 2-core development machine (CPU reference, 2 threads; areas identical, maskness within
5e-7 of the materialising result):

    E      H*W    materialising        ours (reference)     peak ratio
    256    100^2  254 ms, 340 MiB      101 ms, 16 MiB       0.047
    256    160^2  682 ms, 872 MiB      303 ms, 16 MiB       0.018
    2048   100^2  759 ms, 340 MiB      543 ms, 16 MiB       0.047
    2048   160^2  2.12 s, 872 MiB      1.63 s, 16 MiB       0.018
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    describe_machine,
    fmt_mib,
    fmt_ratio,
    fmt_s,
    peak_memory,
    print_table,
    time_call,
)

from wsis_kernels import score_map_stats  # noqa: E402


def materialising(keys: torch.Tensor, queries: torch.Tensor, threshold: float = 0.5):
    """Free Mask scoring with the N x H*W matrix in memory (float32)."""
    e = keys.shape[0]
    attn = queries.float() @ keys.float().reshape(e, -1)
    mins = attn.min(dim=1).values
    maxs = attn.max(dim=1).values
    soft = attn - mins[:, None]
    soft = soft / (maxs - mins).clamp_min(1e-12)[:, None]
    masks = soft >= threshold
    area = masks.sum(dim=1)
    maskness = (soft * masks).sum(dim=1) / area.clamp(min=1)
    return mins, maxs, maskness, area


def ours(keys: torch.Tensor, queries: torch.Tensor, backend: str):
    os.environ["WSIS_KERNELS"] = backend
    try:
        return score_map_stats(keys, queries)
    finally:
        os.environ.pop("WSIS_KERNELS", None)


def make_inputs(n: int, e: int, side: int, device: torch.device, dtype: torch.dtype = torch.float32):
    """L2-normalised keys (E, side, side) and N queries drawn near key vectors (peaked maps, as Free Mask)."""
    g = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.randn(1, e, side // 4, side // 4, generator=g), size=(side, side),
                           mode="bilinear", align_corners=False)[0]
    keys = F.normalize(smooth + 0.3 * torch.randn(e, side, side, generator=g), dim=0)
    pick = torch.randint(0, side * side, (n,), generator=g)
    queries = keys.reshape(e, -1)[:, pick].T + 0.5 * torch.randn(n, e, generator=g) / e**0.5
    queries = F.normalize(queries, dim=1)
    return keys.to(device, dtype).contiguous(), queries.to(device, dtype).contiguous()


def run(n: int, sizes: list[tuple[int, int]], repeat: int, device: torch.device) -> None:
    print(f"# score maps benchmark: N = {n} queries, {describe_machine(device)}")
    print("# time: median (and best) wall time over repeated calls in this run; speed-up uses medians")
    print("# peak MiB: CPU = rise of the process's peak resident set during one call (all allocations);")
    print("#   CUDA = torch.cuda.max_memory_allocated rise. N x H*W float32 is listed for scale.")
    print("# agree: max |maskness difference| and total |area difference| against the materialising result")
    print()
    rows = []
    for e, side in sizes:
        keys, queries = make_inputs(n, e, side, device)
        hw = side * side
        base_t = time_call(partial(materialising, keys, queries), device, repeat=repeat)
        base_mem = peak_memory(partial(materialising, keys, queries), device)
        want = materialising(keys, queries)
        label = f"E={e} HW={side}^2"
        rows.append([label, "materialising (fp32)", fmt_s(base_t.median), fmt_s(base_t.best), fmt_mib(base_mem),
                     fmt_mib(4.0 * n * hw), "-", "-", "-"])
        backends = ["reference"] + (["triton"] if device.type == "cuda" else [])
        for backend in backends:
            t = time_call(partial(ours, keys, queries, backend), device, repeat=repeat)
            mem = peak_memory(partial(ours, keys, queries, backend), device)
            got = ours(keys, queries, backend)
            agree = (f"{(got.maskness - want[2]).abs().max().item():.1e} / "
                     f"{int((got.area - want[3]).abs().sum().item())}")
            mem_ratio = None if mem is None or not base_mem else mem / base_mem
            rows.append([label, f"ours {backend} ({device.type})", fmt_s(t.median), fmt_s(t.best), fmt_mib(mem), "-",
                         fmt_ratio(base_t.median / t.median),
                         "-" if mem_ratio is None else f"{mem_ratio:.3f}", agree])
        if device.type == "cuda":
            flops = 2.0 * n * e * hw
            print(f"   floor E={e} HW={side}^2: {flops / 1e9:.1f} GFLOP per pass (the fused kernel does two);"
                  f" keys {4 * e * hw / 1e6:.0f} MB read twice per query block")
        del keys, queries, want
    print_table(["case", "method", "time", "best", "peak MiB", "NxHW MiB", "speed-up", "mem / baseline", "agree"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="E = 256, H*W = 100^2 only")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.quick:
        run(2100, [(256, 100)], args.repeat or 3, device)
    else:
        run(2100, [(256, 100), (256, 160), (2048, 100), (2048, 160)], args.repeat or 5, device)


if __name__ == "__main__":
    main()
