"""The incremental multi-label CPU path (sparse_eps > 0) against the plain dense reference (sparse_eps = 0)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from wsis_kernels import CRFParams, mean_field_crf
from wsis_kernels.crf import incremental

BASE = CRFParams(kernel_size=5, dilation=1, w_appearance=2.0, theta_alpha=4.0, theta_beta=0.2, w_smooth=0.7,
                 theta_gamma=1.5, iterations=8)


def peaked_inputs(gen, batch, labels, height, width, box="none"):
    """Colour regions with a confident, noisy label each: the state settles, so little changes late on."""
    region = (torch.rand(batch, 1, max(1, height // 6), max(1, width // 6), generator=gen) * labels).floor()
    region = F.interpolate(region, size=(height, width), mode="nearest")[:, 0].long()
    colour = torch.rand(labels, 3, generator=gen)
    image = colour[region].permute(0, 3, 1, 2) + 0.03 * torch.randn(batch, 3, height, width, generator=gen)
    logits = 4.0 * F.one_hot(region, labels).permute(0, 3, 1, 2).float()
    probs = torch.softmax(logits + 1.5 * torch.randn(logits.shape, generator=gen), dim=1)
    boxes = None
    if box == "one":
        boxes = (torch.rand(batch, 1, height, width, generator=gen) > 0.2).float()
    elif box == "all":
        boxes = (torch.rand(batch, labels, height, width, generator=gen) > 0.2).float()
        boxes[:, 0] = 1.0
    return image, probs, boxes


CASES = [
    # (batch, labels, H, W, params, box): non-multiples of the tile, 1-pixel images, L = 2 (through the
    # general loop: clamp), 3 and 21, dilation, the centre tap, boxes, no unary, MAL's normaliser epsilon
    (1, 21, 37, 45, BASE, "none"),
    (2, 3, 20, 17, dataclasses.replace(BASE, include_centre=True, kernel_size=3, dilation=2), "one"),
    (1, 2, 1, 40, dataclasses.replace(BASE, clamp=(0.05, 0.95)), "none"),
    (1, 5, 33, 1, dataclasses.replace(BASE, kernel_size=11, theta_alpha=math.inf), "all"),
    (1, 4, 8, 8, dataclasses.replace(BASE, unary_weight=0.0, norm_eps=1e-6), "none"),
    (1, 21, 26, 19, dataclasses.replace(BASE, kernel_size=7, dilation=1, w_smooth=0.0), "one"),
]


def force_sparse(monkeypatch, locate_in_sweep: bool = True):
    """Value-by-value propagation and per-pixel updates from the first change on, so that small images
    exercise every sparse branch; the changes found in the whole-image sweep or in a second one."""
    monkeypatch.setattr(incremental, "SPARSE_VALUES", 1.0)
    monkeypatch.setattr(incremental, "GATHER_PIXELS", 1.0)
    monkeypatch.setattr(incremental, "SPECULATE", 1.0 if locate_in_sweep else -1.0)


@pytest.fixture(params=[True, False], ids=["located-in-sweep", "located-after"])
def sparse(request, monkeypatch):
    force_sparse(monkeypatch, request.param)


@pytest.mark.parametrize(("batch", "labels", "height", "width", "params", "box"), CASES)
def test_propagating_every_change_equals_the_dense_reference(reference_backend, sparse, rng, batch, labels,
                                                             height, width, params, box):
    # sparse_eps = 1e-30 propagates every change: only the bookkeeping (indices, margins, borders) is tested
    image, probs, boxes = peaked_inputs(rng, batch, labels, height, width, box)
    want = mean_field_crf(image, probs, boxes, dataclasses.replace(params, sparse_eps=0.0))
    got = mean_field_crf(image, probs, boxes, dataclasses.replace(params, sparse_eps=1e-30))
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("forced", [True, False], ids=["sparse", "as-dispatched"])
@pytest.mark.parametrize(("batch", "labels", "height", "width", "params", "box"), CASES)
def test_default_eps_stays_close_to_the_dense_reference(reference_backend, monkeypatch, rng, batch, labels,
                                                        height, width, params, box, forced):
    if forced:
        force_sparse(monkeypatch)
    image, probs, boxes = peaked_inputs(rng, batch, labels, height, width, box)
    want = mean_field_crf(image, probs, boxes, dataclasses.replace(params, sparse_eps=0.0))
    got = mean_field_crf(image, probs, boxes, params)  # default sparse_eps 1e-6
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("eps", [1e-3, 3e-2])
def test_one_step_error_within_the_documented_bound(reference_backend, sparse, rng, eps):
    # Two iterations: Q1 is exact, Q2 comes from logits within eps * sum_j k(i, j) of the exact ones, and a
    # logit error of at most delta moves a softmax probability by at most exp(2 delta) - 1.
    params = dataclasses.replace(BASE, iterations=2, sparse_eps=eps)
    image, probs, _ = peaked_inputs(rng, 1, 6, 30, 27)
    want = mean_field_crf(image, probs, None, dataclasses.replace(params, sparse_eps=0.0))
    got = mean_field_crf(image, probs, None, params)
    kernel_sum = sum(a + g for _, _, a, g in params.offset_weights())
    bound = math.expm1(2 * eps * kernel_sum)
    error = (got - want).abs().max().item()
    assert 0 < error <= bound  # > 0: some change really was left out


def test_default_path_is_incremental_and_exact_dense_stays_reachable():
    assert CRFParams().sparse_eps > 0 and incremental.IncrementalMeanField.applicable(CRFParams())
    assert not incremental.IncrementalMeanField.applicable(dataclasses.replace(CRFParams(), sparse_eps=0.0))
    assert not incremental.IncrementalMeanField.applicable(dataclasses.replace(CRFParams(), message="log_pool"))
    with pytest.raises(ValueError, match="sparse_eps"):
        CRFParams(sparse_eps=-1.0)


@pytest.mark.parametrize("box", ["none", "one"])
def test_two_labels_on_a_large_image_take_the_incremental_loop_and_match_the_exact_one(reference_backend, monkeypatch,
                                                                                    rng, box):
    # From TWO_LABEL_INCREMENTAL_PIXELS (and _ITERATIONS) on, two labels leave the foreground-only loop for the
    # incremental one; lowered here to keep the test small. sparse_eps = 0 keeps the exact foreground-only loop.
    from wsis_kernels.crf import cpu

    monkeypatch.setattr(cpu, "TWO_LABEL_INCREMENTAL_PIXELS", 40 * 40)
    calls = []
    monkeypatch.setattr(incremental.IncrementalMeanField, "run",
                        lambda self, *a, run=incremental.IncrementalMeanField.run: calls.append(1) or run(self, *a))
    image, probs, boxes = peaked_inputs(rng, 1, 2, 70, 45, box)
    want = mean_field_crf(image, probs, boxes, dataclasses.replace(BASE, sparse_eps=0.0))
    assert not calls
    got = mean_field_crf(image, probs, boxes, BASE)
    assert calls
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    small, small_probs, small_boxes = image[..., :30, :30], probs[..., :30, :30], None
    mean_field_crf(small, small_probs, small_boxes, BASE)
    assert len(calls) == 1  # below the threshold: the foreground-only loop
    mean_field_crf(image, probs, boxes, dataclasses.replace(BASE, iterations=5))
    assert len(calls) == 1  # few iterations: the foreground-only loop too
