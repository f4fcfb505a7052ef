"""Free Mask core: matrix NMS against a plain loop, kernel path against the materialising path."""

from __future__ import annotations

import math

import pytest
import torch

from wsis_cli.stages.freemask.masks import (
    FreeMaskParams,
    free_masks,
    matrix_nms,
    pyramid_queries,
    query_embeddings,
    upstream_box_stats,
)


def _loop_matrix_nms(masks: torch.Tensor, scores: list[float], sigma: float) -> list[float]:
    """The definition, one pair at a time: decay_j = min over better i of exp(-s iou_ij^2) / exp(-s comp_i^2)."""
    flat = [m.flatten().bool() for m in masks]
    n = len(flat)

    def iou(a: int, b: int) -> float:
        inter = int((flat[a] & flat[b]).sum())
        union = int((flat[a] | flat[b]).sum())
        return inter / union if union else 0.0

    comp = [max([iou(k, i) for k in range(i)], default=0.0) for i in range(n)]
    out = []
    for j in range(n):
        decay = 1.0
        for i in range(j):
            decay = min(decay, math.exp(-sigma * iou(i, j) ** 2) / math.exp(-sigma * comp[i] ** 2))
        out.append(scores[j] * decay)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matrix_nms_matches_the_loop(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = 12
    # overlapping rectangles so that IoUs take many values, plus a duplicate and an empty-overlap mask
    masks = torch.zeros(n, 16, 16, dtype=torch.bool)
    for k in range(n):
        y, x = torch.randint(0, 8, (2,), generator=g).tolist()
        hh, ww = torch.randint(3, 9, (2,), generator=g).tolist()
        masks[k, y : y + hh, x : x + ww] = True
    masks[5] = masks[2]
    scores = torch.sort(torch.rand(n, generator=g), descending=True).values
    got = matrix_nms(masks, scores, sigma=2.0)
    want = _loop_matrix_nms(masks, scores.tolist(), 2.0)
    assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    assert got[0] == scores[0] and bool((got <= scores + 1e-7).all())


def test_matrix_nms_uses_sigma_times_iou_squared() -> None:
    a = torch.zeros(2, 1, 4, dtype=torch.bool)
    a[0, 0, :4] = True
    a[1, 0, :2] = True  # IoU 0.5 with the first
    got = matrix_nms(a, torch.tensor([1.0, 1.0]), sigma=2.0)
    assert got[1].item() == pytest.approx(math.exp(-2.0 * 0.25))
    assert matrix_nms(a[:0], torch.zeros(0)).shape == (0,)


def test_box_stats_follow_the_occupancy_projections() -> None:
    m = torch.zeros(2, 10, 12, dtype=torch.bool)
    m[0, 2:5, 3:9] = True
    m[0, 8, 0] = True  # a stray pixel: rows 2,3,4,8 occupied
    cy, width = upstream_box_stats(m)
    assert cy[0].item() == pytest.approx((2 + 3 + 4 + 8) / 4)
    assert width[0].item() == 7 and width[1].item() == 0 and cy[1].item() == 0


def test_embeddings_interpolate_the_channels() -> None:
    q = torch.arange(8, dtype=torch.float32)[None].repeat(3, 1)
    e = query_embeddings(q, 16)
    assert e.shape == (3, 16)
    assert torch.all(e[:, 1:] >= e[:, :-1])  # linear interpolation of a ramp stays monotone
    assert query_embeddings(q[:0], 128).shape == (0, 128)


def test_pyramid_has_every_scale() -> None:
    keys = torch.nn.functional.normalize(torch.randn(5, 8, 12), dim=0)
    q = pyramid_queries(keys, (1.0, 0.5, 0.25))
    assert q.shape == (96 + 24 + 6, 5)
    assert torch.allclose(q.norm(dim=1), torch.ones(q.shape[0]))
    assert pyramid_queries(keys, (1.0, 0.05)).shape == (96, 5)  # a scale leaving no pixel is skipped


def _blob_features(seed: int, e: int = 16, h: int = 20, w: int = 24) -> torch.Tensor:
    """Features with a few constant-ish regions (objects) on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(e, h, w, generator=g) * 0.3
    for _ in range(4):
        y, x = torch.randint(2, h - 6, (1,), generator=g).item(), torch.randint(2, w - 6, (1,), generator=g).item()
        f[:, y : y + 5, x : x + 6] += torch.randn(e, 1, 1, generator=g) * 2
    return f


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("pre_nms", [1, 100])
def test_kernel_path_equals_materialising_path(seed: int, pre_nms: int) -> None:
    f = _blob_features(seed)
    p = FreeMaskParams(top_k=10, pre_nms=pre_nms, min_score=None, min_center_y=None, max_width=None)
    fast = free_masks(f, (80, 96), p)
    dense = free_masks(f, (80, 96), p, dense=True)
    assert len(fast) > 0
    assert torch.equal(fast.queries, dense.queries)
    assert torch.allclose(fast.scores, dense.scores, atol=1e-6)
    assert torch.equal(fast.masks, dense.masks)
    assert torch.allclose(fast.embeddings, dense.embeddings)
    assert fast.masks.shape[1:] == (80, 96) and fast.embeddings.shape[1] == 128
    assert torch.all(fast.scores[:-1] >= fast.scores[1:])


def test_filters_drop_what_upstream_drops() -> None:
    f = _blob_features(3)
    loose = free_masks(f, (40, 48), FreeMaskParams(min_score=None, min_center_y=None, max_width=None))
    strict = free_masks(f, (40, 48), FreeMaskParams(min_score=0.9, min_center_y=0.2, max_width=0.5))
    assert len(strict) <= len(loose)
    cy, width = upstream_box_stats(strict.masks)
    assert bool((strict.scores >= 0.9).all() and (cy > 8).all() and (width < 24).all())
    assert bool(strict.masks.flatten(1).any(dim=1).all())


def _two_blobs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features of one kind of object twice on a background: ``(features (8, 16, 16), blob a, blob b)`` with
    the blobs as ``(64, 64)`` image masks (4 px per feature cell)."""
    f = torch.zeros(8, 16, 16)
    f[0] = 1.0  # background
    a, b = torch.zeros(16, 16, dtype=torch.bool), torch.zeros(16, 16, dtype=torch.bool)
    a[2:6, 2:6], b[9:14, 8:13] = True, True
    f[:, a | b] = 0.0
    f[1, a | b] = 1.0  # the same object feature on both blobs
    up = lambda m: m.repeat_interleave(4, 0).repeat_interleave(4, 1)  # noqa: E731
    return f, up(a), up(b)


def _iou(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x & y).sum()) / float((x | y).sum())


def test_split_turns_a_category_mask_into_its_instances() -> None:
    f, a, b = _two_blobs()
    off = FreeMaskParams(min_score=None, min_center_y=None, max_width=None, split=False)
    whole = free_masks(f, (64, 64), off)
    # without the split the object query's mask holds both blobs: no mask matches either one
    assert max(_iou(m, a) for m in whole.masks) < 0.7 and max(_iou(m, b) for m in whole.masks) < 0.7
    parts = free_masks(f, (64, 64), FreeMaskParams(min_score=None, min_center_y=None, max_width=None, split=True))
    best_a = max(range(len(parts)), key=lambda i: _iou(parts.masks[i], a))
    best_b = max(range(len(parts)), key=lambda i: _iou(parts.masks[i], b))
    assert best_a != best_b and _iou(parts.masks[best_a], a) > 0.8 and _iou(parts.masks[best_b], b) > 0.8
    # one instance per object: duplicates from overlapping parents are suppressed
    assert sum(_iou(m, a) > 0.5 for m in parts.masks) == 1 and sum(_iou(m, b) > 0.5 for m in parts.masks) == 1
    assert len(parts.embeddings) == len(parts.queries) == len(parts.scores) == len(parts.masks)
    assert bool((parts.scores[:-1] >= parts.scores[1:]).all())


def test_split_caps_instances_at_the_id_range() -> None:
    from wsis_cli.stages.freemask.components import split_components

    grid = torch.zeros(1, 200, 200, dtype=torch.bool)
    for dy in (0, 1):
        for dx in (0, 1):
            grid[0, dy::4, dx::4] = True  # 2,500 separate 2x2 dots: more than an image's id range holds
    masks, scores, parent = split_components(grid, torch.ones(1), torch.ones(1, 50, 50), limit=999)
    assert len(masks) == 999 and bool((parent == 0).all()) and bool((masks.flatten(1).sum(1) == 4).all())
