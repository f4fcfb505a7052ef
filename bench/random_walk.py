"""Benchmark IRNet's random walk: the sparse propagation of ``wsis irnet`` against upstream's dense method.

    uv run python bench/random_walk.py               # grids 32², 48², 64², 96², 128² (stride-4 cells)
    uv run python bench/random_walk.py --sizes 32 64 --channels 8

Both compute the same operator (radius 5, beta 10, 256 steps; see ``wsis_cli.stages.irnet.random_walk``): the
sparse one with 69 gather weights per pixel and 256 shifted multiply-add sweeps, the dense one as upstream
``propagate_to_edge`` does (a (HW)² affinity matrix over the padded grid, cropped, raised to the power
beta, column-normalised and squared 8 times). For each grid: wall time, peak memory (see ``_common``),
their ratios, and the max abs difference of the outputs (float32; also against a float64 sparse run as
the truth). A grid the dense method cannot hold within ``--dense-max-gib`` is reported as skipped. A grid
of 128² cells is a 512x512 image. Nothing here asserts a timing.

Measured on the 2-core development machine while four other engineers' jobs shared it (load 10-13, so
times are inflated and noisy; memory and differences are exact), 8 channels, float32, ``--repeat 1``:

    grid   sparse     dense     speed-up   sparse MiB   dense MiB   memory ratio   max |diff|   err vs f64 (sparse / dense)
    32²    0.62 s     2.70 s    4.3x       0.9          20.1        21.8x          8.8e-06      3.8e-06 / 1.0e-05
    48²    0.99 s     12.9 s    13.0x      2.0          84.0        41.7x          1.1e-05      3.3e-06 / 1.1e-05
    128²   (130 s)    -         -          8.8          3494        396x           -            5.5e-06 / -

At 128² (a 512x512 image) the dense method was run with one squaring for its peak memory (3.4 GiB; 8
squarings of a 16384² matrix are ~35 TFLOP, far too slow here). The sparse walk is closer to a float64
run than the dense one: 256 averaging steps accumulate less rounding than 8 squarings of T.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

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

from wsis_cli.stages.irnet.random_walk import random_walk, random_walk_dense  # noqa: E402


def scene(size: int, channels: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``(C, S, S)`` in [0, 1] and a boundary map ``(S, S)`` with a few closed walls, like IRNet's."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    edge = 0.05 * torch.rand(size, size, generator=g)
    x = torch.zeros(channels, size, size)
    for c in range(channels):
        cy, cx = torch.rand(2, generator=g) * size
        r = (0.1 + 0.2 * torch.rand(1, generator=g)) * size
        d = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        edge = torch.maximum(edge, torch.exp(-((d - r) ** 2) / 2.0))
        x[c] = torch.clamp(1.0 - d / r, min=0.0) ** 2
    return x, edge


def dense_bytes(size: int, radius: int = 5) -> int:
    """What the dense method holds at once: the padded matrix, its crop and one product (float32)."""
    padded = (size + radius) * (size + 2 * radius)
    return 4 * (padded * padded + 2 * size**4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64, 96, 128])
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dense-max-gib", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--memory-only-from", type=int, default=96,
                    help="from this grid side on, run the dense method once with a single squaring: its peak "
                    "memory is the same as with 8 (each square replaces the last), its time is not reported")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    print(f"random walk, radius 5, beta 10, 256 steps, {args.channels} channels; {describe_machine(device)}\n")
    headers = ["grid", "sparse", "dense", "speed-up", "sparse MiB", "dense MiB", "memory ratio",
               "max |sparse - dense|", "error vs f64 (sparse / dense)"]
    rows = []
    for size in args.sizes:
        x, edge = scene(size, args.channels)
        sparse = random_walk(x, edge)
        truth = random_walk(x.double(), edge.double())
        t_sparse = time_call(lambda x=x, edge=edge: random_walk(x, edge), device, repeat=args.repeat)
        m_sparse = peak_memory(lambda x=x, edge=edge: random_walk(x, edge), device)
        err_sparse = (sparse.double() - truth).abs().max().item()
        if dense_bytes(size) > args.dense_max_gib * 1024**3:
            rows.append([f"{size}²", fmt_s(t_sparse.median), "skipped", "-", fmt_mib(m_sparse),
                         f"> {args.dense_max_gib:g} GiB", "-", "-", f"{err_sparse:.1e}"])
        elif size >= args.memory_only_from:
            m_dense = peak_memory(lambda x=x, edge=edge: random_walk_dense(x, edge, exp_times=1), device)
            mem_ratio = m_dense / m_sparse if m_sparse and m_dense else None
            rows.append([f"{size}²", fmt_s(t_sparse.median), "(memory only)", "-", fmt_mib(m_sparse),
                         fmt_mib(m_dense), fmt_ratio(mem_ratio), "-", f"{err_sparse:.1e}"])
        else:
            dense = random_walk_dense(x, edge)
            t_dense = time_call(lambda x=x, edge=edge: random_walk_dense(x, edge), device, repeat=args.repeat)
            m_dense = peak_memory(lambda x=x, edge=edge: random_walk_dense(x, edge), device)
            diff = (sparse - dense).abs().max().item()
            err_dense = (dense.double() - truth).abs().max().item()
            mem_ratio = m_dense / m_sparse if m_sparse and m_dense else None
            rows.append([f"{size}²", fmt_s(t_sparse.median), fmt_s(t_dense.median),
                         fmt_ratio(t_dense.median / t_sparse.median), fmt_mib(m_sparse), fmt_mib(m_dense),
                         fmt_ratio(mem_ratio), f"{diff:.1e}", f"{err_sparse:.1e} / {err_dense:.1e}"])
        print(" | ".join(rows[-1]), flush=True)  # progress: dense grids take minutes
    print()
    print_table(headers, rows)


if __name__ == "__main__":
    main()
