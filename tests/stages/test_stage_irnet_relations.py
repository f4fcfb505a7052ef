"""Relation mining: confident foreground, confident background and ignore from CAMs, with our CRF."""

from __future__ import annotations

import numpy as np
import torch

from wsis_cli.stages.irnet_relations import (
    IGNORE,
    label_unary,
    relation_labels,
    strided_labels,
    upsample_cams,
)


def test_unary_from_labels() -> None:
    labels = torch.tensor([[0, 2], [1, 1]])
    p = label_unary(labels, 3)
    assert p.shape == (3, 2, 2)
    assert torch.allclose(p.sum(0), torch.ones(2, 2))
    assert float(p[2, 0, 1]) == np.float32(0.7) and float(p[0, 0, 1]) == np.float32(0.15)


def test_relation_labels_of_a_disc() -> None:
    h = w = 64
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt((yy - 32) ** 2 + (xx - 32) ** 2)
    image = np.full((h, w, 3), 40, np.uint8)
    image[r < 16] = (200, 60, 60)
    cam = np.clip(1.0 - r / 24.0, 0, 1).astype(np.float32)  # peaks in the middle, fades past the edge
    cams = cam[2::4, 2::4][None]
    labels = relation_labels(image, cams)
    assert labels.shape == (h, w) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, IGNORE}
    assert labels[32, 32] == 1 and labels[2, 2] == 0
    fg = labels == 1
    assert fg.sum() > 0.5 * (r < 16).sum() and not fg[r > 20].any()
    assert (labels == IGNORE).any()  # a ring of unsure pixels between the two thresholds


def test_no_classes_gives_background() -> None:
    out = relation_labels(np.zeros((9, 10, 3), np.uint8), np.zeros((0, 3, 3), np.float32))
    assert out.shape == (9, 10) and not out.any()
    assert upsample_cams(torch.zeros(0, 3, 3), 9, 10).shape == (0, 9, 10)


def test_strided_labels_take_cell_centres() -> None:
    full = np.arange(10 * 9).reshape(10, 9)
    s = strided_labels(full)
    assert s.shape == (3, 3)
    assert s[0, 0] == full[2, 2] and s[2, 2] == full[9, 8]
