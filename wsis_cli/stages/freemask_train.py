"""A small backbone learnt from image-level class tags in seconds, for Free Mask demos and tests.

``wsis cam``'s trainer (:mod:`wsis_cli.stages.cam_train`) is made for pretrained backbones: it freezes
BatchNorm and the stem and first two stages, which leaves a randomly initialised network untrainable.
Here every layer learns, with live BatchNorm, from a multi-label (BCE) loss on globally pooled features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsis_cli.models.backbones import ResNetFeatures
from wsis_cli.stages.freemask_features import BackboneSpec, features_of, prepare


def train_tag_backbone(data: Sequence[tuple[np.ndarray, set[int]]], category_ids: Sequence[int],
                       spec: BackboneSpec, *, epochs: int = 5, lr: float = 2e-3, batch_size: int = 8,
                       seed: int = 0, device: torch.device | None = None) -> ResNetFeatures:
    """Train a ResNet (``spec.arch``, up to ``spec.stage``) from scratch on ``(RGB image, tag set)`` pairs.

    Images are resized as Free Mask will see them (``spec``); equal sizes share a batch. Returns the
    backbone in eval mode (its BatchNorm statistics are the training batches').
    """
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    net = ResNetFeatures(spec.arch, None, last_stride=spec.last_stride, frozen_bn=False, stages=spec.stage).to(device)
    head = nn.Linear(net.channels[-1], max(len(category_ids), 1)).to(device)
    index = {c: k for k, c in enumerate(category_ids)}
    xs = [prepare(img, spec, device) for img, _ in data]
    ys = torch.zeros(len(data), max(len(category_ids), 1), device=device)
    for i, (_, tags) in enumerate(data):
        for t in tags:
            if t in index:
                ys[i, index[t]] = 1.0
    opt = torch.optim.AdamW(list(net.parameters()) + list(head.parameters()), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    net.train()
    for _ in range(epochs):
        order = rng.permutation(len(xs))
        for b in range(0, len(order), batch_size):
            groups: dict[tuple[int, ...], list[int]] = {}
            for i in order[b : b + batch_size]:
                groups.setdefault(tuple(xs[i].shape), []).append(int(i))
            for members in groups.values():
                x = torch.stack([xs[i] for i in members])
                if rng.random() < 0.5:
                    x = x.flip(3)
                logits = head(features_of(net, x).mean(dim=(2, 3)))
                loss = F.binary_cross_entropy_with_logits(logits, ys[members])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    net.eval()
    return net
