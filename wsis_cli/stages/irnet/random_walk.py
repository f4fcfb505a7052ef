"""IRNet's random-walk propagation, done sparsely: O(C·HW) memory instead of the dense HW x HW matrix.

The operator is upstream's ``propagate_to_edge`` (radius 5, beta 10, ``exp_times = 8``, i.e. 256 steps):
affinities ``a_ij = 1 - max(edge on the path i→j)`` for every pair within the radius, self loops of
weight 1, ``A ← A^β`` elementwise, column normalisation ``T = A / sum_i A_ij``, the scores first damped
by ``x ← x * (1 - edge)``, then ``x ← x T`` 256 times. Pixels outside the map take no part (upstream
pads the edge map with 1, which gives them affinity 0 before cropping them away: the same operator).

Upstream builds ``T`` as a dense ``(HW)²`` matrix and squares it 8 times, about 1 GB for one 500x500
image at stride 4. Here each pixel keeps ``2·34 + 1`` gather weights (its neighbours at ``±d`` and
itself), so a step is 69 shifted multiply-adds over ``(C, H, W)``; :func:`random_walk_dense` keeps the
dense method as the reference for tests and ``bench/random_walk.py``.

``groups`` (an extension, off by default): an instance map at the walk's grid. A pair whose two ends lie
in two different instances (both labels > 0) gets affinity 0, so instance-wise CAMs of one class do not
flow into a touching instance of that class. IRNet's boundary branch learns *class* boundaries only (its
relations come from class labels), so nothing else stops that flow; without it the walk merges touching
same-class instances, the very case the displacement field is there to separate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from wsis_cli.models.irnet_paths import edge_to_affinity, path_offsets, radius_floor, search_directions

RADIUS = 5
BETA = 10.0
STEPS = 256


def _check(x: Tensor, edge: Tensor) -> None:
    if x.ndim != 3 or edge.ndim != 2 or x.shape[1:] != edge.shape:
        raise ValueError(f"x must be (C, H, W) and edge (H, W) of the same size, got {tuple(x.shape)} "
                         f"and {tuple(edge.shape)}")


def walk_weights(edge: Tensor, radius: float = RADIUS, beta: float = BETA,
                 dtype: torch.dtype = torch.float32,
                 groups: Tensor | None = None) -> tuple[list[tuple[int, int]], Tensor]:
    """Gather weights of one step: ``y[j] = sum_k W[k, j] * x[j + offsets[k]]``.

    Args:
        edge: ``(H, W)`` boundary probabilities in [0, 1].
        groups: optional ``(H, W)`` integer instance map; pairs joining two different labels > 0 get
            affinity 0 (label 0 joins anything).
    Returns:
        ``offsets`` (``2·D + 1`` of them: ``+d``, ``-d`` for each direction, then ``(0, 0)``) and ``W``,
        ``(2·D + 1, H, W)`` of ``dtype``: the column-normalised ``A^β`` (zero towards pixels outside the map).
    """
    h, w = edge.shape
    f = radius_floor(radius)
    # out-of-map path points count as boundary 1: pairs leaving the map get affinity 0
    padded = F.pad(edge.to(dtype)[None, None], (f, f, f, f), value=1.0)[0, 0]
    gpad = None
    if groups is not None:
        if groups.shape != edge.shape:
            raise ValueError(f"groups must be (H, W) like edge, got {tuple(groups.shape)}")
        gpad = F.pad(groups.to(device=edge.device, dtype=torch.int64), (f, f, f, f), value=0)
    fwd, bwd = [], []
    for dy, dx in search_directions(radius):
        m = torch.stack([padded[f + oy : f + oy + h, f + ox : f + ox + w] for oy, ox in path_offsets(dy, dx)]).amax(0)
        a = (1.0 - m).clamp_(min=0.0).pow_(beta)  # a[p]: pair (p, p + d)
        if gpad is not None:
            gs, gd = gpad[f : f + h, f : f + w], gpad[f + dy : f + dy + h, f + dx : f + dx + w]
            a = a * ((gs == gd) | (gs == 0) | (gd == 0)).to(dtype)
        b = torch.zeros_like(a)  # b[p] = a[p - d]: pair (p - d, p)
        if abs(dy) < h and abs(dx) < w:
            b[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[max(-dy, 0) : h - max(dy, 0),
                                                                            max(-dx, 0) : w - max(dx, 0)]
        fwd.append(a)
        bwd.append(b)
    weights = torch.stack(fwd + bwd + [torch.ones_like(edge, dtype=dtype)])
    weights /= weights.sum(0, keepdim=True)  # column sums of A^β: every pair touching j, and j itself
    dirs = list(search_directions(radius))
    offsets = dirs + [(-dy, -dx) for dy, dx in dirs] + [(0, 0)]
    return offsets, weights


def random_walk(x: Tensor, edge: Tensor, radius: float = RADIUS, beta: float = BETA, steps: int = STEPS,
                groups: Tensor | None = None) -> Tensor:
    """Propagate scores over affinities from a boundary map, sparsely (upstream ``propagate_to_edge``).

    Args:
        x: ``(C, H, W)`` non-negative scores (CAMs or instance-wise CAMs) at the edge map's stride.
        edge: ``(H, W)`` boundary probabilities in [0, 1].
        steps: number of transition steps (upstream: ``2 ** exp_times = 256``).
        groups: optional ``(H, W)`` instance map that the walk may not cross (see :func:`walk_weights`).
    Returns:
        ``(C, H, W)`` float32 (float64 for float64 ``x``) on ``x``'s device. Memory is ``O((C + 2D) · H · W)``.
    """
    _check(x, edge)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    edge = edge.to(device=x.device, dtype=dtype)
    offsets, weights = walk_weights(edge, radius, beta, dtype, groups)
    c, h, w = x.shape
    f = radius_floor(radius)
    # x lives in the interior of a zero-padded buffer, so every shifted read is a plain slice
    buf = torch.zeros(c, h + 2 * f, w + 2 * f, dtype=dtype, device=x.device)
    interior = buf[:, f : f + h, f : f + w]
    interior.copy_(x.to(dtype) * (1.0 - edge))
    acc = torch.empty(c, h, w, dtype=dtype, device=x.device)
    views = [buf[:, f + oy : f + oy + h, f + ox : f + ox + w] for oy, ox in offsets]
    for _ in range(steps):
        torch.mul(views[0], weights[0], out=acc)
        for view, wk in zip(views[1:], weights[1:], strict=True):
            acc.addcmul_(view, wk)
        interior.copy_(acc)
    return interior.clone()


def random_walk_dense(x: Tensor, edge: Tensor, radius: float = RADIUS, beta: float = BETA,
                      exp_times: int = 8) -> Tensor:
    """The upstream dense method, for tests and benchmarks only: ``O((HW)²)`` memory.

    Pads the edge map with 1 (``r`` left/right/bottom), builds the symmetric affinity matrix with self
    loops over the padded grid, crops it to the image, ``A^β``, column-normalises and squares it
    ``exp_times`` times, then ``x (1 - edge) @ T``. Same arguments and result as :func:`random_walk`
    with ``steps = 2 ** exp_times``.
    """
    _check(x, edge)
    c, h, w = x.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    edge = edge.to(dtype)
    r = int(radius)
    padded = F.pad(edge[None, None], (r, r, 0, r), value=1.0)
    hp, wp = padded.shape[-2:]
    aff = edge_to_affinity(padded, radius)[0]  # (D, hp - f, wp - 2f)
    f = radius_floor(radius)
    hs, ws = aff.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(hs), torch.arange(ws), indexing="ij")
    n = hp * wp
    dense = torch.zeros(n, n, dtype=dtype)
    for k, (dy, dx) in enumerate(search_directions(radius)):
        src = (ys * wp + xs + f).reshape(-1)
        dst = ((ys + dy) * wp + xs + f + dx).reshape(-1)
        dense[src, dst] = aff[k].reshape(-1)
        dense[dst, src] = aff[k].reshape(-1)
    dense.fill_diagonal_(1.0)
    keep = (torch.arange(h)[:, None] * wp + torch.arange(r, r + w)[None, :]).reshape(-1)
    a = dense[keep][:, keep]
    del dense
    a = a.pow_(beta)
    a /= a.sum(0, keepdim=True)
    for _ in range(exp_times):
        a = a @ a
    flat = (x.to(dtype) * (1.0 - edge)).reshape(c, h * w)
    return (flat @ a).reshape(c, h, w)
