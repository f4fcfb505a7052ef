"""Incremental mean-field for many labels: after a few iterations only a few pixels still change.

The mean-field message is linear in the state, ``m = K Q``, so an iteration can update the logits by
``K (Q_new - Q_used)`` instead of recomputing ``K Q_new``. On ``bench/crf.py``'s 21-label scene, after the
third iteration fewer than 0.1 % of the ``(label, pixel)`` values change by more than 1e-6, so most of that
product is zero. This module keeps:

* ``logits = unary + K used``, exact for the state ``used`` they were last computed from;
* ``used`` itself: wherever the new ``Q`` differs from it by more than ``sparse_eps``, that change is
  propagated and written into ``used``; smaller changes are left out, pixel by pixel.

So every logit is within ``sparse_eps * sum_j k(i, j)`` of the exact update from the current iterate (the
bound :class:`CRFParams` documents), and the returned ``Q`` is the exact softmax of the final logits.

The image is cut into :data:`TILE` tiles. An iteration renormalises only the tiles whose logits changed
(all of them at first), finds the ``(tile, label)`` pairs that changed by more than ``sparse_eps`` and
propagates them: through the ordinary banded pass over the whole image when many did, or as one batch of
tiles grown by the window's reach when few did. Eager PyTorch pays per operation and per scattered tile,
so the per-tile path is taken only while it is clearly cheaper (:data:`SPARSE_FRACTION`).

The first iterations change nearly every tile and pass over the whole image, where memory traffic is the
cost (measured on a 2-core machine, 21 labels, 512x512). So: three state-sized buffers in all (each fresh
one costs page faults worth a third of a pass, hence also huge pages, see ``large_empty``), and the
whole-image updates (start state, unary, softmax, change, changed tiles) done one row of tiles at a time,
in cache. Kernel weights are computed on the fly in both paths, never stored per tap: memory stays
O(L * H * W) whatever the window.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from . import parallel
from .params import CRFParams
from .reference import _finish_weight, _log_box, _MessagePass, floor_normalise, large_empty, normalise_labels

TILE = (32, 32)  # rows, columns
SPARSE_FRACTION = 0.08  # per-pair propagation while at most this fraction of (tile, label) pairs changed
DENSE_NORMALISE = 0.5  # renormalise the whole image when more than this fraction of its tiles is dirty


def _padded(x: Tensor | None, shape: tuple[int, ...], fill: float = 0.0) -> Tensor | None:
    """``x`` zero-padded at the bottom and right to ``shape``; ``x`` itself when it already fits."""
    if x is None or (tuple(x.shape) == tuple(shape) and x.is_contiguous()):
        return x
    out = x.new_full(shape, fill)
    out[..., : x.shape[2], : x.shape[3]] = x
    return out


def _zero_outside(x: Tensor, top: int, left: int, height: int, width: int) -> None:
    """Zero ``x`` (``(..., H', W')``) outside rows ``[top, top + height)`` and columns ``[left, left + width)``."""
    x[..., :top, :].zero_()
    x[..., top + height :, :].zero_()
    x[..., top : top + height, :left].zero_()
    x[..., top : top + height, left + width :].zero_()


class IncrementalMeanField:
    """The multi-label mean-field loop of :func:`wsis_kernels.mean_field_crf` for ``message="mean_field"``."""

    def __init__(self, img: Tensor, params: CRFParams, labels: int) -> None:
        batch, channels, height, width = img.shape
        self.params, self.labels, self.eps = params, labels, params.sparse_eps
        self.passes = _MessagePass(img, params)
        # how far a change travels, in pixels: the margin of every tile patch
        self.reach = max([max(dy, abs(dx)) for dy, dx, _, _ in self.passes.taps.half] + [0])
        th, tw = TILE
        self.grid = (math.ceil(height / th), math.ceil(width / tw))
        self.hp, self.wp = self.grid[0] * th, self.grid[1] * tw
        r = self.reach
        self.img_pad = img.new_zeros(batch, channels, self.hp + 2 * r, self.wp + 2 * r)
        self.img_pad[:, :, r : r + height, r : r + width] = img
        self.shape = (batch, labels, height, width)
        self._bufs: dict[str, Tensor] = {}

    @staticmethod
    def applicable(params: CRFParams) -> bool:
        """Only where a tile's neighbourhood stays within the adjacent tiles."""
        return params.message == "mean_field" and params.sparse_eps > 0 and params.radius * params.dilation <= min(TILE)

    def run(self, probs: Tensor, boxes: Tensor | None) -> Tensor:
        """Iterate from the input ``probs`` (``(B, L, H, W)``; ``boxes`` expanded to L labels or None)."""
        params, r = self.params, self.reach
        batch, labels, height, width = self.shape
        padded = (batch, labels, self.hp, self.wp)
        # Three (L, H, W)-sized buffers in all (state used, new state, logits): each fresh one costs its page
        # faults, about a third of a pass over it, so the unary goes straight into the logits.
        used = large_empty(padded, probs)  # the state the logits were last computed from
        q = used[:, :, :height, :width]
        if params.iterations == 0:
            floor_normalise(probs, boxes, params.unary_floor, out=q)
            return q.clamp_(*params.clamp).contiguous() if params.clamp is not None else q.contiguous()
        _zero_outside(used, 0, 0, height, width)  # the margin beyond the image stays 0 in every buffer
        fresh = large_empty(padded, used)
        _zero_outside(fresh, 0, 0, height, width)
        # logits = unary + K used, with a margin of r so that a tile's patch never needs clipping
        logits_pad = large_empty((batch, labels, self.hp + 2 * r, self.wp + 2 * r), used)
        _zero_outside(logits_pad, r, r, height, width)
        self.logits = logits_pad[:, :, r : r + height, r : r + width]

        def start(worker: int, y0: int, y1: int) -> None:  # a row of tiles at a time: it stays in cache
            rows = slice(y0, y1)
            band = None if boxes is None else boxes[:, :, rows]
            floor_normalise(probs[:, :, rows], band, params.unary_floor, out=q[:, :, rows])
            if params.clamp is not None:
                q[:, :, rows].clamp_(*params.clamp)
            unary = self.logits[:, :, rows]
            if params.unary_weight == 0:
                unary.zero_()
            else:
                torch.clamp_min(probs[:, :, rows].to(torch.float32), params.unary_floor, out=unary).log_()
                if params.unary_weight != 1:
                    unary.mul_(params.unary_weight)

        self._by_tile_rows(start)
        self.passes.run(self.logits, q)
        log_box = _log_box(boxes)
        self.logits_pad, self.box_pad = logits_pad, _padded(log_box, padded)
        self.valid = None
        if (height, width) != (self.hp, self.wp):
            self.valid = q.new_zeros(1, 1, self.hp, self.wp)
            self.valid[..., :height, :width] = 1.0
        self.log_box = log_box
        all_pairs = batch * labels * self.grid[0] * self.grid[1]
        dirty: list[tuple[int, int, int]] | None = None  # tiles (b, ty, tx) to renormalise; None: all
        for _ in range(params.iterations - 1):
            pairs = None
            if dirty is not None and len(dirty) <= DENSE_NORMALISE * batch * self.grid[0] * self.grid[1]:
                if not dirty:
                    break  # no logit changed: the state is a fixed point of the update
                z = self._normalise_tiles(dirty)
                d_tiles = z.sub_(self._gather(used, dirty, "used"))
                changed = (d_tiles.amax((2, 3)) > self.eps) | (d_tiles.amin((2, 3)) < -self.eps)
                rows, lab = changed.nonzero(as_tuple=True)
                if len(rows) <= SPARSE_FRACTION * all_pairs:
                    pairs = [(*dirty[i], j) for i, j in zip(rows.tolist(), lab.tolist(), strict=True)]
                    flat = d_tiles.view(-1, *d_tiles.shape[2:])
                    d_pairs = torch.index_select(flat, 0, rows * labels + lab,
                                                 out=self._scratch("d_pairs", (len(pairs), *flat.shape[1:])))
            if pairs is None:
                delta = used  # `used` is rebuilt below (saves a buffer)
                pairs = self._changed(self._normalise_all(fresh, delta))
                if pairs is None:  # many changes: propagate all of them through the banded pass
                    self.passes.run(self.logits, delta[:, :, :height, :width])
                    used, fresh = fresh, delta
                    dirty = None
                    continue
                d_pairs = self._gather(delta, pairs, "d_pairs") if pairs else None
                used = torch.sub(fresh, delta, out=delta)  # the old state again (to within an ulp)
            if not pairs:  # no change above eps: the logits stay, so does every later update
                dirty = []
                continue
            # changes no larger than eps stay unpropagated (and out of `used`), pixel by pixel
            big = torch.abs(d_pairs, out=self._scratch("big", d_pairs.shape)).gt_(self.eps)
            d_pairs.mul_(big)
            self._propagate(pairs, d_pairs)
            for k, (b, ty, tx, lab) in enumerate(pairs):
                self._tile(used, b, ty, tx, lab).add_(d_pairs[k])
            dirty = self._neighbour_tiles(pairs, d_pairs)
        self._normalise_all(fresh)
        return fresh[:, :, :height, :width].contiguous()

    def _normalise_all(self, out: Tensor, delta: Tensor | None = None) -> Tensor | None:
        """``out`` (padded) = the update from the current logits, over the whole image.

        With ``delta`` (padded, holding the state ``used``) it also turns ``delta`` into ``out - used``
        and returns which ``(B, L, nty, ntx)`` tiles changed by more than eps. The work goes one row of
        tiles at a time: the ~10 passes over it then stay in cache (twice as fast as whole-image passes).
        """
        (th, tw), (nty, ntx) = TILE, self.grid
        batch, labels, height, width = self.shape
        changed = None if delta is None else torch.empty(batch, labels, nty, ntx, dtype=torch.bool)

        def rows(worker: int, y0: int, y1: int) -> None:
            scratch = (self._scratch(f"m{worker}", (batch, 1, y1 - y0, width)),
                       self._scratch(f"den{worker}", (batch, 1, y1 - y0, width)))
            z = out[:, :, y0:y1, :width]
            box = None if self.log_box is None else self.log_box[:, :, y0:y1]
            normalise_labels(z, box, self.params.norm_eps, scratch, logits=self.logits[:, :, y0:y1])
            if self.params.clamp is not None:
                z.clamp_(*self.params.clamp)
            if delta is not None:
                d = torch.sub(out[:, :, y0 : y0 + th], delta[:, :, y0 : y0 + th], out=delta[:, :, y0 : y0 + th])
                # over the rows first: a reduction across rows runs ~5x faster than one within them
                hi, lo = d.amax(2).unflatten(2, (ntx, tw)).amax(3), d.amin(2).unflatten(2, (ntx, tw)).amin(3)
                changed[:, :, y0 // th] = (hi > self.eps) | (lo < -self.eps)

        self._by_tile_rows(rows)
        return changed

    def _by_tile_rows(self, body: Callable[[int, int, int], None]) -> None:
        """``body(worker, y0, y1)`` for each row of tiles (clipped to the image), over parallel threads."""
        parallel.run(parallel.ranges(0, self.shape[2], TILE[0]), body)

    def _scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """A buffer kept for the whole run under ``name``: a fresh large tensor pays its page faults on
        every iteration (about a third of a pass over it), a reused one does not."""
        n = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n:
            buf = self._bufs[name] = torch.empty(n, dtype=dtype, device=self.img_pad.device)
        return buf[:n].view(shape)

    def _gather(self, x: Tensor, tiles: list, name: str, **where: int) -> Tensor:
        """The tiles of ``x`` copied into one ``(N, ...)`` tensor (copy_ into slices beats torch.stack here)."""
        first = self._tile(x, *tiles[0], **where)
        out = self._scratch(name, (len(tiles), *first.shape), x.dtype)
        for k, tile in enumerate(tiles):
            out[k].copy_(self._tile(x, *tile, **where))
        return out

    @staticmethod
    def _tile(x: Tensor, b: int, ty: int, tx: int, lab: int | None = None, grow: int = 0, at: int = 0) -> Tensor:
        """View of tile ``(ty, tx)`` of item ``b`` (one label or all) from offset ``at``, ``grow`` larger."""
        th, tw = TILE
        y, x0 = at + ty * th, at + tx * tw
        labels = slice(None) if lab is None else lab
        return x[b, labels, y : y + th + grow, x0 : x0 + tw + grow]

    def _changed(self, changed: Tensor) -> list[tuple[int, int, int, int]] | None:
        """``(b, ty, tx, label)`` of the ``(B, L, nty, ntx)`` changed tiles, tile-major; None when many."""
        if int(changed.sum()) > SPARSE_FRACTION * changed.numel():
            return None
        b, lab, ty, tx = changed.nonzero(as_tuple=True)
        return sorted(zip(b.tolist(), ty.tolist(), tx.tolist(), lab.tolist(), strict=True))

    def _normalise_tiles(self, dirty: list[tuple[int, int, int]]) -> Tensor:
        """The update from the current logits on the dirty tiles, ``(N, L, th, tw)``."""
        params = self.params
        # (copies into one buffer: the tiles are strided views, and this beats indexing a tiled view ~10x)
        z = self._gather(self.logits_pad, dirty, "z", at=self.reach)
        log_box = None if self.box_pad is None else self._gather(self.box_pad, dirty, "box")
        normalise_labels(z, log_box, params.norm_eps)  # labels are dim 1 here too
        if params.clamp is not None:
            z.clamp_(*params.clamp)
        if self.valid is not None:  # pixels of the last tiles beyond the image stay 0
            z.mul_(self._gather(self.valid, [(0, ty, tx) for _, ty, tx in dirty], "valid"))
        return z

    def _propagate(self, pairs: list[tuple[int, int, int, int]], d_pairs: Tensor) -> None:
        """``logits += K d`` for each pair's tile change ``d``, written into the tile grown by ``r``.

        ``pairs`` are tile-major, so the kernel of each tile is computed once for all its labels.
        """
        (th, tw), r = TILE, self.reach
        taps = self.passes.taps
        tiles = sorted({p[:3] for p in pairs})
        slot = {tile: i for i, tile in enumerate(tiles)}
        owner = torch.tensor([slot[p[:3]] for p in pairs], device=d_pairs.device)
        img = self._gather(self.img_pad, tiles, "img", grow=2 * r)  # (N_t, C, th + 2r, tw + 2r)
        out = self._scratch("out", (len(pairs), th + 2 * r, tw + 2 * r)).zero_()
        if taps.centre:
            out[:, r : r + th, r : r + tw].add_(d_pairs, alpha=taps.centre)
        for dy, dx, a, g in taps.half:
            # Pixel j sends k(j, j + d) d(j) to j + d and k(j, j - d) d(j) to j - d. With u(p) = k(p, p + d)
            # (k is symmetric) both are u: at j, and at j - d. u is computed once on tile + (tile - d).
            x0 = max(0, dx)  # column of the tile in u
            to_plus = out[:, r + dy : r + dy + th, r + dx : r + dx + tw]
            to_minus = out[:, r - dy : r - dy + th, r - dx : r - dx + tw]
            if a == 0.0:
                to_plus.add_(d_pairs, alpha=g)
                to_minus.add_(d_pairs, alpha=g)
                continue
            h, w, c0 = th + dy, tw + abs(dx), r + min(0, -dx)
            # the weights on each changed tile (computed once for all its labels), then one copy per pair
            # (into reused buffers: a fresh multi-megabyte tensor per tap pays its page faults every time)
            n, channels = img.shape[:2]
            diff = torch.sub(img[:, :, r - dy : r - dy + h, c0 : c0 + w], img[:, :, r : r + h, c0 + dx : c0 + dx + w],
                             out=self._scratch("diff", (n, channels, h, w)))
            u = torch.mul(diff[:, 0], diff[:, 0], out=self._scratch("u", (n, h, w)))
            for c in range(1, channels):
                u.addcmul_(diff[:, c], diff[:, c])
            _finish_weight(u, self.passes.scale, a, g)
            u = torch.index_select(u.view(n, h * w), 0, owner,
                                   out=self._scratch("u_pairs", (len(pairs), h * w))).view(len(pairs), h, w)
            to_plus.addcmul_(d_pairs, u[:, dy : dy + th, x0 : x0 + tw])
            to_minus.addcmul_(d_pairs, u[:, :th, x0 - dx : x0 - dx + tw])
        for k, (b, ty, tx, lab) in enumerate(pairs):
            self._tile(self.logits_pad, b, ty, tx, lab, grow=2 * r).add_(out[k])

    def _neighbour_tiles(self, pairs: list[tuple[int, int, int, int]], d_pairs: Tensor) -> list[tuple[int, int, int]]:
        """Tiles whose logits the propagated changes reached: the pair's own and, where a change lies
        within ``r`` of a side, the neighbours across that side."""
        (th, tw), r, (nty, ntx) = TILE, self.reach, self.grid
        moved = torch.ne(d_pairs, 0, out=self._scratch("moved", d_pairs.shape, torch.bool))
        rows, cols = moved.any(2), moved.any(1)  # (N, th), (N, tw)
        up, down = rows[:, :r].any(1).tolist(), rows[:, th - r :].any(1).tolist()
        left, right = cols[:, :r].any(1).tolist(), cols[:, tw - r :].any(1).tolist()
        near = set()
        for k, (b, ty, tx, _) in enumerate(pairs):
            ys = [ty] + ([ty - 1] if up[k] and ty > 0 else []) + ([ty + 1] if down[k] and ty + 1 < nty else [])
            xs = [tx] + ([tx - 1] if left[k] and tx > 0 else []) + ([tx + 1] if right[k] and tx + 1 < ntx else [])
            near.update((b, y, x) for y in ys for x in xs)
        return sorted(near)
