"""Free Mask score maps: cosine scores of N queries against H*W keys, summarised without storing them.

FreeSOLO's Free Mask (``demo/inference_freemask.py``) scores every query against every key pixel
(``s = q . k``, both L2-normalised), min-max normalises each query's map to [0, 1] (the soft mask),
thresholds it at 0.5 (the mask) and ranks masks by maskness ``sum(soft * mask) / sum(mask)``. Most of the
N masks are discarded, so :func:`score_map_stats` returns only per-query numbers and
:func:`soft_masks` materialises the few that are kept.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._dispatch import select_backend
from .reference import DEFAULT_CHUNK_BYTES, score_map_stats_reference, soft_masks_reference

__all__ = ["ScoreMapStats", "score_map_stats", "soft_masks"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class ScoreMapStats(NamedTuple):
    """Per-query summaries, each ``(N,)``: ``min``/``max`` of the raw scores (float32), ``maskness``
    (float32, 0 when the mask is empty) and ``area`` (int64 foreground pixel count)."""

    min: Tensor
    max: Tensor
    maskness: Tensor
    area: Tensor


def _check_operands(keys: object, queries: object) -> tuple[Tensor, Tensor]:
    for name, value, ndim, shape in (("keys", keys, 3, "(E, H, W)"), ("queries", queries, 2, "(N, E)")):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype not in _FLOATS:
            raise TypeError(f"{name} must be float16/bfloat16/float32/float64, got {value.dtype}")
        if value.ndim != ndim:
            raise ValueError(f"{name} must be {shape}, got shape {tuple(value.shape)}")
    assert isinstance(keys, Tensor) and isinstance(queries, Tensor)
    if queries.shape[1] != keys.shape[0]:
        raise ValueError(f"queries (N, E={queries.shape[1]}) and keys (E={keys.shape[0]}, H, W) disagree on E")
    if keys.shape[0] < 1 or keys.shape[1] < 1 or keys.shape[2] < 1:
        raise ValueError(f"keys must be non-empty (E, H, W), got {tuple(keys.shape)}")
    if keys.device != queries.device:
        raise ValueError(f"keys and queries must be on one device, got {keys.device} and {queries.device}")
    return keys, queries


def score_map_stats(
    keys: Tensor,
    queries: Tensor,
    threshold: float = 0.5,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> ScoreMapStats:
    """Per-query min, max, maskness and area of the min-max normalised cosine score maps.

    Args:
        keys: ``(E, H, W)`` float16/bfloat16/float32/float64, L2-normalised along ``E``.
        queries: ``(N, E)``, L2-normalised rows (any float dtype; the scores accumulate in float32).
        threshold: a pixel is foreground when its normalised score is ``>= threshold`` (FreeSOLO: 0.5).
        chunk_bytes: reference path only: size of the float32 score block held at once (queries per
            chunk = ``chunk_bytes // (4 * H * W)``, at least one).

    Returns:
        :class:`ScoreMapStats` of ``(N,)`` tensors on the keys' device. The soft mask of query ``n`` is
        ``(s - min) / (max - min)`` (0 everywhere when ``max == min``); maskness is its mean over the
        foreground, 0 for an empty foreground; area is the foreground pixel count.
    """
    keys, queries = _check_operands(keys, queries)
    if not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
    if not isinstance(chunk_bytes, int) or chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be a positive int, got {chunk_bytes!r}")
    if select_backend(keys, queries) == "triton":
        from .triton import score_map_stats_triton

        return ScoreMapStats(*score_map_stats_triton(keys, queries, float(threshold)))
    return ScoreMapStats(*score_map_stats_reference(keys, queries, float(threshold), chunk_bytes))


def soft_masks(keys: Tensor, queries: Tensor, indices: Tensor, mins: Tensor, maxs: Tensor) -> Tensor:
    """Materialise the normalised soft masks of the selected queries.

    Args:
        keys: ``(E, H, W)`` as for :func:`score_map_stats`.
        queries: ``(N, E)`` as for :func:`score_map_stats`.
        indices: ``(K,)`` integer indices into ``queries``.
        mins, maxs: ``(N,)`` per-query score minima and maxima (``ScoreMapStats.min`` / ``.max``).

    Returns:
        ``(K, H, W)`` float32 soft masks ``(s - min) / (max - min)`` in [0, 1].
    """
    keys, queries = _check_operands(keys, queries)
    n = queries.shape[0]
    if not isinstance(indices, Tensor) or indices.ndim != 1:
        raise TypeError("indices must be a 1-D integer torch.Tensor")
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise TypeError(f"indices must have an integer dtype, got {indices.dtype}")
    for name, value in (("mins", mins), ("maxs", maxs)):
        if not isinstance(value, Tensor) or value.shape != (n,):
            raise ValueError(f"{name} must be a ({n},) tensor of per-query scores")
    if any(t.device != keys.device for t in (indices, mins, maxs)):
        raise ValueError("indices, mins and maxs must be on the keys' device")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
        raise ValueError(f"indices must lie in [0, {n})")
    if select_backend(keys, queries) == "triton":
        from .triton import soft_masks_triton

        return soft_masks_triton(keys, queries, indices, mins, maxs)
    return soft_masks_reference(keys, queries, indices, mins, maxs)
