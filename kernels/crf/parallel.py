"""Row ranges of one CPU pass spread over a few threads, each running PyTorch single-threaded.

PyTorch parallelises every operation on its own (an OpenMP team per op, joined at the op's end). The CRF's
CPU passes are long sequences of small in-cache operations on row bands, and each op's join then costs
about as much as it saves; under load it costs far more, since every join waits for the slowest thread and
a descheduled one stalls them all (21 labels, 512x512, 5 iterations, the 2-core machine at load ~7: 695 ms
against 221 ms on one thread). Here the parallel unit is a whole band instead: the caller and a few pool
threads take the next band as they get free and run its operations back to back on one intra-op thread
(``torch.set_num_threads(1)`` is per thread under OpenMP); the caller's other operations run on one thread too.

Every band is processed by exactly one thread with the same operations in the same order as the sequential
loop, so results are bitwise identical whatever the thread count (deterministic). The number of threads
follows ``torch.get_num_threads()`` of the calling thread: ``torch.set_num_threads(1)`` (or
``OMP_NUM_THREADS=1``) runs everything inline. With few labels a pass is too short for this to pay (two
half-image bands balance badly); the CRF then leaves torch's own threads in charge, as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager

import torch

_LOCK = threading.Lock()
_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)
_WORKER = threading.local()


def _init_worker() -> None:
    torch.get_num_threads()  # PyTorch's lazy per-thread set-up first, or it would later undo the next line
    torch.set_num_threads(1)  # OpenMP's thread count is per calling thread: the caller's is unchanged
    _WORKER.inside = True


def workers(units: int) -> int:
    """How many threads a pass over ``units`` independent pieces would use (1 = inline).

    More than one only inside :func:`own_ops_single_threaded` (elsewhere the caller's ops use torch's threads,
    and pool threads beside them would oversubscribe the cores), never inside a pool thread.
    """
    if getattr(_WORKER, "inside", False):
        return 1
    return max(1, min(units, getattr(_WORKER, "budget", None) or 1))


@contextmanager
def own_ops_single_threaded() -> Iterator[None]:
    """While a CRF runs: the caller's thread count becomes the worker budget and its own ops use one thread.

    The operations left outside the parallel passes (small per-tile batches, whole-image copies) would
    otherwise each fork and join PyTorch's team, the stall this module avoids: on the shared 2-core machine
    under load ~7, a 21-label 512x512 run took 695 ms so against 221 ms with them on one thread. The
    caller's setting is restored on exit (``torch.set_num_threads`` is per thread under OpenMP).
    """
    if getattr(_WORKER, "inside", False) or getattr(_WORKER, "budget", None):  # nested call: as set up
        yield
        return
    keep = torch.get_num_threads()
    _WORKER.budget = keep
    if keep > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        _WORKER.budget = None
        if keep > 1:
            torch.set_num_threads(keep)


def _pool(count: int) -> ThreadPoolExecutor:
    global _POOL
    with _LOCK:
        # a fresh pool after fork (a forked child has none of the parent's threads) or when more are needed
        if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < count:
            if _POOL is not None and _POOL[0] == os.getpid():
                _POOL[2].shutdown(wait=False)
            keep = torch.get_num_threads()
            pool = ThreadPoolExecutor(count, "wsis-crf", initializer=_init_worker)
            # start every worker now (each waits for all), then restore the default: torch.set_num_threads
            # also sets the count that threads started later in the process begin with
            barrier = threading.Barrier(count)
            for started in [pool.submit(barrier.wait) for _ in range(count)]:
                started.result()
            torch.set_num_threads(keep)
            _POOL = (os.getpid(), count, pool)
        return _POOL[2]


def ranges(start: int, stop: int, step: int) -> list[tuple[int, int]]:
    """``[y, min(stop, y + step))`` for ``y`` from ``start`` in steps of ``step``."""
    return [(y, min(stop, y + step)) for y in range(start, stop, step)]


def run(pieces: Sequence[tuple[int, int]], body: Callable[[int, int, int], None]) -> None:
    """``body(worker, y0, y1)`` once for every piece, on up to :func:`workers` threads (the caller included).

    Threads take the next piece as they get free, in order: on a loaded machine a thread that is not
    scheduled holds up no more than its current piece. ``worker`` (0 = the caller) indexes per-thread
    scratch buffers; no two threads share one at a time.
    """
    count = workers(len(pieces))
    if count == 1:
        for y0, y1 in pieces:
            body(0, y0, y1)
        return
    lock, todo = threading.Lock(), iter(pieces)

    def take(worker: int) -> None:
        while True:
            with lock:
                piece = next(todo, None)
            if piece is None:
                return
            body(worker, *piece)

    pool = _pool(count - 1)
    helpers = [pool.submit(take, k) for k in range(1, count)]
    try:
        take(0)
    finally:
        wait(helpers)  # all stopped before any error leaves (they write into the caller's buffers)
    for f in helpers:
        f.result()  # re-raises a helper's exception here
