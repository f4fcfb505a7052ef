"""The optimised PyTorch mean-field CRF: the CPU path of :func:`wsis_kernels.mean_field_crf`.

It runs on any device (``WSIS_KERNELS=reference`` forces it on CUDA too).

The pairwise kernel is never stored as a ``(k*k, H, W)`` tensor. Each iteration walks the window taps,
recomputes that tap's weight map from two shifted views of the image and multiply-adds the shifted label
map into one ``(B, L, H, W)`` message buffer, so memory stays O(L*H*W). Two facts halve the work:

* the kernel is symmetric, ``k(i, i + d) = k(i + d, i)``, so one weight map serves taps ``d`` and ``-d``;
* with two labels and the mean-field message, ``Q_bg = 1 - Q_fg`` makes ``m_bg = S - m_fg`` with
  ``S = sum_j k(i, j)``, so only the foreground message is accumulated (``S`` is gathered once).

Weights are ``exp2`` of the colour distance times ``-log2(e) / (2 theta_beta^2)``, clamped at -126:
PyTorch's ``exp`` is several times slower on CPU, and far slower still where its result would be denormal.
The Triton path evaluates the same expression.

With many labels (two from :data:`TWO_LABEL_INCREMENTAL_PIXELS` and :data:`TWO_LABEL_INCREMENTAL_ITERATIONS`
on) and ``sparse_eps > 0`` (the default), :func:`mean_field_crf_cpu` hands the loop to
:mod:`wsis_kernels.crf.incremental`, which propagates only the changes of ``Q`` larger than ``sparse_eps``;
``sparse_eps = 0`` runs :func:`_multi` here, the exact banded loop.

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


# Two labels go through the incremental loop from this many pixels per image and iterations on; below, the
# foreground-only loop is faster (2 threads, ms, foreground-only vs incremental: 10 iterations 5.9 vs 6.4 at
# 64x64, 6.6 vs 6.2 at 96x96, 14.1 vs 10.5 at 256x256, 59 vs 38 at 512x512; 5 iterations 33 vs 35 at 512x512).
TWO_LABEL_INCREMENTAL_PIXELS = 96 * 96
TWO_LABEL_INCREMENTAL_ITERATIONS = 8

BAND_BYTES = 4 * 1024 * 1024  # message rows per band for many labels: msg + src bands stay cache-resident
# From this many labels on, the CPU passes run in row bands on the threads of `parallel`. With fewer, torch's own
# per-op threads stay: a pass is then a few ms and two half-image bands balanced badly (2 labels, 512x512, load
# 2.5: 51 ms against 37 ms with torch's threads).
MANY_LABELS = 4


class _MessagePass:
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
        return _finish_weight(wt, self.scale, a, g)

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


def _finish_weight(wt: Tensor, scale: float, a: float | Tensor, g: float | Tensor) -> Tensor:
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


def _log_floor(x: Tensor, floor: float) -> Tensor:
    return x.clamp_min(floor).log_()


def _log_box(box: Tensor | None) -> Tensor | None:
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


def _normalise_binary(z_fg: Tensor, z_bg: Tensor, log_box_fg: Tensor | None, eps: float) -> Tensor:
    """Two-label :func:`normalise_labels` returning the foreground only (inputs are overwritten)."""
    if log_box_fg is not None:
        z_fg.add_(log_box_fg)
    if eps == 0:
        return torch.sigmoid(z_fg.sub_(z_bg))
    m = torch.maximum(z_fg, z_bg).clamp_(min=math.log(eps))
    z_fg.sub_(m).exp_()
    den = z_bg.sub_(m).exp_().add_(z_fg).add_(m.neg_().add_(math.log(eps)).exp_())
    return z_fg.div_(den)


def _binary(
    img: Tensor,
    p: Tensor,
    unary_fg: Tensor | None,
    unary_bg: Tensor | None,
    log_box_fg: Tensor | None,
    params: CRFParams,
) -> Tensor:
    """Iterate on the foreground probability ``p`` (``(B, 1, H, W)``, background ``1 - p``)."""
    passes = _MessagePass(img, params)
    weight_sum: Tensor | None = None
    for _ in range(params.iterations):
        if params.message == "mean_field":
            msg = torch.zeros_like(p)
            if weight_sum is None:  # S = sum_j k(i, j) does not change: gather it on the first pass
                weight_sum = torch.zeros_like(p)
                passes.run(msg, p, weight_sum)
            else:
                passes.run(msg, p)
            z_fg, z_bg = msg, weight_sum - msg  # m_bg = sum_j k (1 - p_j) = S - m_fg
        else:
            src = torch.cat([_log_floor(1.0 - p, params.unary_floor), _log_floor(p, params.unary_floor)], 1)
            msg = torch.zeros_like(src)
            passes.run(msg, src)
            z_bg, z_fg = msg[:, 0:1], msg[:, 1:2]
        if unary_fg is not None and unary_bg is not None:
            z_fg.add_(unary_fg)
            z_bg.add_(unary_bg)
        p = _normalise_binary(z_fg, z_bg, log_box_fg, params.norm_eps)
        if params.clamp is not None:
            p = p.clamp_(*params.clamp)
    return p.contiguous()


def _multi(img: Tensor, q: Tensor, unary: Tensor | None, log_box: Tensor | None, params: CRFParams) -> Tensor:
    passes = _MessagePass(img, params)
    # Two (B, L, H, W) buffers swap roles each iteration (state in, message out) and one more holds
    # log q for MAL's message: no allocation inside the loop.
    msg = torch.empty_like(q)
    logq = torch.empty_like(q) if params.message == "log_pool" else None
    scratch = (q.new_empty(q[:, :1].shape), q.new_empty(q[:, :1].shape))
    for _ in range(params.iterations):
        if unary is None:
            msg.zero_()
        else:
            msg.copy_(unary)  # the unary term starts the sum
        if logq is not None:
            torch.clamp_min(q, params.unary_floor, out=logq).log_()
        passes.run(msg, q if logq is None else logq)
        q, msg = normalise_labels(msg, log_box, params.norm_eps, scratch), q
        if params.clamp is not None:
            q.clamp_(*params.clamp)
    return q


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
    return _log_floor(probs, params.unary_floor).mul_(params.unary_weight)


def mean_field_crf_cpu(image: Tensor, probs: Tensor, box: Tensor | None, params: CRFParams) -> Tensor:
    """The CPU path's mean-field CRF. Shapes as in :func:`wsis_kernels.mean_field_crf` (validated there).

    Returns float32 ``(B, L, H, W)``: the refined foreground probability for ``L = 1``, label
    probabilities otherwise. On CPU with many labels the passes run on up to ``torch.get_num_threads()``
    threads (:mod:`wsis_kernels.crf.parallel`); the result does not depend on the thread count.
    """
    if image.device.type != "cpu" or probs.shape[1] < MANY_LABELS:
        return _cpu(image, probs, box, params)
    with parallel.own_ops_single_threaded():
        return _cpu(image, probs, box, params)


def _cpu(image: Tensor, probs: Tensor, box: Tensor | None, params: CRFParams) -> Tensor:
    labels = probs.shape[1]
    img = image.to(torch.float32).contiguous()
    box32 = None if box is None else box.to(torch.float32)
    if labels == 1:
        q, unary = initial_state(probs, box32, params), unary_logits(probs, params)
        u_bg, u_fg = (None, None) if unary is None else (unary[:, 0:1], unary[:, 1:2])
        return _binary(img, q, u_fg, u_bg, _log_box(box32), params)
    boxes = expand_box(box32, labels)
    two_label_fast = (
        labels == 2
        and params.message == "mean_field"
        and params.clamp is None
        and params.norm_eps == 0
        and (boxes is None or bool((boxes[:, 0] == 1).all()))
    )
    from .incremental import IncrementalMeanField  # it builds on this module's pieces

    incremental = IncrementalMeanField.applicable(params)
    large = (img.shape[2] * img.shape[3] >= TWO_LABEL_INCREMENTAL_PIXELS
             and params.iterations >= TWO_LABEL_INCREMENTAL_ITERATIONS)
    if two_label_fast and not (incremental and large):
        # Q_bg = 1 - Q_fg exactly in this mode, so iterate on the foreground alone.
        q, unary = _multi_start(probs, boxes, params)
        u_bg, u_fg = (None, None) if unary is None else (unary[:, 0:1], unary[:, 1:2])
        log_box_fg = None if boxes is None else _log_box(boxes[:, 1:2])
        p = _binary(img, q[:, 1:2].contiguous(), u_fg, u_bg, log_box_fg, params)
        return torch.cat([1.0 - p, p], dim=1)
    if incremental:
        return IncrementalMeanField(img, params, labels).run(probs, boxes)
    q, unary = _multi_start(probs, boxes, params)
    return _multi(img, q, unary, _log_box(boxes), params)


def _multi_start(probs: Tensor, boxes: Tensor | None, params: CRFParams) -> tuple[Tensor, Tensor | None]:
    """:func:`initial_state` and :func:`unary_logits` for ``L >= 2`` (``boxes`` already expanded)."""
    q = floor_normalise(probs, boxes, params.unary_floor)
    if params.clamp is not None:
        q.clamp_(*params.clamp)
    return q, unary_logits(probs, params)


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


def crf_labels_cpu(probs: Tensor, threshold: float = 0.5) -> Tensor:
    """Hard labels ``(B, H, W)`` int64: ``p > threshold`` for one label, ``argmax`` over labels otherwise."""
    if probs.shape[1] == 1:
        return (probs[:, 0] > threshold).to(torch.int64)
    return probs.argmax(dim=1)
