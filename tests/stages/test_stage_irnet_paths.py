"""Pair geometry of IRNet: direction counts, paths, affinities, pair labels and displacements."""

from __future__ import annotations

import pytest
import torch

from wsis_cli.models.irnet_paths import (
    affinity_labels,
    cropped_size,
    edge_to_affinity,
    pair_displacement,
    path_offsets,
    search_directions,
)


def test_direction_counts_match_upstream() -> None:
    assert len(search_directions(5)) == 34
    assert len(search_directions(10)) == 152
    dirs = search_directions(5)
    assert len(set(dirs)) == len(dirs)
    # half plane: no direction appears with its opposite, and all lie within the radius
    assert not any((-dy, -dx) in dirs for dy, dx in dirs)
    assert all(dy * dy + dx * dx < 25 and (dy > 0 or dx > 0) for dy, dx in dirs)


def test_paths_include_both_ends_and_follow_the_line() -> None:
    assert path_offsets(0, 3) == ((0, 0), (0, 1), (0, 2), (0, 3))
    diag = path_offsets(2, 2)
    assert (0, 0) in diag and (2, 2) in diag and (1, 1) in diag
    assert (0, 2) not in diag and (2, 0) not in diag
    for dy, dx in search_directions(10):
        p = path_offsets(dy, dx)
        assert (0, 0) in p and (dy, dx) in p


def test_affinity_is_one_minus_the_max_boundary_on_the_path() -> None:
    edge = torch.zeros(1, 1, 12, 12)
    edge[0, 0, :, 6] = 0.8  # a vertical wall
    aff = edge_to_affinity(edge, 5)
    dirs = search_directions(5)
    hs, ws = cropped_size(12, 12, 5)
    assert aff.shape == (1, 34, hs, ws)
    f = 4
    k = dirs.index((0, 2))
    # sources are columns f..w-f-1 of the map: grid column c is map column c + f
    assert aff[0, k, 3, 5 - f].item() == pytest.approx(0.2)  # 5 -> 7 crosses column 6
    assert aff[0, k, 3, 7 - f].item() == pytest.approx(1.0)  # 7 -> 9 stays right of it
    k_down = dirs.index((3, 0))
    assert aff[0, k_down, 0, 7 - f].item() == pytest.approx(1.0)
    assert aff[0, k_down, 0, 6 - f].item() == pytest.approx(0.2)


def test_affinity_labels_split_pairs() -> None:
    labels = torch.zeros(1, 12, 12, dtype=torch.int64)
    labels[0, :, 6:] = 1
    labels[0, 0, :] = 255
    bg, fg, neg = affinity_labels(labels, 5)
    dirs = search_directions(5)
    k = dirs.index((0, 1))
    f = 4
    assert bg[0, k, 3, 4 - f] == 1 and fg[0, k, 3, 4 - f] == 0 and neg[0, k, 3, 4 - f] == 0
    assert neg[0, k, 3, 5 - f] == 1  # 5 | 6 across the class border
    assert fg[0, k, 3, 7 - f] == 1
    assert bg[0, :, 0].sum() == 0 and fg[0, :, 0].sum() == 0 and neg[0, :, 0].sum() == 0  # ignored row
    assert torch.all(bg + fg + neg <= 1)


def test_pair_displacement_of_a_perfect_field_is_the_offset() -> None:
    h = w = 24
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    disp = torch.stack([11.0 - ys, 11.0 - xs])[None]  # every pixel points at (11, 11)
    pair = pair_displacement(disp, 10)
    dirs = torch.tensor(search_directions(10)).float().t()
    assert torch.allclose(pair, dirs.view(1, 2, -1, 1, 1).expand_as(pair))
