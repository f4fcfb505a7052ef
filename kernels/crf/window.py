"""Pieces shared by the CPU loops (:mod:`~wsis_kernels.crf.cpu`, :mod:`~wsis_kernels.crf.incremental`) and
the Triton path's set-up: the banded window message pass, label normalisation, the initial state and unary.

The pairwise kernel is never stored as a ``(k*k, H, W)`` tensor. A pass walks the window taps, recomputes
that tap's weight map from two shifted views of the image and multiply-adds the shifted label map into one
``(B, L, H, W)`` message buffer, so memory stays O(L*H*W). The kernel is symmetric, ``k(i, i + d) =
k(i + d, i)``, so one weight map serves taps ``d`` and ``-d``.

Weights are ``exp2`` of the colour distance times ``-log2(e) / (2 theta_beta^2)``, clamped at -126:
PyTorch's ``exp`` is several times slower on CPU, and far slower still where its result would be denormal.
The Triton path evaluates the same expression.

On CPU with many labels the row bands of a pass are independent (each writes only its own rows), so they run on
the threads of :mod:`wsis_kernels.crf.parallel`, each band single-threaded; band edges never depend on the
thread count, so neither does the result.
"""

from __future__ import annotations

import ctypes
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import parallel
from .params import CRFParams

LOG2E = 1.4426950408889634
MAX_EXP2 = 126.0  # 2**-126 is the smallest normal float32; nothing below it changes a message
# Label probabilities stop at 2**-100 / L: so far above the denormals that differences of two of them
# (the incremental loop's changes) are practically never denormal, which would slow a pass by a third.
LABEL_EXP2 = 100.0


@dataclass
class _Taps:
    """Window taps split for the symmetric accumulation (offsets in pixels)."""

    half: list[tuple[int, int, float, float]]  # (dy, dx, a, g) with (dy, dx) > (0, 0) lexicographically
    centre: float  # weight of the pixel itself (0 unless include_centre)


def _taps(params: CRFParams, height: int, width: int) -> _Taps:
    half, centre = [], 0.0
    for dy, dx, a, g in params.offset_weights():
        if dy == 0 and dx == 0:
            centre = a + g
        elif (dy > 0 or (dy == 0 and dx > 0)) and abs(dy) < height and abs(dx) < width and (a or g):
            half.append((dy, dx, a, g))
    return _Taps(half, centre)


def exponent_scale(params: CRFParams) -> float:
    """``log2(e) / (2 theta_beta^2)``: turns ``sum_c (I_i - I_j)^2`` into the base-2 exponent."""
    return params.colour_scale**2 * LOG2E


HUGE_PAGE = 2 * 1024 * 1024


def _load_madvise() -> Callable[[int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):  # not Linux/glibc: plain allocations
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_MADVISE = _load_madvise() if sys.platform.startswith("linux") else None
_MADV_HUGEPAGE = 14


def large_empty(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised float32 tensor on ``like``'s device, backed by huge pages where Linux allows it.

    The state-sized buffers of a 21-label 512x512 run are 22 MB each, and a fresh one costs ~10 ms of
    page faults on first touch (4 KiB pages), a third of a message pass; asking for 2 MiB pages
    (``madvise(MADV_HUGEPAGE)``, as PyTorch's ``THP_MEM_ALLOC_ENABLE`` does for every allocation) cuts
    that to ~2 ms. Only a hint: where transparent huge pages are off, nothing changes.
    """
    out = torch.empty(shape, dtype=torch.float32, device=like.device)
    if _MADVISE is not None and out.device.type == "cpu" and out.numel() * 4 >= 2 * HUGE_PAGE:
        start, end = out.data_ptr(), out.data_ptr() + out.numel() * 4
        first, last = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
        if last > first:
            _MADVISE(first, last - first, _MADV_HUGEPAGE)
    return out


BAND_BYTES = 4 * 1024 * 1024  # message rows per band for many labels: msg + src bands stay cache-resident
# From this many labels on, the CPU passes run in row bands on the threads of `parallel`. With fewer, torch's own
# per-op threads stay: a pass is then a few ms and two half-image bands balanced badly (2 labels, 512x512, load
# 2.5: 51 ms against 37 ms with torch's threads).
MANY_LABELS = 4


class MessagePass:
    """Accumulates ``msg(i) += sum_j k(i, j) * src(j)`` over the window with reusable scratch buffers.

    With many labels the ``(B, L, H, W)`` message and source do not fit in cache, and streaming them from
    DRAM once per tap dominates; processing row bands (all taps per band) keeps both in cache and halves
    the time at 21 labels. A band recomputes the weight rows it shares with its neighbours (``dy`` rows).
    """

    def __init__(self, img: Tensor, params: CRFParams) -> None:
        batch, channels, height, width = img.shape
        self.img, self.shape = img, (batch, channels, height, width)
        self.scale = exponent_scale(params)
        self.taps = _taps(params, height, width)
        self._scratch: list[tuple[Tensor, Tensor]] = []  # (colour differences, weights), one pair per worker

    def _buffers(self, worker: int, rows: int) -> tuple[Tensor, Tensor]:
        """Scratch for ``rows`` rows of worker ``worker`` (reused across bands and passes)."""
        batch, channels, _, width = self.shape
        while len(self._scratch) <= worker:
            self._scratch.append((self.img.new_empty(0), self.img.new_empty(0)))
        diff, wt = self._scratch[worker]
        if wt.numel() < batch * rows * width:
            diff = large_empty((batch * channels * rows * width,), self.img)
            wt = large_empty((batch * rows * width,), self.img)
            self._scratch[worker] = (diff, wt)
        return diff, wt

    def _weights(self, r0: int, r1: int, dy: int, dx: int, a: float, g: float, worker: int = 0) -> Tensor | float:
        """Kernel between pixels ``(y, x)`` and ``(y + dy, x + dx)`` for rows ``y`` in ``[r0, r1)``.

        Returns ``(B, 1, r1 - r0, W - |dx|)`` over the columns where both exist (in a reused scratch buffer),
        or the constant ``g``. Computed on every call, never kept: the kernel stays O(H * W) in memory.
        """
        if a == 0.0:
            return g
        batch, channels, _, width = self.shape
        h, w = r1 - r0, width - abs(dx)
        x0, x1 = max(0, -dx), max(0, dx)
        diff_buf, w_buf = self._buffers(worker, h)
        diff = diff_buf[: batch * channels * h * w].view(batch, channels, h, w)
        torch.sub(self.img[:, :, r0:r1, x0 : x0 + w], self.img[:, :, r0 + dy : r1 + dy, x1 : x1 + w], out=diff)
        diff.mul_(diff)
        wt = w_buf[: batch * h * w].view(batch, 1, h, w)
        if channels == 1:
            wt.copy_(diff)
        else:
            torch.add(diff[:, 0:1], diff[:, 1:2], out=wt)
            for c in range(2, channels):
                wt.add_(diff[:, c : c + 1])
        return finish_weight(wt, self.scale, a, g)

    def _band_rows(self, labels: int) -> int:
        """Rows per band: cache-sized for many labels, the whole image for a few.

        Never a function of the thread count: band edges change the rounding of some weights (vectorised
        and scalar ``exp2`` differ in the last bit), and results must not depend on the machine's cores.
        """
        batch, _, height, width = self.shape
        if labels < MANY_LABELS:
            return height
        rows = max(32, min(height, BAND_BYTES // (4 * batch * labels * width)))
        # an even number of bands of nearly equal height, so that two or four threads get equal shares
        bands = math.ceil(height / rows)
        bands += bands % 2 if bands > 1 else 0
        return math.ceil(height / bands)

    def run(self, msg: Tensor, src: Tensor, weight_sum: Tensor | None = None) -> None:
        """``msg`` and ``src`` are ``(B, L, H, W)``; ``weight_sum`` (``(B, 1, H, W)``) also gets ``sum_j k``.

        Bands write only their own rows of ``msg``, so groups of them run on parallel threads
        (:mod:`wsis_kernels.crf.parallel`) with the same result.
        """
        height = self.shape[2]
        bands = parallel.ranges(0, height, self._band_rows(src.shape[1]))
        parallel.run(bands, lambda worker, y0, y1: self._band(msg, src, weight_sum, y0, y1, worker))

    def _band(self, msg: Tensor, src: Tensor, weight_sum: Tensor | None, y0: int, y1: int, worker: int) -> None:
        """Every tap's contribution to the message rows ``[y0, y1)``."""
        height, width = self.shape[2], self.shape[3]
        if self.taps.centre:
            msg[:, :, y0:y1].add_(src[:, :, y0:y1], alpha=self.taps.centre)
            if weight_sum is not None:
                weight_sum[:, :, y0:y1].add_(self.taps.centre)
        for dy, dx, a, g in self.taps.half:
            # pairs (i, i + d) with i in rows [r0, r1): those whose i or i + d lies in this band
            r0, r1 = max(0, y0 - dy), min(y1, height - dy)
            if r1 <= r0:
                continue
            wt = self._weights(r0, r1, dy, dx, a, g, worker)
            w = width - abs(dx)
            x0, x1 = max(0, -dx), max(0, dx)
            # rows i of the pairs where i is in the band (i receives from i + d), then where i + d is
            for forward, lo, hi in ((True, max(y0, r0), min(y1, r1)), (False, max(y0 - dy, r0), min(y1 - dy, r1))):
                if hi <= lo:
                    continue
                here = (slice(None), slice(None), slice(lo, hi), slice(x0, x0 + w))
                there = (slice(None), slice(None), slice(lo + dy, hi + dy), slice(x1, x1 + w))
                into, frm = (here, there) if forward else (there, here)
                part = wt if isinstance(wt, float) else wt[:, :, lo - r0 : hi - r0]
                _madd(msg[into], src[frm], part)
                if weight_sum is not None:
                    weight_sum[into].add_(part)


def finish_weight(wt: Tensor, scale: float, a: float | Tensor, g: float | Tensor) -> Tensor:
    """``a * exp2(max(-scale * wt, -126)) + g`` in place, ``wt`` holding ``sum_c (I_i - I_j)^2``.

    ``a`` and ``g`` are numbers, or tensors that broadcast against ``wt`` (one per tap).
    """
    # Scaling after the sum (not the image before it) keeps the weights within ~3e-6 of float64.
    wt.mul_(-scale).clamp_(min=-MAX_EXP2).exp2_()
    if isinstance(a, Tensor) or a != 1.0:
        wt.mul_(a)
    if isinstance(g, Tensor) or g != 0.0:
        wt.add_(g)
    return wt


def _madd(out: Tensor, src: Tensor, weight: Tensor | float) -> None:
    if isinstance(weight, float):
        out.add_(src, alpha=weight)
    else:
        out.addcmul_(src, weight)


def log_floor(x: Tensor, floor: float) -> Tensor:
    return x.clamp_min(floor).log_()


def log_mask(box: Tensor | None) -> Tensor | None:
    """``log(box)``: 0 inside, ``-inf`` outside, so the box is one more additive term of the logits."""
    return None if box is None else box.to(torch.float32).log()


def normalise_labels(
    z: Tensor,
    log_box: Tensor | None,
    eps: float,
    scratch: tuple[Tensor, Tensor] | None = None,
    logits: Tensor | None = None,
) -> Tensor:
    """``box * exp(z) / (sum_labels box * exp(z) + eps)`` over dim 1, max-subtracted, in place in ``z``.

    ``log_box`` is ``log(box)`` (``-inf`` outside). A pixel whose labels are all boxed out gets ``Q = 0``.
    ``scratch`` holds two ``(B, 1, H, W)`` buffers to reuse; fresh ones are allocated otherwise. (Written
    out rather than ``torch.softmax``: over dim 1 of an NCHW tensor that is ~1.5x slower on CPU and
    allocates, and fresh multi-megabyte buffers cost page faults every iteration.) With ``logits`` given,
    they are read from there and left unchanged, ``z`` being only the output (one pass fewer than a copy).
    """
    src = z if logits is None else logits
    if log_box is not None:
        src = torch.add(src, log_box, out=z)
    m, den = scratch if scratch is not None else (z.new_empty(z[:, :1].shape), z.new_empty(z[:, :1].shape))
    torch.amax(src, dim=1, keepdim=True, out=m)
    if eps > 0:
        m.clamp_(min=math.log(eps))
    elif log_box is not None:
        m.nan_to_num_(neginf=0.0)  # every label boxed out: exp(-inf) = 0 below, and 0 / 0 is cleared after
    if log_box is None:  # exp2 of a clamped exponent: several times faster than exp, and no denormals
        # (src - m) log2(e) in one pass, as -m log2(e) + log2(e) src (den is free until the sum)
        torch.add(torch.mul(m, -LOG2E, out=den), src, alpha=LOG2E, out=z).clamp_(min=-LABEL_EXP2).exp2_()
    else:  # keep exp(-inf) = 0 outside the box exact
        z.sub_(m).exp_()
    torch.sum(z, dim=1, keepdim=True, out=den)
    if eps > 0:
        den.add_(m.neg_().add_(math.log(eps)).exp_())
    z.mul_(den.reciprocal_())  # one division per pixel, not per label: a multiply is ~4x cheaper here
    return z.nan_to_num_(nan=0.0) if eps == 0 and log_box is not None else z


def expand_box(box: Tensor | None, labels: int) -> Tensor | None:
    """A ``(B, 1, H, W)`` box constrains every label but 0 (the background); ``(B, L, H, W)`` is per label."""
    if box is None or box.shape[1] == labels:
        return box
    ones = torch.ones_like(box)
    return torch.cat([ones, box.expand(-1, labels - 1, -1, -1)], dim=1)


def initial_state(probs: Tensor, box: Tensor | None, params: CRFParams) -> Tensor:
    """``Q_0``: for one label ``clamp(box * p)``; otherwise ``box * max(P, floor)`` normalised, then clamped."""
    probs = probs.to(torch.float32)
    if probs.shape[1] == 1:
        q = probs.clone() if box is None else probs * box
    else:
        q = floor_normalise(probs, expand_box(box, probs.shape[1]), params.unary_floor)
    if params.clamp is not None:
        q.clamp_(*params.clamp)
    return q


def unary_logits(probs: Tensor, params: CRFParams) -> Tensor | None:
    """``unary_weight * log max(P, floor)`` as ``(B, L, H, W)``; for one label the rows are ``[bg, fg]``."""
    if params.unary_weight == 0:
        return None
    probs = probs.to(torch.float32)
    if probs.shape[1] == 1:
        probs = torch.cat([1.0 - probs, probs], dim=1)
    return log_floor(probs, params.unary_floor).mul_(params.unary_weight)


def floor_normalise(probs: Tensor, boxes: Tensor | None, floor: float, out: Tensor | None = None) -> Tensor:
    """``Q_0 = box * max(P, floor) / sum_labels(box * max(P, floor))``, 0 where every label is boxed out.

    This is :func:`normalise_labels` of ``log max(P, floor) + log box`` without the log and the exp (the
    softmax of a log is the normalised argument), so it costs a few passes fewer.
    """
    x = torch.clamp_min(probs.to(torch.float32), floor, out=out)
    if boxes is not None:
        x.mul_(boxes)
    x.mul_(x.sum(dim=1, keepdim=True).reciprocal_())
    return x if boxes is None else x.nan_to_num_(nan=0.0)

