"""Incremental mean-field for many labels: after a few iterations only a few values still change.

The mean-field message is linear in the state, ``m = K Q``, so an iteration can update the logits by
``K (Q_new - Q_used)`` instead of recomputing ``K Q_new``. On ``bench/crf.py``'s 21-label scene the change
from the second to the third iteration touches 15 % of the ``(label, pixel)`` values by more than 1e-6, the
next one 0.5 %, and later ones far fewer. This module keeps:

* ``logits = unary + K used``, exact for the state ``used`` they were last computed from;
* ``used`` itself: wherever the new ``Q`` differs from it by more than ``sparse_eps``, that change is
  propagated and written into ``used``; smaller changes are left out, value by value.

So every logit is within ``sparse_eps * sum_j k(i, j)`` of the exact update from the current iterate (the
bound :class:`CRFParams` documents), and the returned ``Q`` is the exact softmax of the final logits.

An iteration first renormalises: the whole image, in row pieces that stay in cache, or only the pixels whose
logits changed when they are few (:data:`GATHER_PIXELS`). Then it propagates the changes larger than
``sparse_eps``: through the banded pass over the whole image while many values changed, or value by value
(:data:`SPARSE_VALUES`): each changed value adds ``k(i, j) * change`` to the logits of its window
neighbours, with the weights computed for its pixel only. Eager PyTorch pays a few nanoseconds per value
and tap in that scatter against ~0.2 ns in the banded pass, so the scatter is taken only once few changed.

The logits (and a copy of the image) carry a margin of the window's reach around the image, so a scattered
neighbour index never leaves its own label plane; the margin is never read. Three state-sized buffers in all
(each fresh one costs page faults worth a third of a pass, hence also huge pages, see ``large_empty``).
Kernel weights are computed on the fly in both paths, never stored per tap: memory stays O(L * H * W)
whatever the window. The whole-image steps run in row pieces, the per-value ones in fixed pieces of pixels
or groups of label planes, on the threads of :mod:`wsis_kernels.crf.parallel`; no piece depends on the
thread count, so neither does the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from . import parallel
from .params import CRFParams
from .window import MessagePass, finish_weight, floor_normalise, large_empty, log_mask, normalise_labels

ROWS = 32  # rows per piece of a whole-image update: ~10 passes over it then stay in cache
SPARSE_VALUES = 0.015  # scatter the changes value by value while at most this share of the values changed
# ... scaled down for windows of more taps than this, so that the scatter's (changes, taps) index and value
# arrays stay within about one state buffer (12 bytes per change and tap, 4 per state value)
SCATTER_TAPS = 24
GATHER_PIXELS = 0.25  # renormalise only the changed pixels while at most this fraction of the image changed
SAMPLE = 4  # the share of changed values is counted on every SAMPLE-th row (it only picks the faster path)
PIXEL_PIECE = 4096  # pixels per piece of a per-pixel update
PLANE_GROUPS = 8  # label planes are scattered into in this many groups
SPECULATE = 0.25  # a whole-image update also locates its changes when the last share was at most this


class IncrementalMeanField:
    """The multi-label mean-field loop of :func:`wsis_kernels.mean_field_crf` for ``message="mean_field"``."""

    def __init__(self, img: Tensor, params: CRFParams, labels: int) -> None:
        batch, channels, height, width = img.shape
        self.params, self.labels, self.eps = params, labels, params.sparse_eps
        self.passes = MessagePass(img, params)
        taps = self.passes.taps
        # how far a change travels, in pixels: the margin of the logits and of the colour table
        self.reach = r = max([max(dy, abs(dx)) for dy, dx, _, _ in taps.half] + [0])
        self.shape = (batch, labels, height, width)
        self.padded = (batch, labels, height + 2 * r, width + 2 * r)
        self.plane = (height + 2 * r) * (width + 2 * r)  # values per (item, label) plane of a buffer
        # the window as flat offsets within a plane, with each tap's (a, g): both signs of every half tap
        row = width + 2 * r
        window = [(dy, dx, a, g) for dy, dx, a, g in taps.half] + [(-dy, -dx, a, g) for dy, dx, a, g in taps.half]
        self.offsets = torch.tensor([dy * row + dx for dy, dx, _, _ in window], dtype=torch.int64)
        self.label_ids = torch.arange(labels, dtype=torch.int64)
        self.tap_a = torch.tensor([a for _, _, a, _ in window], dtype=torch.float32)
        self.tap_g = torch.tensor([g for _, _, _, g in window], dtype=torch.float32)
        # the image channels-last with the same margin, (B * plane, C): one row per padded pixel
        colours = img.new_zeros(batch, height + 2 * r, width + 2 * r, channels)
        colours[:, r : r + height, r : r + width] = img.permute(0, 2, 3, 1)
        self.colours = colours.view(-1, channels)
        self.sparse_share = SPARSE_VALUES * min(1.0, SCATTER_TAPS / max(1, len(window)))
        self._bufs: dict[str, Tensor] = {}

    @staticmethod
    def applicable(params: CRFParams) -> bool:
        return params.message == "mean_field" and params.sparse_eps > 0

    def _interior(self, x: Tensor) -> Tensor:
        """The image part of a padded ``(B, L, H + 2r, W + 2r)`` buffer."""
        r, (_, _, height, width) = self.reach, self.shape
        return x[:, :, r : r + height, r : r + width]

    def run(self, probs: Tensor, boxes: Tensor | None) -> Tensor:
        """Iterate from the input ``probs`` (``(B, L, H, W)``; ``boxes`` expanded to L labels or None)."""
        params = self.params
        # Three state-sized buffers (state used, new state, logits); the unary goes straight into the logits.
        used, fresh = large_empty(self.shape, probs), large_empty(self.shape, probs)
        if params.iterations == 0:
            floor_normalise(probs, boxes, params.unary_floor, out=used)
            return used.clamp_(*params.clamp) if params.clamp is not None else used
        self.logits_pad = large_empty(self.padded, probs)
        self._zero_margin(self.logits_pad)
        self.logits = self._interior(self.logits_pad)

        def start(worker: int, y0: int, y1: int) -> None:  # a piece at a time: it stays in cache
            rows = slice(y0, y1)
            band = None if boxes is None else boxes[:, :, rows]
            floor_normalise(probs[:, :, rows], band, params.unary_floor, out=used[:, :, rows])
            if params.clamp is not None:
                used[:, :, rows].clamp_(*params.clamp)
            unary = self.logits[:, :, rows]
            if params.unary_weight == 0:
                unary.zero_()
            else:
                torch.clamp_min(probs[:, :, rows].to(torch.float32), params.unary_floor, out=unary).log_()
                if params.unary_weight != 1:
                    unary.mul_(params.unary_weight)

        self._by_rows(start)
        self.passes.run(self.logits, used)
        self.log_box = log_mask(boxes)
        pixels = math.prod(self.shape) // self.labels
        # `fresh` holds the current Q everywhere unless a banded pass just turned it into scratch
        fresh_valid, share = False, 1.0
        dirty: Tensor | None = None  # pixels (flat b * H * W + y * W + x) whose logits changed; None: all
        for _ in range(params.iterations - 1):
            if dirty is not None and dirty.numel() == 0:
                break  # no logit changed: the state is a fixed point of the update
            if dirty is not None and dirty.numel() <= GATHER_PIXELS * pixels:
                index, change = self._normalise_pixels(dirty, used, fresh)
            else:
                # the changes are located in the same sweep when the last count suggests they will be few
                share, index = self._normalise_all(fresh, used, find=share <= SPECULATE)
                if share > self.sparse_share:  # many changes: the banded pass propagates all of them
                    self.passes.run(self.logits, used)
                    used, fresh, fresh_valid, dirty = fresh, used, False, None
                    continue
                if index is None:
                    index = self._big_changes(used)
                change = torch.index_select(used.view(-1), 0, index)
                self._restore(used, fresh)  # the state used before (to within an ulp) ...
                used.view(-1).index_copy_(0, index, torch.index_select(fresh.view(-1), 0, index))  # ... updated
                fresh_valid = True
            dirty = self._propagate(index, change)
        if fresh_valid and dirty is not None and dirty.numel() <= GATHER_PIXELS * pixels:
            if dirty.numel():
                self._normalise_pixels(dirty, None, fresh)
        else:
            self._normalise_all(fresh)
        return fresh

    def _normalise_all(self, out: Tensor, delta: Tensor | None = None, find: bool = False
                       ) -> tuple[float, Tensor | None]:
        """``out`` = the update from the current logits, over the whole image.

        With ``delta`` (holding the state ``used``) it also turns ``delta`` into ``out - used`` and returns
        the share of the values that changed by more than eps: with ``find``, exactly, and with their flat
        indices (:meth:`_big_changes`); otherwise counted on every :data:`SAMPLE` th row only.
        """
        batch, _, _, width = self.shape
        found: dict[int, tuple[int, int, Tensor | None]] = {}

        def rows(worker: int, y0: int, y1: int) -> None:
            scratch = (self._scratch(f"m{worker}", (batch, 1, y1 - y0, width)),
                       self._scratch(f"den{worker}", (batch, 1, y1 - y0, width)))
            z = out[:, :, y0:y1]
            box = None if self.log_box is None else self.log_box[:, :, y0:y1]
            normalise_labels(z, box, self.params.norm_eps, scratch, logits=self.logits[:, :, y0:y1])
            if self.params.clamp is not None:
                z.clamp_(*self.params.clamp)
            if delta is not None:
                d = torch.sub(z, delta[:, :, y0:y1], out=delta[:, :, y0:y1])
                if find:
                    index = self._find(delta, worker, y0, y1)
                    found[y0] = (index.numel(), d.numel(), index)
                else:
                    some = d[:, :, ::SAMPLE]
                    found[y0] = (int(torch.count_nonzero(torch.abs(some) > self.eps)), some.numel(), None)

        self._by_rows(rows)
        if delta is None:
            return 0.0, None
        share = sum(c for c, _, _ in found.values()) / max(1, sum(n for _, n, _ in found.values()))
        return share, torch.cat([found[y0][2] for y0 in sorted(found)]) if find else None

    def _find(self, delta: Tensor, worker: int, y0: int, y1: int) -> Tensor:
        """Flat indices of the values of ``delta`` in rows ``[y0, y1)`` larger than eps in magnitude."""
        batch, labels, height, width = self.shape
        size = (batch, labels, y1 - y0, width)
        big = torch.gt(torch.abs(delta[:, :, y0:y1], out=self._scratch(f"abs{worker}", size)), self.eps,
                       out=self._scratch(f"big{worker}", size, torch.bool))
        b, lab, y, x = big.nonzero(as_tuple=True)
        return ((b * labels + lab) * height + y + y0) * width + x

    def _big_changes(self, delta: Tensor) -> Tensor:
        """Flat indices of the values of ``delta`` larger than eps in magnitude, row piece by row piece (a
        fixed order, whatever the thread count)."""
        found: dict[int, Tensor] = {}

        def rows(worker: int, y0: int, y1: int) -> None:
            found[y0] = self._find(delta, worker, y0, y1)

        self._by_rows(rows)
        return torch.cat([found[y0] for y0 in sorted(found)])

    def _restore(self, delta: Tensor, fresh: Tensor) -> None:
        """``delta`` (``fresh - used``) back to ``used``, in row pieces."""
        self._by_rows(lambda worker, y0, y1: torch.sub(fresh[:, :, y0:y1], delta[:, :, y0:y1], out=delta[:, :, y0:y1]))

    def _by_rows(self, body: Callable[[int, int, int], None]) -> None:
        """``body(worker, y0, y1)`` for each piece of :data:`ROWS` image rows, over parallel threads."""
        parallel.run(parallel.ranges(0, self.shape[2], ROWS), body)

    def _zero_margin(self, x: Tensor) -> None:
        r, (_, _, height, width) = self.reach, self.shape
        if r:
            x[:, :, :r].zero_()
            x[:, :, r + height :].zero_()
            x[:, :, :, :r].zero_()
            x[:, :, :, r + width :].zero_()

    def _scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """A buffer kept for the whole run under ``name``: a fresh large tensor pays its page faults on
        every iteration (about a third of a pass over it), a reused one does not."""
        n = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self._bufs[name] = torch.empty(n, dtype=dtype, device=self.colours.device)
        return buf[:n].view(shape)

    def _in_logits(self, flat: Tensor) -> Tensor:
        """Flat ``(H, W)`` positions (``plane * H * W + y * W + x``, any number of planes) as positions in the
        logits' padded planes."""
        r, (_, _, height, width) = self.reach, self.shape
        plane = flat.div(height * width, rounding_mode="floor")
        within = flat - plane * (height * width)
        row = within.div(width, rounding_mode="floor")
        return within.add_(plane * self.plane).add_(row, alpha=2 * r).add_(r * (width + 2 * r) + r)

    def _normalise_pixels(self, pixels: Tensor, used: Tensor | None, fresh: Tensor) -> tuple[Tensor, Tensor]:
        """The update at ``pixels`` (flat ``b * H * W + y * W + x``) only, written into ``fresh``; with
        ``used``, its changes larger than eps: their flat indices and sizes, ``used`` taking the new values.

        Runs in pieces of :data:`PIXEL_PIECE` pixels on the threads of :mod:`parallel` (fixed pieces, so the
        order of the changes does not depend on the thread count)."""
        found: dict[int, tuple[Tensor, Tensor]] = {}

        def piece(worker: int, k0: int, k1: int) -> None:
            found[k0] = self._normalise_piece(pixels[k0:k1], used, fresh, worker)

        parallel.run(parallel.ranges(0, pixels.numel(), PIXEL_PIECE), piece)
        parts = [found[k0] for k0 in sorted(found)]
        return torch.cat([i for i, _ in parts]), torch.cat([c for _, c in parts])

    def _normalise_piece(self, pixels: Tensor, used: Tensor | None, fresh: Tensor, worker: int
                         ) -> tuple[Tensor, Tensor]:
        (_, labels, height, width), n = self.shape, pixels.numel()
        item = pixels.div(height * width, rounding_mode="floor")
        state = pixels + item * ((labels - 1) * height * width)  # label 0 of each pixel
        at = self._in_logits(pixels) + item * ((labels - 1) * self.plane)
        index = torch.add(state[None, :], self.label_ids[:, None] * (height * width)).view(-1)
        z = torch.index_select(self.logits_pad.view(-1), 0,
                               torch.add(at[None, :], self.label_ids[:, None] * self.plane).view(-1),
                               out=self._scratch(f"z{worker}", (labels * n,)))
        log_box = None
        if self.log_box is not None:
            log_box = torch.index_select(self.log_box.view(-1), 0, index).view(1, labels, n)
        z = z.view(1, labels, n)  # labels on dim 1, as normalise_labels wants
        scratch = (self._scratch(f"zm{worker}", (1, 1, n)), self._scratch(f"zd{worker}", (1, 1, n)))
        normalise_labels(z, log_box, self.params.norm_eps, scratch)
        if self.params.clamp is not None:
            z.clamp_(*self.params.clamp)
        z = z.view(-1)
        fresh.view(-1).index_copy_(0, index, z)
        if used is None:
            return index[:0], z[:0]
        change = torch.index_select(used.view(-1), 0, index, out=self._scratch(f"zu{worker}", (labels * n,)))
        torch.sub(z, change, out=change)
        big = torch.gt(change.abs(), self.eps).nonzero().squeeze(1)
        index, change = torch.index_select(index, 0, big), torch.index_select(change, 0, big)
        used.view(-1).index_copy_(0, index, torch.index_select(z, 0, big))
        return index, change

    def _propagate(self, index: Tensor, change: Tensor) -> Tensor:
        """``logits += K change`` for changes at flat state ``index``; returns the pixels whose logits moved
        (flat ``b * H * W + y * W + x``, sorted).

        The weights are computed once per changed pixel; the scatter then runs in groups of label planes on
        the threads of :mod:`parallel` (a logit only receives changes of its own plane, in the order of
        ``index`` whatever the grouping, so the result does not depend on the thread count)."""
        if index.numel() == 0:
            return index
        r, (batch, labels, height, width) = self.reach, self.shape
        area = height * width
        within = index.remainder(area)
        pixels, which = torch.unique(within + index.div(labels * area, rounding_mode="floor") * area
                                     if batch > 1 else within, return_inverse=True)
        at = self._in_logits(pixels)  # the pixels in the padded planes of the colours, one plane per item
        taps, count = self.offsets.numel(), pixels.numel()
        weight = near = None
        if taps:
            # the kernel from each changed pixel to its window, once per pixel for all its labels
            near = torch.add(at[:, None], self.offsets, out=self._scratch("near", (count, taps), torch.int64))
            weight = self._scratch("w", (count, taps))
            channels = self.colours.shape[1]

            def weights(worker: int, k0: int, k1: int) -> None:
                diff = torch.index_select(self.colours, 0, near[k0:k1].reshape(-1),
                                          out=self._scratch(f"there{worker}", ((k1 - k0) * taps, channels)))
                diff = diff.view(k1 - k0, taps, channels).sub_(torch.index_select(self.colours, 0, at[k0:k1])[:, None])
                finish_weight(torch.sum(diff.mul_(diff), 2, out=weight[k0:k1]), self.passes.scale, self.tap_a,
                               self.tap_g)

            parallel.run(parallel.ranges(0, count, PIXEL_PIECE), weights)
        planes = index.div(area, rounding_mode="floor")
        logits = self.logits_pad.view(-1)

        def scatter(worker: int, p0: int, p1: int) -> None:
            mine = ((planes >= p0) & (planes < p1)).nonzero().squeeze(1)
            if mine.numel() == 0:
                return
            at_value = self._in_logits(torch.index_select(index, 0, mine))
            part = torch.index_select(change, 0, mine)
            if weight is not None:
                values = torch.index_select(weight, 0, torch.index_select(which, 0, mine),
                                            out=self._scratch(f"vals{worker}", (mine.numel(), taps)))
                targets = torch.add(at_value[:, None], self.offsets,
                                    out=self._scratch(f"targets{worker}", (mine.numel(), taps), torch.int64))
                logits.index_add_(0, targets.view(-1), values.mul_(part[:, None]).view(-1))
            if self.passes.taps.centre:
                logits.index_add_(0, at_value, part * self.passes.taps.centre)

        parallel.run(parallel.ranges(0, batch * labels, max(1, -(-batch * labels // PLANE_GROUPS))), scatter)
        # the pixels whose logits moved: the changed ones and their window (margin excluded)
        moved = self._scratch("moved", (batch, 1, height + 2 * r, width + 2 * r)).zero_()
        moved.view(-1).index_fill_(0, at, 1.0)
        if near is not None:
            moved.view(-1).index_fill_(0, near.view(-1), 1.0)
        item, _, y, x = self._interior(moved).nonzero(as_tuple=True)
        return (item * height + y) * width + x
