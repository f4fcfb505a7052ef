"""Triton score maps: a fused two-pass kernel over H*W tiles, never writing the N x H*W scores.

Each program owns ``BLOCK_N`` queries and one contiguous share of the H*W tiles. Pass 1 computes each
score tile with ``tl.dot`` (float32 accumulation; IEEE float32 products for float32 inputs so results match
the reference, tensor cores for float16/bfloat16) and keeps running minima and maxima; the shares are
combined on the host (``(N, splits)`` numbers). Pass 2 recomputes each tile, normalises it with the global
min/max and accumulates the foreground sum and count. Recomputing costs a second matmul, which is cheaper
than storing and re-reading ``4*N*H*W`` bytes; the traffic left is the keys, read twice per query block.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._dispatch import triton_interpreted


@triton.jit
def _score_tile(
    q_ptr, k_ptr, qrows, qmask, hw0, E, HW,
    BLOCK_N: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_E: tl.constexpr, IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Scores ``q[qrows] @ k[:, hw0:hw0+BLOCK_HW]`` as a float32 ``(BLOCK_N, BLOCK_HW)`` tile."""
    cols = hw0 + tl.arange(0, BLOCK_HW)
    cmask = cols < HW
    acc = tl.zeros([BLOCK_N, BLOCK_HW], dtype=tl.float32)
    for e0 in range(0, E, BLOCK_E):
        es = e0 + tl.arange(0, BLOCK_E)
        emask = es < E
        q = tl.load(q_ptr + qrows[:, None] * E + es[None, :], mask=qmask[:, None] & emask[None, :], other=0.0)
        k = tl.load(k_ptr + es[:, None] * HW + cols[None, :], mask=emask[:, None] & cmask[None, :], other=0.0)
        if UPCAST:  # Triton's CPU interpreter has no bfloat16 matmul; the products are exact in fp32 anyway
            q = q.to(tl.float32)
            k = k.to(tl.float32)
        if IEEE:
            acc = tl.dot(q, k, acc, input_precision="ieee")
        else:
            acc = tl.dot(q, k, acc)
    return acc


@triton.jit
def _minmax_kernel(
    q_ptr,  # (N, E) queries
    k_ptr,  # (E, HW) keys, same dtype as q
    pmin_ptr,  # (N, SPLITS) float32 out: minimum over this split's columns
    pmax_ptr,  # (N, SPLITS) float32 out
    N,
    E,
    HW,
    TILES_PER_SPLIT,
    SPLITS,
    BLOCK_N: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_E: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    split = tl.program_id(1)
    run_min = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    run_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    for t in range(TILES_PER_SPLIT):
        hw0 = (split * TILES_PER_SPLIT + t) * BLOCK_HW
        s = _score_tile(q_ptr, k_ptr, rows, rmask, hw0, E, HW, BLOCK_N, BLOCK_HW, BLOCK_E, IEEE, UPCAST)
        cmask = (hw0 + tl.arange(0, BLOCK_HW)) < HW
        run_min = tl.minimum(run_min, tl.min(tl.where(cmask[None, :], s, float("inf")), axis=1))
        run_max = tl.maximum(run_max, tl.max(tl.where(cmask[None, :], s, float("-inf")), axis=1))
    tl.store(pmin_ptr + rows * SPLITS + split, run_min, mask=rmask)
    tl.store(pmax_ptr + rows * SPLITS + split, run_max, mask=rmask)


@triton.jit
def _mask_stats_kernel(
    q_ptr,  # (N, E) queries
    k_ptr,  # (E, HW) keys
    min_ptr,  # (N,) float32 per-query minimum
    max_ptr,  # (N,) float32 per-query maximum
    psum_ptr,  # (N, SPLITS) float32 out: sum of the normalised foreground over this split
    pcnt_ptr,  # (N, SPLITS) int32 out: foreground count over this split
    N,
    E,
    HW,
    TILES_PER_SPLIT,
    SPLITS,
    threshold,
    BLOCK_N: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_E: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    split = tl.program_id(1)
    mn = tl.load(min_ptr + rows, mask=rmask, other=0.0)
    rng = tl.load(max_ptr + rows, mask=rmask, other=1.0) - mn
    rng = tl.where(rng > 0, rng, 1.0)
    fg_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    fg_cnt = tl.zeros([BLOCK_N], dtype=tl.int32)
    for t in range(TILES_PER_SPLIT):
        hw0 = (split * TILES_PER_SPLIT + t) * BLOCK_HW
        s = _score_tile(q_ptr, k_ptr, rows, rmask, hw0, E, HW, BLOCK_N, BLOCK_HW, BLOCK_E, IEEE, UPCAST)
        cmask = (hw0 + tl.arange(0, BLOCK_HW)) < HW
        soft = (s - mn[:, None]) / rng[:, None]
        fg = (soft >= threshold) & cmask[None, :]
        fg_sum += tl.sum(tl.where(fg, soft, 0.0), axis=1)
        fg_cnt += tl.sum(fg.to(tl.int32), axis=1)
    tl.store(psum_ptr + rows * SPLITS + split, fg_sum, mask=rmask)
    tl.store(pcnt_ptr + rows * SPLITS + split, fg_cnt, mask=rmask)


@triton.jit
def _soft_mask_kernel(
    q_ptr,  # (N, E) queries
    k_ptr,  # (E, HW) keys
    idx_ptr,  # (K,) int64 selected query indices
    min_ptr,  # (N,) float32
    max_ptr,  # (N,) float32
    out_ptr,  # (K, HW) float32
    K,
    E,
    HW,
    BLOCK_N: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_E: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    sel = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    smask = sel < K
    qrows = tl.load(idx_ptr + sel, mask=smask, other=0)
    hw0 = tl.program_id(1) * BLOCK_HW
    s = _score_tile(q_ptr, k_ptr, qrows, smask, hw0, E, HW, BLOCK_N, BLOCK_HW, BLOCK_E, IEEE, UPCAST)
    mn = tl.load(min_ptr + qrows, mask=smask, other=0.0)
    rng = tl.load(max_ptr + qrows, mask=smask, other=1.0) - mn
    rng = tl.where(rng > 0, rng, 1.0)
    soft = (s - mn[:, None]) / rng[:, None]
    cols = hw0 + tl.arange(0, BLOCK_HW)
    tl.store(out_ptr + sel[:, None] * HW + cols[None, :], soft, mask=smask[:, None] & (cols < HW)[None, :])


_BLOCK_N, _BLOCK_HW, _BLOCK_E = 64, 64, 32


def _operands(keys: Tensor, queries: Tensor) -> tuple[Tensor, Tensor, dict[str, bool]]:
    """Keys ``(E, H*W)`` and queries in one dtype (float32 if they differ) and the dot-product flags."""
    dtype = keys.dtype if keys.dtype == queries.dtype else torch.float32
    if dtype == torch.float64:
        dtype = torch.float32
    k = keys.reshape(keys.shape[0], -1).to(dtype).contiguous()
    q = queries.to(dtype).contiguous()
    upcast = dtype != torch.float32 and triton_interpreted()
    return k, q, {"IEEE": dtype == torch.float32 or upcast, "UPCAST": upcast}


def _splits(n: int, hw: int, device: torch.device) -> tuple[int, int]:
    """``(splits, tiles_per_split)``: how many programs share one query block's H*W tiles.

    A few thousand queries are only a few dozen query blocks, too few for a large GPU, so the H*W range is
    split until there are about four programs per SM (two splits under the interpreter, to test the path).
    """
    blocks, tiles = triton.cdiv(n, _BLOCK_N), triton.cdiv(hw, _BLOCK_HW)
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2 * blocks
    per_split = triton.cdiv(tiles, max(1, min(tiles, triton.cdiv(target, blocks))))
    return triton.cdiv(tiles, per_split), per_split


def score_map_stats_triton(keys: Tensor, queries: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Triton version of :func:`score_map_stats_reference` (inputs validated by the caller)."""
    k, q, flags = _operands(keys, queries)
    n, e = q.shape
    hw = k.shape[1]
    device = keys.device
    if n == 0:
        empty = torch.empty(0, dtype=torch.float32, device=device)
        return empty, empty.clone(), empty.clone(), torch.empty(0, dtype=torch.int64, device=device)
    splits, per_split = _splits(n, hw, device)
    blocks = dict(BLOCK_N=_BLOCK_N, BLOCK_HW=_BLOCK_HW, BLOCK_E=_BLOCK_E, num_warps=4, enable_fp_fusion=True,
                  **flags)
    grid = (triton.cdiv(n, _BLOCK_N), splits)
    pmin = torch.empty(n, splits, dtype=torch.float32, device=device)
    pmax = torch.empty_like(pmin)
    _minmax_kernel[grid](q, k, pmin, pmax, n, e, hw, per_split, splits, **blocks)
    mins, maxs = pmin.amin(dim=1), pmax.amax(dim=1)
    psum = torch.empty_like(pmin)
    pcnt = torch.empty(n, splits, dtype=torch.int32, device=device)
    _mask_stats_kernel[grid](q, k, mins, maxs, psum, pcnt, n, e, hw, per_split, splits, float(threshold), **blocks)
    area = pcnt.sum(dim=1)
    maskness = torch.where(area > 0, psum.sum(dim=1) / area.clamp_min(1), torch.zeros_like(mins))
    return mins, maxs, maskness, area


def soft_masks_triton(keys: Tensor, queries: Tensor, indices: Tensor, mins: Tensor, maxs: Tensor) -> Tensor:
    """Triton version of :func:`soft_masks_reference`."""
    k, q, flags = _operands(keys, queries)
    e, h, w = keys.shape
    hw = h * w
    idx = indices.to(torch.int64).contiguous()
    count = idx.numel()
    out = torch.empty(count, hw, dtype=torch.float32, device=keys.device)
    if count:
        grid = (triton.cdiv(count, _BLOCK_N), triton.cdiv(hw, _BLOCK_HW))
        _soft_mask_kernel[grid](q, k, idx, mins.to(torch.float32).contiguous(), maxs.to(torch.float32).contiguous(),
                                out, count, e, hw, BLOCK_N=_BLOCK_N, BLOCK_HW=_BLOCK_HW, BLOCK_E=_BLOCK_E,
                                num_warps=4, enable_fp_fusion=True, **flags)
    return out.view(count, h, w)
