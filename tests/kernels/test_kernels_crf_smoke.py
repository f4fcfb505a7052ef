"""Triton CRF against the reference on awkward sizes (runs under TRITON_INTERPRET=1 on CPU).

A compact parity check; the kernel suite adds the exhaustive grid and the independent MAL implementation.
"""

from __future__ import annotations

import os

import pytest
import torch

from wsis_kernels.crf import CRFParams, mal_crf_params, mean_field_crf

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton needs a GPU or TRITON_INTERPRET=1",
)


def _run(backend, monkeypatch, *args):
    monkeypatch.setenv("WSIS_KERNELS", backend)
    return mean_field_crf(*args)


@pytest.mark.parametrize(("labels", "k", "d", "h", "w"), [(1, 3, 1, 1, 9), (2, 5, 2, 13, 17), (21, 3, 1, 7, 5)])
def test_triton_matches_reference(monkeypatch, labels, k, d, h, w):
    g = torch.Generator().manual_seed(labels * 100 + k)
    image = torch.rand(2, 3, h, w, generator=g)
    probs = torch.rand(2, labels, h, w, generator=g)
    if labels > 1:
        probs = probs / probs.sum(1, keepdim=True)
    params = CRFParams(kernel_size=k, dilation=d, iterations=3)
    ref = _run("reference", monkeypatch, image, probs, None, params)
    tri = _run("triton", monkeypatch, image, probs, None, params)
    torch.testing.assert_close(tri, ref, rtol=1e-5, atol=1e-5)


def test_mal_variant_with_box_matches_reference(monkeypatch):
    g = torch.Generator().manual_seed(7)
    image = torch.randn(1, 3, 11, 14, generator=g)
    probs = torch.rand(1, 1, 11, 14, generator=g)
    box = torch.zeros(1, 1, 11, 14)
    box[..., 2:9, 3:12] = 1
    params = mal_crf_params(iterations=5)
    ref = _run("reference", monkeypatch, image, probs, box, params)
    tri = _run("triton", monkeypatch, image, probs, box, params)
    torch.testing.assert_close(tri, ref, rtol=1e-5, atol=1e-5)
