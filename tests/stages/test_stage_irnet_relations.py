"""Relation mining: confident foreground, confident background and ignore from CAMs, with our CRF."""

from __future__ import annotations

import numpy as np
import torch

from wsis_cli.stages.irnet.relations import (
    IGNORE,
    cam_basins,
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


def test_cam_basins_split_touching_instances_at_their_peaks() -> None:
    h, w = 32, 64
    yy, xx = np.mgrid[0:h, 0:w]
    left, right = np.hypot(yy - 16, xx - 18), np.hypot(yy - 16, xx - 42)
    labels = np.zeros((h, w), np.uint8)
    labels[(left < 15) | (right < 15)] = 1  # two overlapping discs of one class: one confident region
    labels[0, 0] = IGNORE
    cam = np.maximum(np.clip(1 - left / 15, 0, 1), np.clip(1 - right / 15, 0, 1)).astype(np.float32)
    cams = cam[1::4, 1::4][None]
    basins = cam_basins(labels, cams, 0.5)
    assert basins.dtype == np.int32 and basins.shape == (h, w)
    assert (basins[labels != 1] == 0).all()
    a, b = basins[16, 18], basins[16, 42]
    assert a > 0 and b > 0 and a != b
    assert (basins[(left < 9) & (labels == 1)] == a).all() and (basins[(right < 9) & (labels == 1)] == b).all()
    one = cam_basins(labels, cams, 0.05)  # one seed region: the class is one basin
    assert len(np.unique(one[labels == 1])) == 1
