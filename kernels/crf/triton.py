"""Triton mean-field CRF: one fused kernel launch per iteration.

Each program owns a block of pixels of one image and all of its labels. For every window tap it loads the
neighbours' colours, recomputes the pairwise weight (the same ``a * exp2(max(-s * e2, -126)) + g`` expression as
the CPU path), loads the neighbours' label values and multiply-adds them into a ``(labels, pixels)``
register tile; then it adds the unary/box bias, normalises over labels (max-subtracted) and clamps. Nothing
of size ``k*k*H*W`` ever exists; global traffic per iteration is about ``k*k*(C + L)`` cached loads and one
``L*H*W`` store, and the arithmetic is ``O(k*k*(C + L))`` per pixel.

Also runs on CPU tensors under ``TRITON_INTERPRET=1`` (slowly), which is how the parity tests run.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .params import CRFParams
from .window import expand_box, exponent_scale, initial_state, unary_logits

_MAX_EXP2 = tl.constexpr(126.0)
_TINY = tl.constexpr(1.1754943508222875e-38)  # smallest normal float32


@triton.jit
def _crf_step_kernel(
    img_ptr,  # (B, C, H, W) float32 image
    q_ptr,  # (B, LQ, H, W) float32 current state (LQ = 1 in binary mode, L otherwise)
    out_ptr,  # (B, LQ, H, W) float32 next state
    bias_ptr,  # (B, L, H, W) float32 unary logits + log(box); read only if HAS_BIAS
    taps_ptr,  # (K*K, 2) float32: (a, g) per tap, row-major over the window
    neg_scale,  # -log2(e) / (2 theta_beta^2)
    H,
    W,
    log_eps,
    clamp_lo,
    clamp_hi,
    floor,
    C: tl.constexpr,
    BLOCK_C: tl.constexpr,
    L: tl.constexpr,  # logit rows: 2 in binary mode ([bg, fg]), the number of labels otherwise
    BLOCK_L: tl.constexpr,
    K: tl.constexpr,
    DIL: tl.constexpr,
    BINARY: tl.constexpr,
    LOG_POOL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_EPS: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    hw = H * W
    pix = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    valid = pix < hw
    y = pix // W
    x = pix % W

    chans = tl.arange(0, BLOCK_C)
    cmask = chans < C
    img_b = img_ptr + b * C * hw
    centre = tl.load(img_b + chans[:, None] * hw + pix[None, :], mask=cmask[:, None] & valid[None, :], other=0.0)

    rows = tl.arange(0, BLOCK_L)
    rmask = rows < L
    if BINARY:
        q_b = q_ptr + b * hw
    else:
        q_b = q_ptr + b * L * hw

    acc = tl.zeros([BLOCK_L, BLOCK_P], dtype=tl.float32)
    for t in range(K * K):
        dy = (t // K - K // 2) * DIL
        dx = (t % K - K // 2) * DIL
        a = tl.load(taps_ptr + 2 * t)
        g = tl.load(taps_ptr + 2 * t + 1)
        ny = y + dy
        nx = x + dx
        inb = valid & (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
        npix = ny * W + nx
        nb = tl.load(img_b + chans[:, None] * hw + npix[None, :], mask=cmask[:, None] & inb[None, :], other=0.0)
        diff = nb - centre
        e2 = tl.sum(diff * diff, axis=0) * neg_scale
        wgt = a * tl.exp2(tl.maximum(e2, -_MAX_EXP2)) + g
        wgt = tl.where(inb, wgt, 0.0)
        if BINARY:
            p = tl.load(q_b + npix, mask=inb, other=0.5)
            vals = tl.where(rows[:, None] == 1, p[None, :], 1.0 - p[None, :])
        else:
            vals = tl.load(q_b + rows[:, None] * hw + npix[None, :], mask=rmask[:, None] & inb[None, :], other=0.5)
        if LOG_POOL:
            vals = tl.log(tl.maximum(vals, floor))
        acc += wgt[None, :] * vals

    z = acc
    if HAS_BIAS:
        bias = tl.load(
            bias_ptr + b * L * hw + rows[:, None] * hw + pix[None, :],
            mask=rmask[:, None] & valid[None, :],
            other=0.0,
        )
        z = z + bias
    z = tl.where(rmask[:, None], z, float("-inf"))
    m = tl.max(z, axis=0)
    if HAS_EPS:
        m = tl.maximum(m, log_eps)
    m = tl.where(m == float("-inf"), 0.0, m)
    e = tl.exp(z - m[None, :])
    den = tl.sum(e, axis=0)
    if HAS_EPS:
        den += tl.exp(log_eps - m)
    q = e / tl.maximum(den, _TINY)[None, :]
    if HAS_CLAMP:
        q = tl.minimum(tl.maximum(q, clamp_lo), clamp_hi)
    if BINARY:
        fg = tl.sum(tl.where(rows[:, None] == 1, q, 0.0), axis=0)
        tl.store(out_ptr + b * hw + pix, fg, mask=valid)
    else:
        tl.store(out_ptr + b * L * hw + rows[:, None] * hw + pix[None, :], q, mask=rmask[:, None] & valid[None, :])


def _bias(probs: Tensor, box: Tensor | None, params: CRFParams) -> Tensor | None:
    """Unary logits plus ``log(box)`` per logit row, ``(B, rows, H, W)``, or ``None`` when both are absent."""
    unary = unary_logits(probs, params)
    labels = probs.shape[1]
    if box is None:
        return unary
    box32 = box.to(torch.float32)
    log_box = (
        torch.cat([torch.ones_like(box32), box32], dim=1) if labels == 1 else expand_box(box32, labels)
    ).log()
    return log_box if unary is None else unary.add_(log_box)


def _block_sizes(rows: int) -> tuple[int, int]:
    block_l = triton.next_power_of_2(max(rows, 2))
    block_p = max(32, min(256, 4096 // block_l))
    return block_l, block_p


def mean_field_crf_triton(image: Tensor, probs: Tensor, box: Tensor | None, params: CRFParams) -> Tensor:
    """Triton mean-field CRF; same contract as the CPU path (inputs validated by the caller)."""
    batch, channels, height, width = image.shape
    labels = probs.shape[1]
    img = image.to(torch.float32).contiguous()
    q = initial_state(probs, box, params).contiguous()
    if params.iterations == 0:
        return q
    bias = _bias(probs, box, params)
    rows = 2 if labels == 1 else labels
    taps = torch.tensor(
        [(a, g) for _, _, a, g in params.offset_weights()], dtype=torch.float32, device=image.device
    )
    block_l, block_p = _block_sizes(rows)
    grid = (triton.cdiv(height * width, block_p), batch)
    clamp_lo, clamp_hi = params.clamp if params.clamp is not None else (0.0, 1.0)
    log_eps = math.log(params.norm_eps) if params.norm_eps > 0 else 0.0
    out = torch.empty_like(q)
    for _ in range(params.iterations):
        _crf_step_kernel[grid](
            img,
            q,
            out,
            bias if bias is not None else q,
            taps,
            -exponent_scale(params),
            height,
            width,
            log_eps,
            clamp_lo,
            clamp_hi,
            params.unary_floor,
            C=channels,
            BLOCK_C=triton.next_power_of_2(channels),
            L=rows,
            BLOCK_L=block_l,
            K=params.kernel_size,
            DIL=params.dilation,
            BINARY=labels == 1,
            LOG_POOL=params.message == "log_pool",
            HAS_BIAS=bias is not None,
            HAS_EPS=params.norm_eps > 0,
            HAS_CLAMP=params.clamp is not None,
            BLOCK_P=block_p,
            num_warps=4,
            enable_fp_fusion=True,  # explicit: Triton 3.9 warns when left to its changing default
        )
        q, out = out, q
    return q
