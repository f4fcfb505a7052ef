"""``freemask --pretrain`` pieces: label-free regions, the pixel-to-region loss, training, resume, reloading."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from wsis_cli.io.run_dir import RunDir
from wsis_cli.stages.freemask.features import BackboneSpec, build_backbone, features_of, load_backbone_state
from wsis_cli.stages.freemask.pretrain import (
    PretrainSettings,
    build_pretrain_backbone,
    pixel_region_loss,
    pretrain,
    region_samples,
)
from wsis_cli.stages.freemask.regions import region_proposals

SPEC = BackboneSpec(arch="resnet18", weights="none", stage=2, last_stride=2, short_side=0)


def _two_blobs(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((48, 64, 3), (40, 90, 40), np.uint8)
    img[8:22, 6:20] = (220, 30, 30)
    img[28:44, 40:58] = (30, 30, 220)
    noise = rng.integers(-6, 7, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def test_regions_are_disjoint_and_find_distinct_colours() -> None:
    img = _two_blobs()
    regions = region_proposals(img, 4, seed=0)
    assert regions.dtype == bool and regions.shape[1:] == img.shape[:2]
    assert int(regions.sum(axis=0).max()) == 1  # disjoint
    for box in ((slice(8, 22), slice(6, 20)), (slice(28, 44), slice(40, 58))):
        truth = np.zeros(img.shape[:2], bool)
        truth[box] = True
        iou = [(r & truth).sum() / (r | truth).sum() for r in regions]
        assert max(iou) > 0.8  # each coloured square is (nearly) one region
    again = region_proposals(img, 4, seed=0)
    assert np.array_equal(regions, again)  # deterministic
    big = region_proposals(np.kron(img, np.ones((4, 4, 1), np.uint8)), 4, max_side=64)
    assert big.shape[1:] == (192, 256) and len(big) >= 2  # clustered on a small copy, returned full size


def test_pixel_region_loss_prefers_features_that_follow_the_regions() -> None:
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :, :4] = True
    masks[1, :, 4:] = True
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    good = torch.zeros(2, 8, 8)
    good[0, :, :4] = 1.0
    good[1, :, 4:] = 1.0
    bad = good.flip(0)
    own = torch.tensor([0, 1])
    lg = pixel_region_loss([good], [masks], protos, [own], 0.5)
    lb = pixel_region_loss([bad], [masks], protos, [own], 0.5)
    # each location: -log(e^2 / (e^2 + e^0)) for the right features
    assert float(lg) == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)), abs=1e-5)
    assert float(lb) > float(lg)
    empty = pixel_region_loss([good], [masks[:0]], protos, [own[:0]], 0.5)
    assert float(empty) == 0.0


def test_pretrain_lowers_the_loss_resumes_and_loads_as_weights(tmp_path) -> None:
    images = [_two_blobs(s) for s in range(4)]
    settings = PretrainSettings(epochs=4, lr=3e-3, batch_size=2, regions=4, warmup=0.0, pixel_weight=1.0)
    samples = region_samples(images, settings)
    assert all(len(s.labels) >= 2 for s in samples)

    def train(run: RunDir) -> torch.nn.Module:
        torch.manual_seed(0)
        net = build_pretrain_backbone(SPEC)
        pretrain(net, samples, SPEC, settings, torch.device("cpu"), run)
        return net

    run = RunDir(tmp_path / "run", "freemask", settings.to_json(), resume=False)
    full = train(run)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and losses[-1] < losses[0]

    class Interrupted(RunDir):  # a run killed right after its second checkpoint
        def save_checkpoint(self, state):
            path = super().save_checkpoint(state)
            if state["epoch"] == 2:
                raise KeyboardInterrupt
            return path

    with pytest.raises(KeyboardInterrupt):
        train(Interrupted(tmp_path / "cut", "freemask", settings.to_json(), resume=False))
    resumed = train(RunDir(tmp_path / "cut", "freemask", settings.to_json(), resume=True))
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    # the live-BatchNorm state goes into the frozen-BatchNorm Free Mask backbone, by file and in memory
    run.save_model(full.state_dict(), {"kind": "pretrain"})
    by_file = build_backbone(SPEC, weights=str(run.model_path))
    in_memory = build_backbone(SPEC, weights="none")
    load_backbone_state(in_memory, full.state_dict())
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        ref = features_of(full.eval(), x)
        assert torch.allclose(features_of(by_file.eval(), x), ref, atol=1e-4)
        assert torch.allclose(features_of(in_memory.eval(), x), ref, atol=1e-4)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        PretrainSettings(pixel_weight=0.0, region_weight=0.0)
    with pytest.raises(ValueError):
        PretrainSettings(regions=0)


def test_a_step_in_passes_of_one_view_trains_the_layers_one_pass_trains() -> None:
    from wsis_cli.stages.freemask.pretrain import _step

    def trained(pass_pixels: int) -> tuple[float, set[str]]:
        settings = PretrainSettings(batch_size=3, pass_pixels=pass_pixels)
        samples = region_samples([_two_blobs(i) for i in range(3)], settings)
        torch.manual_seed(0)
        net = build_pretrain_backbone(SPEC).train()
        loss = _step(net, samples, SPEC, settings, torch.device("cpu"), np.random.default_rng(0), 1)
        assert not loss.requires_grad
        return float(loss), {n for n, p in net.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}

    loss_one, names_one = trained(10**9)  # all six views in one pass
    loss_each, names_each = trained(1)  # every view its own backbone pass
    assert math.isfinite(loss_each) and loss_each > 0
    assert names_each == names_one and "stem.0.weight" in names_one  # every layer the features use learns
