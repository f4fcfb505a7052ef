"""IRNet's training losses (paper eqs. 4–7, upstream ``AffinityDisplacementLoss``).

For the pairs within the training radius (10 at stride 4):

* affinity ``a = 1 - max boundary on the path``; positive pairs (same label) pull it to 1 with
  ``-log(a + 1e-5)``, averaged separately over background and foreground pairs and then halved;
  negative pairs (different labels) push it to 0 with ``-log(1 + 1e-5 - a)``;
* displacement: for a foreground pair of one instance ``D(src) - D(dst)`` should be ``dst - src``
  (L1), for a background pair it should be 0; each sum is divided by twice its pair count;
* total ``(pos + neg) / 2 + (dp_fg + dp_bg) / 2``.

Sums and counts are returned separately (``PairLosses``) so that a data-parallel caller may reduce them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from wsis_cli.models.irnet_paths import (
    affinity_labels,
    direction_tensor,
    edge_to_affinity,
    pair_displacement,
    same_region_pairs,
)

TRAIN_RADIUS = 10
EPS = 1e-5


@dataclass
class PairLosses:
    """The four loss terms (already normalised by their pair counts) and their total."""

    pos_bg: Tensor
    pos_fg: Tensor
    neg: Tensor
    dp_fg: Tensor
    dp_bg: Tensor

    @property
    def total(self) -> Tensor:
        return (self.pos_bg / 2 + self.pos_fg / 2 + self.neg) / 2 + (self.dp_fg + self.dp_bg) / 2

    def items(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("pos_bg", "pos_fg", "neg", "dp_fg", "dp_bg")} | {
            "total": float(self.total.detach())}


def irnet_losses(edge_logits: Tensor, disp: Tensor, labels: Tensor, radius: float = TRAIN_RADIUS,
                 regions: Tensor | None = None) -> PairLosses:
    """The paper's losses for one batch.

    Args:
        edge_logits: ``(B, 1, h, w)`` boundary logits; disp: ``(B, 2, h, w)`` displacement (dy, dx).
        labels: ``(B, h, w)`` int64 relation labels at the same stride (0 bg, 1.. classes, 255 ignore).
        regions: optional ``(B, h, w)`` int64 map splitting the foreground into CAM basins: a foreground
            pair whose ends lie in different basins does not count for the displacement loss.
    """
    bg_pos, fg_pos, neg = affinity_labels(labels, radius)
    aff = edge_to_affinity(torch.sigmoid(edge_logits.float()), radius)
    pos_term = -torch.log(aff + EPS)
    neg_term = -torch.log(1.0 + EPS - aff)
    pos_bg = (pos_term * bg_pos).sum() / (bg_pos.sum() + EPS)
    pos_fg = (pos_term * fg_pos).sum() / (fg_pos.sum() + EPS)
    neg_l = (neg_term * neg).sum() / (neg.sum() + EPS)
    pair = pair_displacement(disp.float(), radius)  # (B, 2, D, hs, ws)
    fg_err = (pair - direction_tensor(radius, disp.device)).abs().sum(1)
    bg_err = pair.abs().sum(1)
    dp_pos = fg_pos if regions is None else fg_pos * same_region_pairs(regions, radius)
    dp_fg = (fg_err * dp_pos).sum() / (2 * dp_pos.sum() + EPS)
    dp_bg = (bg_err * bg_pos).sum() / (2 * bg_pos.sum() + EPS)
    return PairLosses(pos_bg, pos_fg, neg_l, dp_fg, dp_bg)
