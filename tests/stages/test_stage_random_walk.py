"""The sparse random walk is the upstream dense T^256 operator, without its (HW)² matrix."""

from __future__ import annotations

import pytest
import torch

from wsis_cli.stages.irnet.random_walk import random_walk, random_walk_dense, walk_weights


@pytest.mark.parametrize("size", [(1, 1), (3, 4), (12, 16), (20, 9), (17, 23)])
def test_sparse_equals_dense_float64(size: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(sum(size))
    h, w = size
    edge = torch.rand(h, w, generator=g, dtype=torch.float64) ** 3
    x = torch.rand(3, h, w, generator=g, dtype=torch.float64)
    sparse = random_walk(x, edge)
    dense = random_walk_dense(x, edge)
    assert sparse.dtype == torch.float64
    assert (sparse - dense).abs().max().item() < 1e-5


def test_sparse_equals_dense_float32_within_1e_4() -> None:
    g = torch.Generator().manual_seed(0)
    edge = torch.rand(24, 24, generator=g) ** 3
    x = torch.rand(4, 24, 24, generator=g)
    assert (random_walk(x, edge) - random_walk_dense(x, edge)).abs().max().item() < 1e-4


def test_other_radius_beta_and_steps() -> None:
    g = torch.Generator().manual_seed(1)
    edge = torch.rand(10, 11, generator=g, dtype=torch.float64)
    x = torch.rand(2, 10, 11, generator=g, dtype=torch.float64)
    a = random_walk(x, edge, radius=3, beta=4.0, steps=16)
    b = random_walk_dense(x, edge, radius=3, beta=4.0, exp_times=4)
    assert (a - b).abs().max().item() < 1e-10


def test_weights_are_column_normalised_and_zero_outside() -> None:
    offsets, weights = walk_weights(torch.zeros(6, 7))
    assert len(offsets) == 69 and weights.shape == (69, 6, 7)
    assert torch.allclose(weights.sum(0), torch.ones(6, 7))
    k = offsets.index((0, 1))
    assert torch.all(weights[k, :, -1] == 0)  # no neighbour right of the last column


def test_boundary_stops_propagation() -> None:
    edge = torch.zeros(16, 16)
    edge[:, 8] = 1.0
    x = torch.zeros(1, 16, 16)
    x[0, 8, 2] = 1.0
    out = random_walk(x, edge)
    assert out[0, :, 9:].abs().max().item() < 1e-6
    assert out[0, :, :8].sum().item() > 0.5
    with pytest.raises(ValueError):
        random_walk(torch.zeros(1, 4, 4), torch.zeros(4, 5))


def test_groups_block_pairs_between_instances() -> None:
    edge = torch.zeros(12, 12)
    groups = torch.zeros(12, 12, dtype=torch.int64)
    groups[:, :6] = 1
    groups[:, 6:] = 2
    x = torch.zeros(1, 12, 12)
    x[0, 6, 1] = 1.0
    out = random_walk(x, edge, groups=groups)
    assert out[0, :, 6:].abs().max().item() == 0.0 and out[0, :, :6].sum().item() > 0
    groups[:, 5:7] = 0  # label 0 joins anything: the walk crosses through it
    assert random_walk(x, edge, groups=groups)[0, :, 6:].sum().item() > 0
    same = random_walk(x, edge, groups=torch.ones(12, 12, dtype=torch.int64))
    assert torch.allclose(same, random_walk(x, edge))
