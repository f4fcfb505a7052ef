"""Seeding: the same seed gives the same draws everywhere, DataLoader workers differ yet repeat."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from wsis_cli.runtime.seeding import generator, seed_everything, set_deterministic_algorithms, worker_init_fn


@pytest.fixture(autouse=True)
def _restore_torch_flags(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # seed_everything changes process-wide switches; leave other tests the defaults
    monkeypatch.setenv("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED", "0"))
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", os.environ.get("CUBLAS_WORKSPACE_CONFIG", ""))
    monkeypatch.setenv("TORCHINDUCTOR_DETERMINISTIC", os.environ.get("TORCHINDUCTOR_DETERMINISTIC", "0"))
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[0], flags[1]
    set_deterministic_algorithms(flags[2], warn_only=flags[3])


def _draw() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_same_seed_same_draws() -> None:
    seed_everything(7)
    a = _draw()
    seed_everything(7)
    assert _draw() == a
    seed_everything(8)
    assert _draw() != a
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    inductor = sys.modules.get("torch._inductor.config")  # torch.compile's flag: set, or set on import
    assert inductor.deterministic if inductor else os.environ["TORCHINDUCTOR_DETERMINISTIC"] == "1"
    seed_everything(7, deterministic=False)
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()


def test_generator() -> None:
    assert torch.randperm(10, generator=generator(3)).tolist() == torch.randperm(10, generator=generator(3)).tolist()


class _NumpyDraws(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> float:
        return float(np.random.rand())


def _worker_draws(seed: int) -> list[float]:
    loader = torch.utils.data.DataLoader(_NumpyDraws(), batch_size=None, num_workers=2, worker_init_fn=worker_init_fn,
                                         generator=generator(seed), multiprocessing_context="fork")
    return [float(x) for x in loader]


def test_workers_draw_differently_but_reproducibly() -> None:
    a = _worker_draws(1)
    # items 0 and 1 come from different workers; without worker_init_fn forked workers would agree
    assert a[0] != a[1]
    assert _worker_draws(1) == a
    assert _worker_draws(2) != a
