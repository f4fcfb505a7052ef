"""Mean-field CRF: the CPU path against plain unfold-based oracles, and the Triton path against the CPU path."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from crf_inputs import make_inputs

from wsis_kernels import CRFParams, crf_labels, mal_crf_params, mean_field_crf

# ------------------------------------------------------------------------------------------------ oracles


def mal_mean_field_unfold(feature, prob, box, k=3, zeta=0.1, iterations=100, low=0.1, high=0.9):
    """MAL's MeanField as its code is structured: float32 features + 10, unfold, centre included."""
    b, c, h, w = feature.shape
    feature = feature.float() + 10
    cols = F.unfold(feature, k, padding=k // 2).reshape(b, c, k * k, h * w)
    kernel = torch.exp(-(((cols - feature.reshape(b, c, 1, h * w)) ** 2) / (2 * zeta**2)).sum(1))
    box = box.reshape(b, h, w)
    seg = torch.clamp(prob * box, low, high)
    for _ in range(iterations):
        x = torch.stack([1 - seg, seg], 1)
        neg_log = F.unfold(-torch.log(x), k, padding=k // 2).reshape(b, 2, k * k, h * w)
        q = torch.exp(-(neg_log * kernel[:, None]).sum(2))
        q[:, 1:] = q[:, 1:] * box.reshape(b, 1, h * w)
        q = q / (1e-6 + q.sum(1, keepdim=True))
        seg = torch.clamp(q, low, high)[:, 1].reshape(b, h, w)
    return seg


def local_crf_unfold(image, probs, box, p: CRFParams):
    """The documented model in float64 with the kernel stored as (B, k*k, H*W): a slow, plain oracle."""
    image, probs = image.double(), probs.double()
    b, c, h, w = image.shape
    labels = probs.shape[1]
    k, d = p.kernel_size, p.dilation
    pad = d * (k // 2)
    cols = F.unfold(image, k, dilation=d, padding=pad).view(b, c, k * k, h * w)
    colour = ((cols - image.view(b, c, 1, h * w)) ** 2).sum(1)
    inside = F.unfold(torch.ones(1, 1, h, w, dtype=torch.float64), k, dilation=d, padding=pad).view(1, k * k, h * w)
    r2 = torch.tensor([float((ty * d) ** 2 + (tx * d) ** 2) for ty in range(-(k // 2), k // 2 + 1)
                       for tx in range(-(k // 2), k // 2 + 1)], dtype=torch.float64).view(1, -1, 1)
    spatial = torch.zeros_like(r2) if math.isinf(p.theta_alpha) else r2 / (2 * p.theta_alpha**2)
    colour_term = torch.zeros_like(colour) if math.isinf(p.theta_beta) else colour / (2 * p.theta_beta**2)
    kernel = p.w_appearance * torch.exp(-spatial - colour_term) + p.w_smooth * torch.exp(-r2 / (2 * p.theta_gamma**2))
    kernel = kernel * inside
    if not p.include_centre:
        kernel[:, (k * k) // 2] = 0

    if labels == 1:
        rows = torch.cat([1 - probs, probs], 1)
        boxes = torch.ones_like(rows) if box is None else torch.cat([torch.ones_like(box), box], 1).double()
        q = probs * (1 if box is None else box.double())
    else:
        rows = probs
        if box is None:
            boxes = torch.ones_like(rows)
        elif box.shape[1] == 1:
            boxes = torch.cat([torch.ones_like(box), box.expand(-1, labels - 1, -1, -1)], 1).double()
        else:
            boxes = box.double()
        q = boxes * rows.clamp_min(p.unary_floor)
        total = q.sum(1, keepdim=True)
        q = torch.where(total > 0, q / total, torch.zeros_like(q))
    if p.clamp is not None:
        q = q.clamp(*p.clamp)
    unary = p.unary_weight * rows.clamp_min(p.unary_floor).log()

    for _ in range(p.iterations):
        state = torch.cat([1 - q, q], 1) if labels == 1 else q
        if p.message == "log_pool":
            state = state.clamp_min(p.unary_floor).log()
        n = state.shape[1]
        nb = F.unfold(state, k, dilation=d, padding=pad).view(b, n, k * k, h * w)
        z = unary + (nb * kernel[:, None]).sum(2).view(b, n, h, w)
        e = boxes * torch.exp(z - z.max(1, keepdim=True).values)
        den = e.sum(1, keepdim=True) + p.norm_eps * torch.exp(-z.max(1, keepdim=True).values)
        q = torch.where(den > 0, e / den, torch.zeros_like(e))
        if p.clamp is not None:
            q = q.clamp(*p.clamp)
        if labels == 1:
            q = q[:, 1:2]
    return q.float()


DENSE = CRFParams(kernel_size=5, dilation=1, w_appearance=2.0, theta_alpha=4.0, theta_beta=0.2, w_smooth=0.7,
                  theta_gamma=1.5, iterations=3)
LOGPOOL = dataclasses.replace(DENSE, message="log_pool", include_centre=True, unary_weight=0.5, norm_eps=1e-6,
                              clamp=(0.05, 0.95))

# ------------------------------------------------------------------------------------------------ CPU path

REFERENCE_CASES = [
    # (batch, labels, H, W, params, box)
    (2, 1, 13, 11, DENSE, "one"),
    (1, 1, 1, 17, dataclasses.replace(DENSE, kernel_size=3, dilation=2), "none"),
    (1, 2, 16, 9, DENSE, "none"),
    (2, 2, 10, 12, dataclasses.replace(DENSE, include_centre=True), "one"),
    (1, 2, 9, 14, LOGPOOL, "one"),
    (1, 3, 11, 1, dataclasses.replace(DENSE, kernel_size=11), "none"),
    (1, 3, 12, 12, LOGPOOL, "all"),
    (1, 5, 9, 10, dataclasses.replace(DENSE, kernel_size=11, dilation=2, theta_alpha=math.inf), "one"),
    (1, 21, 8, 13, dataclasses.replace(DENSE, kernel_size=3, w_smooth=0.0), "none"),
    (1, 4, 7, 7, dataclasses.replace(DENSE, kernel_size=1), "none"),
    (1, 2, 15, 15, dataclasses.replace(DENSE, unary_weight=0.0, iterations=5), "all"),
    (1, 1, 12, 10, dataclasses.replace(LOGPOOL, kernel_size=3, unary_weight=0.0), "one"),
]


@pytest.mark.parametrize(("batch", "labels", "height", "width", "params", "box"), REFERENCE_CASES)
def test_reference_matches_unfold_oracle(reference_backend, rng, batch, labels, height, width, params, box):
    image, probs, boxes = make_inputs(rng, batch, labels, height, width, box)
    got = mean_field_crf(image, probs, boxes, params)
    want = local_crf_unfold(image, probs, boxes, params)
    assert got.shape == probs.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("params", [dataclasses.replace(DENSE, dilation=2, include_centre=True),
                                    dataclasses.replace(LOGPOOL, kernel_size=11, dilation=2)])
def test_row_bands_match_the_oracle(reference_backend, monkeypatch, rng, params):
    # Many labels are processed in row bands; force bands of 32 rows (the minimum) on a 75-row image.
    from wsis_kernels.crf import window

    image, probs, boxes = make_inputs(rng, 1, 5, 75, 6, "one")
    whole = mean_field_crf(image, probs, boxes, params)
    monkeypatch.setattr(window, "BAND_BYTES", 1)
    banded = mean_field_crf(image, probs, boxes, params)
    torch.testing.assert_close(banded, whole, rtol=1e-6, atol=1e-6)
    # 120-tap log-pooled messages are large, so float32 rounding shows a little more against float64
    torch.testing.assert_close(banded, local_crf_unfold(image, probs, boxes, params), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("iterations", [1, 10, 100])
def test_mal_preset_reproduces_mal_mean_field(reference_backend, rng, iterations):
    # ImageNet-normalised-like features, a 128x128-ish crop with a box, MAL's exact update.
    b, h, w = 2, 37, 29
    feature = torch.randn(b, 3, h, w, generator=rng) * 0.3
    prob = torch.rand(b, h, w, generator=rng)
    box = torch.zeros(b, h, w)
    box[:, 5:30, 4:20] = 1
    want = mal_mean_field_unfold(feature, prob, box, iterations=iterations)
    # MAL adds 10 to the features in float32 only so zero padding gets ~0 weight; out-of-image neighbours
    # contribute nothing here anyway, and passing the same +10 reproduces its float32 rounding too.
    got = mean_field_crf(feature + 10, prob[:, None], box[:, None], mal_crf_params(iterations=iterations))
    # float32 rounding (summation order) is amplified near the unstable p = 0.5 states, slowly
    torch.testing.assert_close(got[:, 0], want, rtol=0, atol=1e-5 + 2e-6 * iterations)
    # Without the +10 only rounding differs: the masks agree away from the 0.5 boundary.
    plain = mean_field_crf(feature, prob[:, None], box[:, None], mal_crf_params(iterations=iterations))
    clear = (want - 0.5).abs() > 1e-2
    assert torch.equal(crf_labels(plain)[clear], (want > 0.5).long()[clear])
    assert (plain[:, 0] - want).abs().max() < 2e-3


def test_mal_preset_values():
    p = mal_crf_params()
    assert (p.kernel_size, p.dilation, p.iterations, p.theta_beta, p.clamp) == (3, 1, 100, 0.1, (0.1, 0.9))
    assert p.message == "log_pool" and p.include_centre and p.unary_weight == 0 and p.norm_eps == 1e-6
    taps = p.offset_weights()
    assert len(taps) == 9 and all(a == 1.0 and g == 0.0 for _, _, a, g in taps)


def test_outside_box_stays_background_and_labels_sum_to_one(reference_backend, rng):
    image, probs, _ = make_inputs(rng, 1, 4, 20, 24)
    box = torch.zeros(1, 1, 20, 24)
    box[..., 4:15, 6:20] = 1
    q = mean_field_crf(image, probs, box, CRFParams(iterations=4))
    torch.testing.assert_close(q.sum(1), torch.ones(1, 20, 24))
    assert torch.all(q[:, 1:][box.expand(-1, 3, -1, -1) == 0] == 0)
    fg = mean_field_crf(image, probs[:, 1:2], box, CRFParams(iterations=4))
    assert torch.all(fg[box == 0] == 0)


def test_two_label_shortcut_equals_general_update(reference_backend, rng):
    image, probs, boxes = make_inputs(rng, 2, 2, 19, 23, "one")
    params = CRFParams(kernel_size=5, dilation=2, iterations=6)
    fast = mean_field_crf(image, probs, boxes, params)  # iterates on the foreground only
    one_label = mean_field_crf(image, probs[:, 1:2] / probs.sum(1, keepdim=True), boxes, params)
    general = local_crf_unfold(image, probs, boxes, params)
    torch.testing.assert_close(fast, general, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(fast[:, 1:2], one_label, rtol=1e-5, atol=2e-6)


def test_zero_iterations_returns_initial_state_and_is_deterministic(reference_backend, rng):
    image, probs, boxes = make_inputs(rng, 1, 3, 9, 9, "one")
    q0 = mean_field_crf(image, probs, boxes, CRFParams(iterations=0))
    torch.testing.assert_close(q0, local_crf_unfold(image, probs, boxes, CRFParams(iterations=0)))
    a = mean_field_crf(image, probs, boxes, CRFParams(iterations=3))
    b = mean_field_crf(image, probs, boxes, CRFParams(iterations=3))
    assert torch.equal(a, b)


def test_half_precision_inputs_give_float32(reference_backend, rng):
    image, probs, _ = make_inputs(rng, 1, 2, 12, 12)
    want = mean_field_crf(image.half().float(), probs.half().float(), None, DENSE)
    got = mean_field_crf(image.half(), probs.half(), None, DENSE)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    bool_box = torch.ones(1, 1, 12, 12, dtype=torch.bool)
    torch.testing.assert_close(mean_field_crf(image, probs, bool_box, DENSE), mean_field_crf(image, probs, None, DENSE))


def test_crf_denoises_a_noisy_square(reference_backend):
    gen = torch.Generator().manual_seed(0)
    gt = torch.zeros(48, 48, dtype=torch.long)
    gt[12:36, 10:38] = 1
    image = torch.stack([gt.float() * 0.6 + 0.2] * 3)[None] + 0.03 * torch.randn(1, 3, 48, 48, generator=gen)
    noisy = (gt.float() * 0.4 + 0.3 + 0.35 * torch.randn(48, 48, generator=gen)).clamp(0.01, 0.99)
    refined = crf_labels(mean_field_crf(image, noisy[None, None]))
    before = ((noisy > 0.5).long() == gt).float().mean()
    after = (refined[0] == gt).float().mean()
    assert before < 0.9 and after > 0.99


def test_crf_labels():
    p = torch.tensor([[[[0.2, 0.5, 0.7]]]])
    assert crf_labels(p).tolist() == [[[0, 0, 1]]]
    q = torch.tensor([[[[0.1, 0.6]], [[0.7, 0.3]], [[0.2, 0.1]]]])
    assert crf_labels(q).tolist() == [[[1, 0]]]


# --------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("image", "probs", "box", "error", "match"),
    [
        (torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 5), None, ValueError, "probs must be"),
        (torch.rand(3, 4, 4), torch.rand(1, 2, 4, 4), None, ValueError, "image must be 4-D"),
        (torch.rand(1, 3, 4, 4), torch.rand(2, 2, 4, 4), None, ValueError, "probs must be"),
        (torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4), ValueError, "box must be"),
        (torch.rand(1, 3, 4, 4).int(), torch.rand(1, 2, 4, 4), None, TypeError, "floating"),
        (torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4).long(), None, TypeError, "floating"),
        (torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), torch.ones(1, 1, 4, 4).long(), TypeError, "bool"),
        (torch.rand(1, 3, 4, 4).numpy(), torch.rand(1, 2, 4, 4), None, TypeError, "torch.Tensor"),
        (torch.rand(1, 3, 0, 4), torch.rand(1, 2, 0, 4), None, ValueError, ">= 1"),
    ],
)
def test_invalid_inputs_raise(image, probs, box, error, match):
    with pytest.raises(error, match=match):
        mean_field_crf(image, probs, box)


def test_invalid_params_raise():
    with pytest.raises(TypeError, match="CRFParams"):
        mean_field_crf(torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 4), None, {"kernel_size": 3})
    bad = [dict(kernel_size=4), dict(kernel_size=0), dict(dilation=0), dict(iterations=-1), dict(theta_beta=0.0),
           dict(w_smooth=-1.0), dict(unary_floor=0.0), dict(message="sum"), dict(clamp=(0.9, 0.1)),
           dict(w_appearance=math.inf)]
    for kwargs in bad:
        with pytest.raises(ValueError):
            CRFParams(**kwargs)


# ------------------------------------------------------------------------------------------- triton path

TRITON_CASES = [
    # (batch, labels, H, W, params, box) -- awkward sizes: 1-pixel borders, non-multiples of the block size
    (2, 1, 13, 17, dataclasses.replace(mal_crf_params(iterations=4)), "one"),
    (1, 1, 17, 19, dataclasses.replace(DENSE, include_centre=True), "none"),  # 323 px: two blocks of 256
    (1, 2, 1, 23, dataclasses.replace(DENSE, dilation=2), "none"),
    (1, 2, 12, 10, dataclasses.replace(DENSE, kernel_size=11, iterations=2), "one"),
    (1, 2, 9, 11, LOGPOOL, "one"),
    (1, 21, 9, 1, dataclasses.replace(DENSE, kernel_size=3), "none"),
    (1, 21, 7, 9, dataclasses.replace(DENSE, kernel_size=11, dilation=2, iterations=2), "one"),
    (2, 3, 6, 7, dataclasses.replace(LOGPOOL, kernel_size=3, dilation=2), "all"),
    (1, 5, 11, 8, dataclasses.replace(DENSE, kernel_size=3, theta_alpha=math.inf, unary_weight=0.0), "all"),
]


@pytest.mark.parametrize(("batch", "labels", "height", "width", "params", "box"), TRITON_CASES)
def test_triton_matches_reference(triton_device, monkeypatch, rng, batch, labels, height, width, params, box):
    image, probs, boxes = make_inputs(rng, batch, labels, height, width, box)
    got = mean_field_crf(image.to(triton_device), probs.to(triton_device),
                         None if boxes is None else boxes.to(triton_device), params)
    monkeypatch.setenv("WSIS_KERNELS", "reference")
    want = mean_field_crf(image, probs, boxes, params)
    assert got.shape == want.shape and got.dtype == torch.float32 and got.device.type == triton_device.type
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=2e-6)


def test_triton_four_channel_image_and_zero_iterations(triton_device, monkeypatch, rng):
    image, probs, boxes = make_inputs(rng, 1, 2, 5, 6, "one", channels=4)
    image, probs, boxes = image.to(triton_device), probs.to(triton_device), boxes.to(triton_device)
    got = mean_field_crf(image, probs, boxes, dataclasses.replace(DENSE, kernel_size=3))
    got0 = mean_field_crf(image, probs, boxes, dataclasses.replace(DENSE, iterations=0))
    monkeypatch.setenv("WSIS_KERNELS", "reference")
    torch.testing.assert_close(got, mean_field_crf(image, probs, boxes, dataclasses.replace(DENSE, kernel_size=3)),
                               rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(got0, mean_field_crf(image, probs, boxes, dataclasses.replace(DENSE, iterations=0)))


def test_named_parameter_sets():
    from wsis_cli.stages.refine.settings import RefineSettings
    from wsis_kernels.crf import DENSE_CRF, REFINE_CRF

    assert CRFParams() == DENSE_CRF
    assert RefineSettings().crf_params() == REFINE_CRF
    assert (REFINE_CRF.w_appearance, REFINE_CRF.theta_alpha, REFINE_CRF.theta_beta) == (1.0, 6.0, 0.06)
