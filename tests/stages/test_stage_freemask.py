"""Free Mask stage pieces: XYWH boxes, self-supervised checkpoint layouts, the contrastive loss, samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsis_cli.models.freemask_head import mask_pool, nt_xent
from wsis_cli.stages.freemask.features import BackboneSpec, annotations_for, build_backbone, target_size
from wsis_cli.stages.freemask.masks import FreeMasks
from wsis_cli.stages.freemask.tune import make_sample


def test_boxes_are_xywh_of_the_mask() -> None:
    masks = torch.zeros(2, 30, 40, dtype=torch.bool)
    masks[0, 5:12, 10:30] = True  # x 10..29, y 5..11
    masks[1, 20:29, 0:3] = True
    res = FreeMasks(masks, torch.tensor([0.9, 0.8]), torch.zeros(2, 128), torch.tensor([3, 7]), torch.zeros(2, 4, 5))
    anns = annotations_for(17, res)
    assert [a["bbox"] for a in anns] == [[10.0, 5.0, 20.0, 7.0], [0.0, 20.0, 3.0, 9.0]]
    assert [a["area"] for a in anns] == [140.0, 27.0]
    assert [a["id"] for a in anns] == [17001, 17002] and anns[0]["score"] == pytest.approx(0.9)


def test_input_resizing() -> None:
    spec = BackboneSpec(short_side=800, max_size=1333)
    assert target_size(480, 640, spec) == (800, 1067)
    assert target_size(100, 1000, spec) == (133, 1333)
    assert target_size(50, 70, BackboneSpec(short_side=0)) == (50, 70)
    assert target_size(50, 70, BackboneSpec(short_side=0), multiple=16) == (48, 64)


@pytest.mark.parametrize("layout", ["densecl", "moco", "plain"])
def test_self_supervised_checkpoints_load(tmp_path, layout: str) -> None:
    ref = build_backbone(BackboneSpec(arch="resnet18", weights="none"))
    torch.manual_seed(1)
    from torchvision.models import resnet18

    src = resnet18(weights=None).state_dict()
    if layout == "densecl":  # DenseCL/MoCo training checkpoints: the query encoder under module.encoder_q.
        raw = {"state_dict": {f"module.encoder_q.{k}": v for k, v in src.items()} | {"module.queue": torch.zeros(3)}}
    elif layout == "moco":
        raw = {"state_dict": {f"encoder_q.{k}": v for k, v in src.items()} | {"encoder_k.fc.weight": torch.zeros(2)}}
    else:
        raw = src
    path = tmp_path / f"{layout}.pth"
    torch.save(raw, path)
    net = build_backbone(BackboneSpec(arch="resnet18", weights=str(path)))
    assert torch.equal(net.layer3[0].conv1.weight, src["layer3.0.conv1.weight"])
    assert not torch.equal(net.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)


def test_nt_xent_matches_simclr_with_one_positive() -> None:
    torch.manual_seed(0)
    z = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])  # two views of three instances
    zn = torch.nn.functional.normalize(z, dim=1)
    want = 0.0
    for i in range(6):
        j = (i + 3) % 6
        den = sum(math.exp(float(zn[i] @ zn[k]) / 0.5) for k in range(6) if k != i)
        want += -math.log(math.exp(float(zn[i] @ zn[j]) / 0.5) / den)
    assert float(nt_xent(z, labels, 0.5)) == pytest.approx(want / 6, rel=1e-5)
    assert float(nt_xent(z, torch.arange(6), 0.5)) == 0.0  # no positives, no loss


def test_mask_pool_averages_under_the_mask() -> None:
    f = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 4, 4)
    m = torch.zeros(1, 8, 8, dtype=torch.bool)
    m[0, :4, :4] = True  # the top-left 2x2 feature cells
    pooled = mask_pool(f, m)
    assert torch.allclose(pooled[0], f[:, :2, :2].mean(dim=(1, 2)))


def test_generated_masks_are_labelled_by_their_best_ground_truth() -> None:
    gt = np.zeros((2, 10, 10), bool)
    gt[0, :5, :5] = True
    gt[1, 5:, 5:] = True
    gen = np.zeros((3, 10, 10), bool)
    gen[0, :5, :4] = True  # IoU 0.8 with gt 0
    gen[1, 5:, 5:] = True  # gt 1 exactly
    gen[2, :, :] = True  # the whole image: no match
    s = make_sample(np.zeros((10, 10, 3), np.uint8), gt, gen, 0.5)
    assert s.labels.tolist() == [0, 1, 0, 1, 2, 3]  # gts, generated, background
    assert s.masks.shape == (6, 10, 10) and s.masks[5].sum() == 50


def test_demo_entry_point_labels_every_image(tmp_path) -> None:
    from wsis_cli.io import coco
    from wsis_cli.stages.freemask.stage import demo_freemask
    from wsis_cli.stages.synth import stage as synth

    synth.run(synth.SynthSettings(num_images=6, height=64, width=64, seed=2), synth.SynthJob(tmp_path / "d"))
    tags = coco.load_dataset(tmp_path / "d" / "labels.json")
    out = demo_freemask(tmp_path / "d" / "images", tmp_path / "work", tags)
    assert [im["file_name"] for im in out.images] == [im["file_name"] for im in tags.images]
    assert out.annotations and {a["image_id"] for a in out.annotations} <= {im["id"] for im in out.images}
    coco.validate_dataset(out.to_json(), "demo")


def test_resume_finishes_an_interrupted_run(tmp_path) -> None:
    import json
    import shutil

    from wsis_cli.runtime.errors import BadInputError
    from wsis_cli.stages.freemask.masks import FreeMaskParams
    from wsis_cli.stages.freemask.stage import FreeMaskJob, FreeMaskSettings, run
    from wsis_cli.stages.synth import stage as synth

    synth.run(synth.SynthSettings(num_images=4, height=48, width=48, seed=3), synth.SynthJob(tmp_path / "d"))
    imgs = tmp_path / "imgs"
    shutil.copytree(tmp_path / "d" / "images", imgs)
    settings = FreeMaskSettings(backbone=BackboneSpec(arch="resnet18", weights="none", stage=2, short_side=0),
                                params=FreeMaskParams(min_score=None))

    def job(out, resume: bool = False) -> FreeMaskJob:
        return FreeMaskJob(inputs=str(tmp_path / "d" / "gt.json"), images=str(imgs), out=str(out),
                           embeddings=str(out) + ".h5", device="cpu", batch_size=1, resume=resume)

    fresh = run(settings, job(tmp_path / "fresh.json"))
    (imgs / "000003.png").unlink()  # the run dies on image 3, after finishing 1 and 2
    out = tmp_path / "o.json"
    with pytest.raises(BadInputError):
        run(settings, job(out))
    partial = tmp_path / "o.json.partial"
    assert not out.exists() and len(partial.read_text().splitlines()) == 3  # header + 2 images
    shutil.copy(tmp_path / "d" / "images" / "000003.png", imgs / "000003.png")
    resumed = run(settings, job(out, resume=True))
    written = json.loads(out.read_text())["annotations"]
    assert (resumed.images, resumed.masks) == (fresh.images, fresh.masks) == (4, len(written))
    assert resumed.output == str(out) and resumed.embeddings == str(out) + ".h5" and resumed.run_dir is None
    assert json.loads(out.read_text())["annotations"] == json.loads((tmp_path / "fresh.json").read_text())["annotations"]
    assert not partial.exists() and (tmp_path / "o.json.h5").exists()


def test_settings_name_the_backbones_the_registry_builds():
    # settings.py checks names without torch: its list must be the one the registry builds from
    from wsis_cli.models.backbones import RESNETS, VITS
    from wsis_cli.stages.freemask.settings import TORCHVISION_ARCHS, check_arch_name

    assert TORCHVISION_ARCHS == RESNETS + VITS
    assert check_arch_name("timm:anything") == "timm:anything"  # existence is the stage's check
    with pytest.raises(ValueError, match="unknown backbone"):
        check_arch_name("resnet17")
