"""IRNet's pixel-pair geometry: search directions, paths, affinities from a boundary map, pair labels.

A pair is a source pixel ``p`` and a destination ``p + d`` for a direction ``d = (dy, dx)`` in a half
plane (``dy >= 0``; ``dx > 0`` when ``dy = 0``) with ``dy² + dx² < r²``, so each unordered pair appears
once: 34 directions for ``r = 5`` and 152 for ``r = 10``. The *path* of a direction is the set of integer
offsets inside the segment's bounding box whose squared distance to the segment's line is below 1 (both
ends included); the affinity of a pair is ``1 - max`` of the boundary probability over its path.

Sources live on the cropped grid ``[0, h - f) x [f, w - f)`` with ``f = ceil(r) - 1``, so every
destination is inside the map (the upstream ``PathIndex`` layout, which the training losses use). The
random walk instead keeps every in-image pair (see :mod:`wsis_cli.stages.random_walk`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=16)
def search_directions(radius: float) -> tuple[tuple[int, int], ...]:
    """Half-plane offsets ``(dy, dx)`` with ``dy² + dx² < radius²``: ``(0, 1..)`` then rows ``dy >= 1``."""
    if radius <= 1:
        raise ValueError(f"radius must be > 1, got {radius}")
    n = math.ceil(radius)
    r2 = radius * radius
    dirs = [(0, dx) for dx in range(1, n) if dx * dx < r2]
    for dy in range(1, n):
        dirs.extend((dy, dx) for dx in range(-n + 1, n) if dy * dy + dx * dx < r2)
    return tuple(dirs)


@lru_cache(maxsize=512)
def path_offsets(dy: int, dx: int) -> tuple[tuple[int, int], ...]:
    """Integer offsets on the way from ``(0, 0)`` to ``(dy, dx)``, ends included (squared line distance < 1)."""
    length2 = dy * dy + dx * dx
    out = []
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            if (dy * x - dx * y) ** 2 < length2:
                out.append((y, x))
    return tuple(out)


def radius_floor(radius: float) -> int:
    """``ceil(radius) - 1``: the largest |offset| a direction can have along either axis."""
    return math.ceil(radius) - 1


def cropped_size(height: int, width: int, radius: float) -> tuple[int, int]:
    """Size of the source grid for a ``height x width`` map: ``(h - f, w - 2f)``."""
    f = radius_floor(radius)
    return height - f, width - 2 * f


@dataclass(frozen=True)
class _Plan:
    """Flat gather indices of every pair on a grid (cached per size): one gather per path length."""

    src: Tensor  # (n,) flat index of each source
    dst: Tensor  # (D, n) flat index of each destination
    groups: list[tuple[Tensor, Tensor]]  # (direction ids (Dg,), path indices (Dg, L, n)) by path length
    order: Tensor  # (D,) position of each direction in the concatenation of the groups
    shape: tuple[int, int]  # (hs, ws)


@lru_cache(maxsize=32)
def _plan(height: int, width: int, radius: float, device: str) -> _Plan:
    f = radius_floor(radius)
    hs, ws = cropped_size(height, width, radius)
    if hs < 1 or ws < 1:
        raise ValueError(f"a {height}x{width} map is too small for radius {radius}")
    ys = torch.arange(hs).view(-1, 1)
    xs = torch.arange(f, f + ws).view(1, -1)
    src = (ys * width + xs).reshape(-1)
    dirs = search_directions(radius)
    dst = torch.stack([((ys + dy) * width + xs + dx).reshape(-1) for dy, dx in dirs])
    by_len: dict[int, list[int]] = {}
    for k, (dy, dx) in enumerate(dirs):
        by_len.setdefault(len(path_offsets(dy, dx)), []).append(k)
    groups, seq = [], []
    for length in sorted(by_len):
        ks = by_len[length]
        idx = torch.stack([torch.stack([src + oy * width + ox for oy, ox in path_offsets(*dirs[k])]) for k in ks])
        groups.append((torch.tensor(ks).to(device), idx.to(device)))
        seq.extend(ks)
    order = torch.empty(len(dirs), dtype=torch.int64)
    order[torch.tensor(seq)] = torch.arange(len(dirs))
    return _Plan(src.to(device), dst.to(device), groups, order.to(device), (hs, ws))


def _gather(flat: Tensor, index: Tensor) -> Tensor:
    """``flat[..., index]`` for a ``(..., N)`` tensor and an index of any shape."""
    return flat[..., index.reshape(-1)].reshape(*flat.shape[:-1], *index.shape)


def edge_to_affinity(edge: Tensor, radius: float) -> Tensor:
    """Affinities ``1 - max(edge over the path)`` of every pair on the source grid.

    Args:
        edge: ``(B, 1, H, W)`` boundary probabilities in [0, 1].
    Returns:
        ``(B, D, H - f, W - 2f)`` with ``D = len(search_directions(radius))``; differentiable.
    """
    b, _, h, w = edge.shape
    plan = _plan(h, w, radius, str(edge.device))
    flat = edge.reshape(b, h * w)
    maxima = torch.cat([_gather(flat, idx).amax(2) for _, idx in plan.groups], 1)  # (B, D, n) in group order
    return (1.0 - maxima[:, plan.order]).reshape(b, -1, *plan.shape)


def pair_displacement(disp: Tensor, radius: float) -> Tensor:
    """``D(src) - D(dst)`` for every pair on the source grid.

    Args:
        disp: ``(B, 2, H, W)`` displacement field (dy, dx) in grid units.
    Returns:
        ``(B, 2, D, H - f, W - 2f)``. For two pixels of one instance it should equal ``dst - src``.
    """
    b, c, h, w = disp.shape
    plan = _plan(h, w, radius, str(disp.device))
    flat = disp.reshape(b, c, h * w)
    pair = _gather(flat, plan.src).unsqueeze(2) - _gather(flat, plan.dst)
    return pair.reshape(b, c, -1, *plan.shape)


def direction_tensor(radius: float, device: torch.device | str | None = None) -> Tensor:
    """``(1, 2, D, 1, 1)`` float32 offsets ``dst - src``, the target of :func:`pair_displacement` in one instance."""
    d = torch.tensor(search_directions(radius), dtype=torch.float32, device=device)
    return d.t().reshape(1, 2, -1, 1, 1)


def affinity_labels(labels: Tensor, radius: float, ignore: int = 255) -> tuple[Tensor, Tensor, Tensor]:
    """Pair labels from a label map: 0 background, 1.. classes, ``ignore`` unknown.

    Args:
        labels: ``(B, H, W)`` integer label map (at the affinity grid's stride).
    Returns:
        ``(bg_pos, fg_pos, neg)``, each ``(B, D, H - f, W - 2f)`` float32 in {0, 1}: both ends background;
        both ends the same class; ends of different labels. Pairs with an ``ignore`` end are in none.
    """
    b, h, w = labels.shape
    plan = _plan(h, w, radius, str(labels.device))
    flat = labels.reshape(b, h * w)
    src = _gather(flat, plan.src).unsqueeze(1)
    dst = _gather(flat, plan.dst)
    valid = (src != ignore) & (dst != ignore)
    same = (src == dst) & valid
    shape = (b, -1, *plan.shape)
    bg_pos = (same & (src == 0)).float().reshape(shape)
    fg_pos = (same & (src != 0)).float().reshape(shape)
    neg = (valid & (src != dst)).float().reshape(shape)
    return bg_pos, fg_pos, neg
