"""Independent jobs of ``wsis demo`` (the students) run side by side, one CPU thread each.

A student is a few hundred small single-threaded steps: intra-op threads do not pay at its tensor sizes
(two threads made an epoch several times slower on a shared machine; figures: bench/NOTES.md, "student
demo: one CPU thread"), so the only way to use a second core is a second student. :class:`JobPool`
runs jobs in ``jobs`` worker processes (``spawn``: a forked copy of a process that already runs torch
threads can deadlock) while the demo's own process goes on labelling.
With ``jobs <= 1`` every job runs at once in this process, as before.

Each job reports its own wall and CPU time (:class:`JobTime`), so the demo can tell how its time splits
even on a loaded machine, where wall times say little.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wsis_cli.runtime.log import LOGGER_NAME, configure


@dataclass(frozen=True)
class JobTime:
    """Wall seconds and this job's CPU seconds (``time.process_time`` of the process that ran it)."""

    wall: float
    cpu: float


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, JobTime]:
    """``fn(*args)`` and how long it took."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, JobTime(time.perf_counter() - w0, time.process_time() - c0)


def _init_worker(level: int) -> None:
    import torch

    configure(quiet=level >= logging.WARNING, verbose=level <= logging.DEBUG)
    torch.set_num_threads(1)


class Job:
    """A submitted job; :meth:`get` waits for ``(result, JobTime)`` (re-raising the job's exception)."""

    def __init__(self, pending: Any = None, done: tuple[Any, JobTime] | None = None) -> None:
        self._pending, self._done = pending, done

    def get(self) -> tuple[Any, JobTime]:
        if self._done is None:
            self._done = self._pending.get()
        return self._done


class JobPool:
    """``with JobPool(2) as pool: job = pool.submit(fn, *args); ...; result, t = job.get()``.

    Leaving the block normally waits for nothing more (collect what you need first); leaving it by an
    exception (or SIGTERM's :class:`~wsis_cli.runtime.errors.Terminated`) kills the workers at once.
    """

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self._pool: Any = None

    def __enter__(self) -> JobPool:
        if self.jobs > 1:
            ctx = multiprocessing.get_context("spawn")
            level = logging.getLogger(LOGGER_NAME).getEffectiveLevel()
            self._pool = ctx.Pool(self.jobs, initializer=_init_worker, initargs=(level,))
        return self

    def submit(self, fn: Callable[..., Any], *args: Any) -> Job:
        if self._pool is None:
            return Job(done=timed(fn, *args))
        return Job(pending=self._pool.apply_async(timed, (fn, *args)))

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._pool is None:
            return
        if exc_type is None:
            self._pool.close()
        else:
            self._pool.terminate()
        self._pool.join()
        self._pool = None
