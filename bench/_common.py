"""Shared helpers for the kernel benchmarks: timing, peak-memory measurement, table printing.

Peak memory on CPU is the rise of the process's resident set during one call: large blocks are mmap'd
one by one (fixed ``M_MMAP_THRESHOLD``) so freed tensors leave the resident set at once, free heap pages
are handed back (``malloc_trim``), the kernel's high-water mark is reset (``/proc/self/clear_refs``), and
the peak is ``VmHWM`` after the call minus ``VmRSS`` before it. It counts every byte the call touches (torch
tensors, library workspaces such as pydensecrf's lattice, allocator slack), not only torch tensors. On CUDA
it is ``torch.cuda.max_memory_allocated`` above the pre-call allocation.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

MiB = 1024 * 1024


@dataclass
class Timing:
    median: float
    best: float
    runs: int


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: torch.device | str = "cpu", repeat: int = 5,
              warmup: int = 1, budget_s: float = 20.0) -> Timing:
    """Median and best wall time of ``fn`` over up to ``repeat`` runs (fewer if over ``budget_s``)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return Timing(statistics.median(times), min(times), len(times))


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _fix_mmap_threshold() -> None:
    """Serve every allocation above 128 KiB with its own mmap (glibc's ``M_MMAP_THRESHOLD``).

    glibc otherwise raises the threshold after the first large free and keeps later large blocks on the
    heap, where freed tensors stay resident; the peak would then count dead tensors, unevenly per method.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # -3 = M_MMAP_THRESHOLD


_fix_mmap_threshold()


def _malloc_trim() -> None:
    with contextlib.suppress(OSError):  # not glibc: freed pages may stay resident (peaks read low)
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def cpu_peak_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _proc_status_kib("VmHWM")
    except OSError:
        return False
    return True


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> float | None:
    """Peak extra memory (bytes) of one call of ``fn``; ``None`` when it cannot be measured here."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    if not cpu_peak_supported():
        return None
    _malloc_trim()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _proc_status_kib("VmRSS")
    result = fn()
    peak = _proc_status_kib("VmHWM")
    del result
    return float(max(0, peak - base) * 1024)


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_mib(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / MiB:.1f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}x"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    print()


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads"
