"""Score maps: both paths against the naive computation that materialises every N x H*W score."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsis_kernels import score_map_stats, soft_masks


def naive_free_mask(keys, queries, threshold=0.5):
    """FreeSOLO's Free Mask scoring written plainly: all scores at once, float32."""
    e, h, w = keys.shape
    attn = queries.float() @ keys.float().reshape(e, h * w)
    mins = attn.min(dim=1).values
    maxs = attn.max(dim=1).values
    soft = attn - mins[:, None]
    span = soft.max(dim=1).values
    soft = soft / torch.where(span > 0, span, torch.ones_like(span))[:, None]
    masks = soft >= threshold
    area = masks.sum(dim=1)
    maskness = (soft * masks).sum(dim=1) / area.clamp(min=1)
    return mins, maxs, maskness, area, soft.view(-1, h, w)


def make(gen, n, e, h, w, dtype=torch.float32):
    keys = F.normalize(torch.randn(e, h, w, generator=gen), dim=0).to(dtype)
    queries = F.normalize(torch.randn(n, e, generator=gen), dim=1)
    # Free Mask's queries are (downsampled) keys: include a few so maps have one clear peak
    queries[: min(n, 5)] = keys.reshape(e, -1)[:, : min(n, 5)].T.float()
    return keys, queries.to(dtype)


def assert_stats_close(stats, want, threshold=0.5, rtol=1e-5, atol=1e-6):
    """Min/max/maskness close; area exact except for pixels whose normalised score is within 1e-5 of the
    threshold (a last-bit difference in a score can move those across it)."""
    mins, maxs, maskness, area, soft = want
    torch.testing.assert_close(stats.min.cpu(), mins, rtol=rtol, atol=atol)
    torch.testing.assert_close(stats.max.cpu(), maxs, rtol=rtol, atol=atol)
    ambiguous = ((soft - threshold).abs() < 1e-5).flatten(1).sum(1)
    assert torch.all((stats.area.cpu() - area).abs() <= ambiguous)
    exact = ambiguous == 0
    torch.testing.assert_close(stats.maskness.cpu()[exact], maskness[exact], rtol=rtol * 10, atol=atol * 10)
    assert stats.area.dtype == torch.int64 and stats.maskness.dtype == torch.float32


@pytest.mark.parametrize(
    ("n", "e", "h", "w", "threshold", "chunk_bytes"),
    [
        (70, 40, 13, 17, 0.5, 4 * 13 * 17 * 7),  # several chunks, last one short
        (1, 8, 1, 1, 0.5, 1),  # one pixel: min == max, chunk smaller than one row
        (33, 16, 1, 29, 0.3, 64),
        (200, 64, 20, 20, 0.5, 8 * 1024 * 1024),  # one chunk
        (50, 32, 9, 11, 0.0, 1000),  # everything is foreground
        (50, 32, 9, 11, 1.0, 1000),  # only the maximum
    ],
)
def test_reference_matches_naive(reference_backend, rng, n, e, h, w, threshold, chunk_bytes):
    keys, queries = make(rng, n, e, h, w)
    stats = score_map_stats(keys, queries, threshold, chunk_bytes=chunk_bytes)
    assert_stats_close(stats, naive_free_mask(keys, queries, threshold), threshold)


def test_constant_map_is_empty(reference_backend):
    keys = F.normalize(torch.ones(4, 3, 5), dim=0)
    queries = F.normalize(torch.rand(6, 4), dim=1)
    stats = score_map_stats(keys, queries)
    assert torch.all(stats.area == 0) and torch.all(stats.maskness == 0)
    masks = soft_masks(keys, queries, torch.arange(6), stats.min, stats.max)
    assert torch.all(masks == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_reference_low_precision_inputs_accumulate_in_float32(reference_backend, rng, dtype):
    keys, queries = make(rng, 40, 48, 10, 12, dtype)
    stats = score_map_stats(keys, queries)
    assert_stats_close(stats, naive_free_mask(keys.float(), queries.float()))


def test_soft_masks_match_naive(reference_backend, rng):
    keys, queries = make(rng, 60, 24, 11, 13)
    stats = score_map_stats(keys, queries)
    want = naive_free_mask(keys, queries)[4]
    idx = torch.tensor([59, 0, 7, 7])
    got = soft_masks(keys, queries, idx, stats.min, stats.max)
    assert got.shape == (4, 11, 13) and got.dtype == torch.float32
    torch.testing.assert_close(got, want[idx], rtol=1e-5, atol=1e-6)
    assert soft_masks(keys, queries, torch.tensor([], dtype=torch.long), stats.min, stats.max).shape == (0, 11, 13)


def test_empty_queries(reference_backend):
    stats = score_map_stats(torch.rand(4, 3, 3), torch.rand(0, 4))
    assert all(t.shape == (0,) for t in stats)


@pytest.mark.parametrize(
    ("keys", "queries", "error", "match"),
    [
        (torch.rand(4, 3), torch.rand(2, 4), ValueError, r"\(E, H, W\)"),
        (torch.rand(4, 3, 3), torch.rand(2, 5), ValueError, "disagree on E"),
        (torch.rand(4, 3, 3).long(), torch.rand(2, 4), TypeError, "float16"),
        (torch.rand(4, 3, 3), [[0.0] * 4], TypeError, "torch.Tensor"),
        (torch.rand(4, 0, 3), torch.rand(2, 4), ValueError, "non-empty"),
    ],
)
def test_invalid_inputs_raise(keys, queries, error, match):
    with pytest.raises(error, match=match):
        score_map_stats(keys, queries)


def test_invalid_soft_mask_arguments_raise():
    keys, queries = torch.rand(4, 3, 3), torch.rand(5, 4)
    mins, maxs = torch.zeros(5), torch.ones(5)
    with pytest.raises(ValueError, match="indices must lie"):
        soft_masks(keys, queries, torch.tensor([5]), mins, maxs)
    with pytest.raises(TypeError, match="integer"):
        soft_masks(keys, queries, torch.tensor([0.0]), mins, maxs)
    with pytest.raises(ValueError, match="mins"):
        soft_masks(keys, queries, torch.tensor([0]), mins[:3], maxs)
    with pytest.raises(ValueError, match="chunk_bytes"):
        score_map_stats(keys, queries, chunk_bytes=0)


# ------------------------------------------------------------------------------------------- triton path


@pytest.mark.parametrize(
    ("n", "e", "h", "w", "dtype"),
    [
        (70, 40, 13, 17, torch.float32),  # N, E, H*W all non-multiples of the 64/32/64 tiles
        (3, 8, 1, 1, torch.float32),
        (65, 33, 1, 70, torch.float16),
        (64, 64, 8, 8, torch.bfloat16),
        (40, 24, 10, 15, torch.float32),  # 3 column tiles in 2 splits: the last tile of split 2 is empty
    ],
)
def test_triton_matches_naive(triton_device, rng, n, e, h, w, dtype):
    keys, queries = make(rng, n, e, h, w, dtype)
    stats = score_map_stats(keys.to(triton_device), queries.to(triton_device))
    assert stats.min.device.type == triton_device.type
    assert_stats_close(stats, naive_free_mask(keys.float(), queries.float()))
    idx = torch.tensor([n - 1, 0, n // 2])
    got = soft_masks(keys.to(triton_device), queries.to(triton_device), idx.to(triton_device), stats.min, stats.max)
    want = naive_free_mask(keys.float(), queries.float())[4][idx]
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=2e-6)
