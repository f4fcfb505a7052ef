"""The optimised CPU path and the Triton path against the plain oracle, ``wsis_kernels.crf.reference``."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from crf_inputs import make_inputs

from wsis_kernels import CRFParams, mal_crf_params, mean_field_crf
from wsis_kernels.crf.reference import mean_field_crf_oracle

SMALL = CRFParams(kernel_size=5, dilation=1, w_appearance=2.0, theta_alpha=4.0, theta_beta=0.2, w_smooth=0.7,
                  theta_gamma=1.5, iterations=3, sparse_eps=0.0)
POOLED = dataclasses.replace(SMALL, message="log_pool", include_centre=True, unary_weight=0.5, norm_eps=1e-6,
                             clamp=(0.05, 0.95))

CASES = [
    # (batch, labels, H, W, params, box)
    (2, 1, 11, 9, SMALL, "one"),
    (1, 1, 10, 12, mal_crf_params(iterations=5), "one"),
    (1, 2, 12, 7, dataclasses.replace(SMALL, include_centre=True), "none"),
    (1, 2, 9, 10, POOLED, "one"),
    (1, 3, 8, 1, dataclasses.replace(SMALL, kernel_size=7), "none"),
    (1, 4, 9, 9, dataclasses.replace(SMALL, kernel_size=3, dilation=2, theta_alpha=math.inf), "one"),
    (1, 5, 7, 8, dataclasses.replace(POOLED, kernel_size=3), "all"),
    (1, 6, 8, 8, dataclasses.replace(SMALL, unary_weight=0.0, w_smooth=0.0), "all"),
]


@pytest.mark.parametrize(("batch", "labels", "height", "width", "params", "box"), CASES)
def test_cpu_path_matches_the_oracle(reference_backend, rng, batch, labels, height, width, params, box):
    image, probs, boxes = make_inputs(rng, batch, labels, height, width, box)
    got = mean_field_crf(image, probs, boxes, params)
    want = mean_field_crf_oracle(image, probs, boxes, params)
    assert got.shape == want.shape == probs.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


def test_cpu_path_with_the_default_sparse_eps_stays_close_to_the_oracle(reference_backend, rng):
    # many labels at the default sparse_eps take the incremental loop: within its bound, not exact
    params = CRFParams(iterations=4)
    image, probs, boxes = make_inputs(rng, 1, 6, 12, 11, "one")
    got = mean_field_crf(image, probs, boxes, params)
    torch.testing.assert_close(got, mean_field_crf_oracle(image, probs, boxes, params), rtol=0, atol=1e-4)


@pytest.mark.parametrize(("batch", "labels", "height", "width", "params", "box"), CASES)
def test_triton_matches_the_oracle(triton_device, rng, batch, labels, height, width, params, box):
    image, probs, boxes = make_inputs(rng, batch, labels, height, width, box)
    got = mean_field_crf(image.to(triton_device), probs.to(triton_device),
                         None if boxes is None else boxes.to(triton_device), params)
    want = mean_field_crf_oracle(image, probs, boxes, params)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=2e-6)
