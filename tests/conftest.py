"""Shared by every test: under pytest-xdist (``-n``), split the cores between the workers.

Each worker is a process with its own torch; left alone, every one would start a thread per core and the
workers would fight over the same cores. Set before any test module imports torch (conftest loads first),
and inherited by the ``wsis`` subprocesses the CLI tests start.
"""

from __future__ import annotations

import os

import pytest

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // _workers))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)


@pytest.fixture
def preempted_after_first_checkpoint(monkeypatch):
    """A context manager: inside it, a training run stops (KeyboardInterrupt) right after saving its first
    per-epoch checkpoint, as a preempted job would; on leaving it, checkpoints save normally again."""
    from contextlib import contextmanager

    from wsis_cli.io.run_dir import RunDir

    real = RunDir.save_checkpoint

    def save_then_die(self, state):
        real(self, state)
        raise KeyboardInterrupt

    @contextmanager
    def preempted():
        monkeypatch.setattr(RunDir, "save_checkpoint", save_then_die)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(RunDir, "save_checkpoint", real)

    return preempted
