"""FreeSOLO's coarse-mask losses on hand-made tensors: each term alone, its weights and its warm-up."""

from __future__ import annotations

import math

import pytest
import torch

from wsis_cli.models.student_losses import (
    ProjectionLossWeights,
    box_from_projections,
    colour_affinity,
    dice_loss,
    neighbour_offsets,
    pairwise_log_same,
    pairwise_loss,
    projection_dice,
    projection_mask_loss,
)


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(h, w)
    m[y0:y1, x0:x1] = 1
    return m


def test_dice_loss_is_zero_for_equal_and_one_for_disjoint() -> None:
    a = box(8, 8, 0, 4, 0, 4)[None]
    b = box(8, 8, 4, 8, 4, 8)[None]
    assert dice_loss(a, a).item() == pytest.approx(0.0, abs=1e-5)
    assert dice_loss(a, b).item() == pytest.approx(1.0, abs=1e-6)
    # half overlap: 1 - 2*8 / (16 + 16)
    c = box(8, 8, 0, 4, 2, 6)[None]
    assert dice_loss(a, c).item() == pytest.approx(0.5, abs=1e-5)


def test_max_projection_only_sees_the_extent_and_mean_projection_sees_the_fill() -> None:
    target = box(10, 10, 2, 8, 2, 8)
    cross = torch.zeros(10, 10)
    cross[2:8, 4:6] = 1
    cross[4:6, 2:8] = 1  # a "+" spanning the target's box: same row and column extents
    assert projection_dice(cross[None], target[None], "max").item() == pytest.approx(0.0, abs=1e-5)
    assert projection_dice(cross[None], target[None], "mean").item() > 0.05
    smaller = box(10, 10, 3, 7, 3, 7)
    assert projection_dice(smaller[None], target[None], "max").item() > 0.1
    # rows and columns are summed: a mask right in one axis only loses half
    rows_ok = box(10, 10, 2, 8, 0, 10)
    loss = projection_dice(rows_ok[None], target[None], "max").item()
    cols = 1 - 2 * 6 / (10 + 6)
    assert loss == pytest.approx(cols, abs=1e-4)
    with pytest.raises(ValueError):
        projection_dice(target[None], target[None], "median")


def test_neighbours_are_the_dilated_ring() -> None:
    offs = neighbour_offsets(3, 2)
    assert len(offs) == 8 and (0, 0) not in offs
    assert set(offs) == {(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2)} - {(0, 0)}


def test_pairwise_term_matches_the_formula() -> None:
    logits = torch.tensor([[[0.3, -1.0, 2.0], [0.5, 1.5, -0.5], [0.0, 1.0, -2.0]]])
    out = pairwise_log_same(logits, kernel=3, dilation=2)
    assert out.shape == (1, 8, 3, 3)
    p = logits.sigmoid()[0]
    k = neighbour_offsets(3, 2).index((2, 2))  # pixel (0,0) with (2,2)
    expected = -math.log(p[0, 0] * p[2, 2] + (1 - p[0, 0]) * (1 - p[2, 2]))
    assert out[0, k, 0, 0].item() == pytest.approx(expected, rel=1e-5)
    assert out[0, k, 1, 1].item() == 0.0  # (3,3) is outside the grid
    # saturated logits stay finite in log space
    assert torch.isfinite(pairwise_log_same(torch.tensor([[[80.0, -80.0, 80.0]]]), 3, 1)).all()


def test_colour_affinity_of_flat_and_two_colour_images() -> None:
    lab = torch.zeros(1, 3, 4, 6)
    lab[:, 0] = 50.0
    sim = colour_affinity(lab, 3, 2)
    k = neighbour_offsets(3, 2).index((0, 2))
    assert sim[0, k, :, :4].eq(1).all()  # same colour, neighbour inside
    assert sim[0, k, :, 4:].eq(0).all()  # neighbour outside the grid
    lab[:, 0, :, 3:] = 60.0  # right half 10 L-units brighter
    sim = colour_affinity(lab, 3, 2)
    assert sim[0, k, 0, 2].item() == pytest.approx(math.exp(-5.0), rel=1e-5)  # (0,2) vs (0,4)


def test_pairwise_loss_counts_only_similar_pairs_inside_the_box() -> None:
    target = box(12, 12, 3, 9, 3, 9)
    assert box_from_projections(target[None])[0].equal(target)
    lab = torch.zeros(1, 3, 12, 12)
    logits = torch.randn(1, 12, 12, generator=torch.Generator().manual_seed(0))
    base = pairwise_loss(logits, lab, target[None])
    outside = logits.clone()
    outside[0, :1, :] = 25.0  # rows 0 is more than one dilated step away from the box's first row (3)
    assert pairwise_loss(outside, lab, target[None]).item() == pytest.approx(base.item(), rel=1e-6)
    # a colour edge between every pixel and its neighbours (alternating L by 50): no pair passes 0.3
    stripes = lab.clone()
    stripes[0, 0] = (torch.arange(12) // 2 % 2 * 50.0)[None, :].expand(12, 12)
    # constant logits: -log(p² + (1-p)²) everywhere it counts
    flat = torch.zeros(1, 12, 12)
    assert pairwise_loss(flat, lab, target[None]).item() == pytest.approx(math.log(2.0), rel=1e-5)
    assert pairwise_loss(flat, stripes, target[None]).item() < math.log(2.0)


def test_projection_mask_loss_weights_and_warmup() -> None:
    target = box(8, 8, 2, 6, 2, 6)[None]
    logits = torch.where(target > 0, 3.0, -3.0) + 0.5 * torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1))
    lab = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    w = ProjectionLossWeights(pairwise_warmup=1000)
    at0 = projection_mask_loss(logits, target, lab, 0, w)
    at500 = projection_mask_loss(logits, target, lab, 500, w)
    at2000 = projection_mask_loss(logits, target, lab, 2000, w)
    assert at0["loss_mask_pairwise"].item() == 0.0
    assert at500["loss_mask_pairwise"].item() == pytest.approx(0.5 * at2000["loss_mask_pairwise"].item(), rel=1e-5)
    probs = logits.sigmoid()
    assert at0["loss_mask_max"].item() == pytest.approx(projection_dice(probs, target, "max").item(), rel=1e-5)
    assert at0["loss_mask_avg"].item() == pytest.approx(0.1 * projection_dice(probs, target, "mean").item(), rel=1e-5)


def test_projection_mask_loss_without_instances_keeps_gradients() -> None:
    logits = torch.zeros(0, 28, 28, requires_grad=True)
    out = projection_mask_loss(logits, torch.zeros(0, 28, 28), None, 0)
    total = sum(out.values())
    total.backward()
    assert total.item() == 0.0 and logits.grad is not None


def _disc_scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 42² crop: a red disc (radius 10.5) on a blue-grey background with pixel noise, its box-filled
    coarse mask (the box of the disc) and the disc itself; colours as CIE Lab."""
    from wsis_cli.stages.student.data import rgb_to_lab

    yy, xx = torch.meshgrid(torch.arange(42.0), torch.arange(42.0), indexing="ij")
    disc = ((yy - 21) ** 2 + (xx - 21) ** 2) <= 10.5 ** 2
    noise = torch.randn(42, 42, 3, generator=torch.Generator().manual_seed(0)) * 3
    rgb = torch.where(disc[..., None], torch.tensor([200.0, 60, 50]), torch.tensor([90.0, 110, 140])) + noise
    lab = torch.from_numpy(rgb_to_lab(rgb.clamp(0, 255).round().to(torch.uint8).numpy()))
    return lab, box(42, 42, 10, 32, 10, 32), disc.float()


def _total(mask: torch.Tensor, target: torch.Tensor, lab: torch.Tensor) -> float:
    logits = (mask * 8 - 4)[None]  # confident masks, probabilities 0.018 / 0.982
    return sum(v.item() for v in projection_mask_loss(logits, target[None], lab[None], 10**6).values())


def test_with_context_around_the_box_the_object_is_the_cheapest_mask() -> None:
    """The loss must prefer the object to its box, to nothing and to everything, on a box-filled target.

    What a crop that is the box itself gets wrong (why the projection student on box-filled labels learns
    boxes; Mask R-CNN's RoI crops are such crops): with no pixel outside the box in view, the filled box
    satisfies every term and costs less than the object.
    """
    lab, target, disc = _disc_scene()
    candidates = {"object": disc, "box": target, "empty": torch.zeros_like(disc), "full": torch.ones_like(disc)}
    with_context = {k: _total(m, target, lab) for k, m in candidates.items()}
    assert min(with_context, key=with_context.get) == "object"
    assert with_context["object"] < 0.7 * with_context["box"]
    crop = slice(10, 32)  # the crop is the box: the degenerate frame torchvision's mask branch would give
    in_box = {k: _total(m[crop, crop], target[crop, crop], lab[:, crop, crop]) for k, m in candidates.items()}
    assert in_box["box"] < in_box["object"]


def test_pairwise_neighbours_connect_adjacent_pixels() -> None:
    """At dilation 2 the 3×3 window only links pixels of equal row and column parity, so masks whose
    alternate columns are on and off cost nothing: the four parity classes are the four taps of Mask
    R-CNN's stride-2 transposed convolution, which learnt exactly such stripes. Dilation 1 (the default)
    ties neighbours together."""
    lab = torch.full((1, 3, 16, 16), 50.0)  # one flat colour: every pair counts
    stripes = (torch.arange(16) % 2).float().expand(16, 16)
    logits = (stripes * 8 - 4)[None]
    target = torch.ones(1, 16, 16)
    assert ProjectionLossWeights().dilation == 1
    assert pairwise_loss(logits, lab, target, dilation=2).item() < 0.05
    assert pairwise_loss(logits, lab, target, dilation=1).item() > 2.0
