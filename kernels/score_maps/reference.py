"""Readable PyTorch score maps (Free Mask): per-query statistics without holding the N x H*W scores.

Queries are processed in chunks whose float32 score block fits ``chunk_bytes``. For each chunk the score
block ``S = Q_chunk @ K`` is normalised in place exactly as FreeSOLO does (``S -= min; S /= max``), then
``threshold_`` zeroes everything below the threshold in one pass, so the foreground sum is a plain row sum
and, after ``ceil_``, so is the area. Peak memory is one chunk (plus a float32 copy of float16/bfloat16 keys).

Chunks must not get too small: every chunk's matmul streams all of ``K`` (210 MB for E = 2,048 at
160 x 160), so a few dozen queries per chunk turn a compute-bound matmul into a memory-bound one.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024  # >= ~150 queries per chunk at 160x160: the matmul stays efficient


def keys_matrix(keys: Tensor) -> Tensor:
    """``(E, H, W)`` keys as a float32 ``(E, H*W)`` matrix (a view when already float32 and contiguous)."""
    return keys.reshape(keys.shape[0], -1).to(torch.float32).contiguous()


def safe_range(mins: Tensor, maxs: Tensor) -> Tensor:
    """``max - min``, with 1 where it is 0 so that a constant map normalises to 0 (FreeSOLO gets NaN)."""
    rng = maxs - mins
    return torch.where(rng > 0, rng, torch.ones_like(rng))


def _just_below(threshold: float) -> float:
    """Largest float32 below ``threshold``: ``x > just_below(t)`` is ``x >= t`` for float32 ``x``."""
    t = torch.tensor(threshold, dtype=torch.float32)
    return float(torch.nextafter(t, torch.tensor(float("-inf"))))


def score_map_stats_reference(
    keys: Tensor, queries: Tensor, threshold: float, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-query ``(min, max, maskness, area)``; shapes and semantics as in :func:`score_map_stats`."""
    k = keys_matrix(keys)
    n, hw = queries.shape[0], k.shape[1]
    device = keys.device
    mins = torch.empty(n, dtype=torch.float32, device=device)
    maxs = torch.empty(n, dtype=torch.float32, device=device)
    sums = torch.empty(n, dtype=torch.float32, device=device)
    area = torch.empty(n, dtype=torch.int64, device=device)
    rows = max(1, chunk_bytes // (4 * max(hw, 1)))
    below = _just_below(threshold)
    block = torch.empty(min(rows, n) * hw, dtype=torch.float32, device=device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        s = block[: (stop - start) * hw].view(stop - start, hw)
        torch.matmul(queries[start:stop].to(torch.float32), k, out=s)
        mn, mx = torch.aminmax(s, dim=1)
        mins[start:stop], maxs[start:stop] = mn, mx
        s.sub_(mn[:, None]).div_(safe_range(mn, mx)[:, None])  # soft masks in [0, 1]
        if threshold <= 0:  # every pixel is foreground
            torch.sum(s, dim=1, out=sums[start:stop])
            area[start:stop] = hw
            continue
        torch.nn.functional.threshold_(s, below, 0.0)  # keeps s >= threshold (> 0), zeroes the rest
        torch.sum(s, dim=1, out=sums[start:stop])
        # foreground values lie in (0, 1], so ceil makes them 1 and the row sum is the count (exact in
        # float32 below 2**24 pixels); count_nonzero would allocate an int64 copy of the chunk
        if hw < 2**24:
            area[start:stop] = torch.sum(s.ceil_(), dim=1).to(torch.int64)
        else:
            area[start:stop] = torch.count_nonzero(s, dim=1)
    maskness = torch.where(area > 0, sums / area.clamp_min(1).to(torch.float32), torch.zeros_like(sums))
    return mins, maxs, maskness, area


def soft_masks_reference(keys: Tensor, queries: Tensor, indices: Tensor, mins: Tensor, maxs: Tensor) -> Tensor:
    """Normalised soft masks ``(K, H, W)`` float32 of ``queries[indices]``."""
    e, h, w = keys.shape
    k = keys_matrix(keys)
    s = queries[indices].to(torch.float32) @ k
    mn, mx = mins[indices].to(torch.float32), maxs[indices].to(torch.float32)
    s.sub_(mn[:, None]).div_(safe_range(mn, mx)[:, None])
    return s.view(-1, h, w)
