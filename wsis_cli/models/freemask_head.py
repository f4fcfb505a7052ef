"""Few-label contrastive fine-tuning of the Free Mask backbone: mask pooling, projection, SimCLR loss.

The weakly supervised FreeSOLO report (K. Awoufack, "Weakly Supervised Instance Segmentation" (a FreeSOLO extension), §3.2) trains the backbone so that the
embedding of a generated mask comes close to the embedding of the ground-truth instance it matches, with
SimCLR's NT-Xent loss (cosine similarity, temperature 0.5). Embeddings are the backbone features
averaged under each mask. Every embedding carries an instance label; embeddings with the same label
(the ground truth, the generated masks matched to it, and all of them in the other augmented view) are
positives, everything else in the batch is a negative: the multi-positive form of NT-Xent (SupCon).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mask_pool(features: Tensor, masks: Tensor) -> Tensor:
    """Average ``(E, h, w)`` features under each of ``(M, H, W)`` masks → ``(M, E)``.

    Masks are area-resampled to the feature grid, so a mask smaller than a feature cell still gets the
    features of the cells it overlaps (weighted by coverage).
    """
    if masks.shape[0] == 0:
        return features.new_zeros((0, features.shape[0]))
    w = F.interpolate(masks[:, None].float(), size=features.shape[1:], mode="area")[:, 0]  # (M, h, w)
    w = w / w.flatten(1).sum(dim=1).clamp_min(1e-6)[:, None, None]
    return torch.einsum("mhw,ehw->me", w, features)


class ProjectionHead(nn.Module):
    """SimCLR's projection: ``Linear → ReLU → Linear`` onto ``dim`` (``hidden`` wide), or the identity
    when ``hidden`` is 0 (the loss then shapes the backbone's own cosine geometry, which Free Mask uses)."""

    def __init__(self, channels: int, hidden: int = 0, dim: int = 128) -> None:
        super().__init__()
        self.net: nn.Module = (nn.Identity() if hidden == 0 else
                               nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                             nn.Linear(hidden, dim)))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def nt_xent(embeddings: Tensor, labels: Tensor, tau: float = 0.5) -> Tensor:
    """Multi-positive NT-Xent (SimCLR's loss with every same-label embedding as a positive).

    ``L_i = -mean_{p: label_p = label_i, p != i} log( exp(sim_ip / tau) / sum_{k != i} exp(sim_ik / tau) )``,
    averaged over the anchors that have at least one positive; ``sim`` is the cosine similarity.
    ``embeddings`` (M, D), ``labels`` (M,) int. Returns a scalar (0 when no anchor has a positive).
    """
    z = F.normalize(embeddings.float(), dim=1)
    sim = z @ z.t() / tau
    m = z.shape[0]
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(dim=1)
    anchors = n_pos > 0
    if not bool(anchors.any()):
        return embeddings.sum() * 0.0
    per = -(log_prob.masked_fill(~pos, 0.0).sum(dim=1)[anchors] / n_pos[anchors])
    return per.mean()
