"""IRNet training pieces: sample views, crop sizes, and a mean shift that ignores the process count."""

from __future__ import annotations

import numpy as np
import torch

from wsis_cli.models.backbones import ResNetFeatures
from wsis_cli.models.irnet_heads import IRNet
from wsis_cli.runtime.distributed import DistContext
from wsis_cli.stages.irnet.train import RelationDataset, Sample, crop_size, measure_mean_shift


class Recording(DistContext):
    """A rank of a pretend job: keeps what it would all-reduce instead of reducing it."""

    def __init__(self, rank: int, world: int) -> None:
        super().__init__(rank=rank, world_size=world, device=torch.device("cpu"))
        self.sent: list[torch.Tensor] = []

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        self.sent.append(tensor.clone())
        return tensor


def test_mean_shift_is_the_same_for_any_number_of_processes() -> None:
    torch.manual_seed(0)
    model = IRNet(ResNetFeatures("resnet18", None, last_stride=1))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((64, 64), (72, 96), (80, 40))]
    loads = [lambda im=im: im for im in images]
    one = measure_mean_shift(model, loads, DistContext(device=torch.device("cpu")))
    ranks = [Recording(r, 2) for r in range(2)]
    for ctx in ranks:
        measure_mean_shift(model, loads, ctx)
    total = ranks[0].sent[0] + ranks[1].sent[0]
    two = (total[:2] / total[2]).float()
    assert torch.allclose(one, two, atol=1e-6)
    assert total[2] == 16 * 16 + 18 * 24 + 20 * 10  # every stride-4 pixel of every image, once


def test_flipped_views_keep_labels_on_their_pixels() -> None:
    h, w = 40, 42  # width not a multiple of 4: the flip must keep the stride-4 grid aligned
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :4] = 255  # a bright strip on the left: grid column 0
    labels = np.zeros((10, 11), np.uint8)
    labels[:, :1] = 1
    regions = (labels * 7).astype(np.int32)
    ds = RelationDataset([Sample(1, lambda: image, labels, regions)], (48, 48), seed=0)
    img, lab, reg = ds.views(0, True, None)
    assert img.shape == (3, 48, 48) and lab.shape == (12, 12)
    assert lab[0, 10] == 1 and lab[0, 9] == 0 and lab[0, 11] == 255  # the strip is now on the right
    assert torch.equal(reg, (lab == 1).long() * 7)  # regions follow the labels (padding: 0)
    bright = img[0, 0] > 1.0
    assert bright[40:44].all() and not bright[:40].any()  # pixels of grid column 10 are the bright ones
    _, _, reg0, index, flip = ds[0]
    assert index == 0 and flip in (0, 1) and reg0.shape == (12, 12)


def test_stride_2_views_keep_labels_on_their_pixels() -> None:
    image = np.zeros((40, 42, 3), np.uint8)  # the grid of a model at scale 2: 2 pixels a cell
    image[:, :2] = 255
    labels = np.zeros((20, 21), np.uint8)
    labels[:, :1] = 1
    ds = RelationDataset([Sample(1, lambda: image, labels)], (48, 48), seed=0, stride=2)
    img, lab = ds.view(0, True, None)
    assert img.shape == (3, 48, 48) and lab.shape == (24, 24)
    assert lab[0, 20] == 1 and lab[0, 19] == 0 and lab[0, 21] == 255
    bright = img[0, 0] > 1.0
    assert bright[40:42].all() and not bright[:40].any()


def test_crop_size() -> None:
    assert crop_size([(128, 96)], 512) == (128, 96)
    assert crop_size([(600, 300), (100, 700)], 512) == (512, 512)
    assert crop_size([(40, 50)], 512) == (80, 80)  # radius-10 pairs need a grid of 20 cells


def test_regions_leave_cross_basin_pairs_out_of_the_displacement_loss() -> None:
    from wsis_cli.models.irnet_loss import irnet_losses

    g = torch.Generator().manual_seed(0)
    edge, disp = torch.randn(1, 1, 16, 24, generator=g), torch.randn(1, 2, 16, 24, generator=g)
    labels = torch.zeros(1, 16, 24, dtype=torch.int64)
    labels[:, 4:12, 4:20] = 1  # one class region
    plain = irnet_losses(edge, disp, labels, 5)
    same = irnet_losses(edge, disp, labels, 5, torch.ones_like(labels))  # one basin: the paper's loss
    assert torch.allclose(plain.dp_fg, same.dp_fg) and torch.allclose(plain.total, same.total)
    regions = torch.zeros_like(labels)
    regions[:, 4:12, 4:12], regions[:, 4:12, 12:20] = 1, 2  # two basins
    split = irnet_losses(edge, disp, labels, 5, regions)
    assert not torch.allclose(split.dp_fg, plain.dp_fg)
    assert torch.equal(split.pos_fg, plain.pos_fg) and torch.equal(split.neg, plain.neg)  # affinities untouched
    # a field that sends each basin to its own centre costs nothing under the split loss
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(24.0), indexing="ij")
    field = torch.zeros(1, 2, 16, 24)
    for lo, hi in ((4, 12), (12, 20)):
        field[0, 0, 4:12, lo:hi] = 7.5 - ys[4:12, lo:hi]
        field[0, 1, 4:12, lo:hi] = (lo + hi - 1) / 2 - xs[4:12, lo:hi]
    assert float(irnet_losses(edge, field, labels, 5, regions).dp_fg) < 1e-4
    assert float(irnet_losses(edge, field, labels, 5).dp_fg) > 0.1
