"""refine-crf on HDF5 score maps: CAM-like blurry maps become sharper semantic labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsis_cli.io import coco, rle
from wsis_cli.io.h5 import H5Reader, H5Writer
from wsis_cli.runtime.errors import BadInputError
from wsis_cli.stages.refine.maps import refine_maps, run
from wsis_cli.stages.refine.settings import MapJob, MapSettings, RefineSettings
from wsis_cli.stages.synth import stage as synth


def _semantic(gt: coco.Dataset, image: dict) -> np.ndarray:
    sem = np.zeros((image["height"], image["width"]), np.int32)
    for ann in gt.annotations_by_image()[image["id"]]:
        sem[rle.decode(ann["segmentation"]) > 0] = ann["category_id"]
    return sem


def _blurry_cams(gt: coco.Dataset, image: dict, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """CAM-like maps: each present class's GT union, blurred wide (spilling over boundaries), at stride 4."""
    sem = _semantic(gt, image)
    cats = sorted({a["category_id"] for a in gt.annotations_by_image()[image["id"]]})
    h, w = sem.shape
    maps = []
    for c in cats:
        m = torch.from_numpy((sem == c).astype(np.float32))[None, None]
        m = F.avg_pool2d(m, 15, stride=1, padding=7)  # spills ~7 px past every edge
        m = F.interpolate(m, size=((h - 1) // 4 + 1, (w - 1) // 4 + 1), mode="bilinear", align_corners=False)[0, 0]
        m = (m + 0.05 * torch.from_numpy(rng.random(m.shape, dtype=np.float32))).clamp(0, None)
        maps.append((m / m.max().clamp_min(1e-6)).numpy())
    return np.stack(maps) if maps else np.zeros((0, (h - 1) // 4 + 1, (w - 1) // 4 + 1), np.float32), cats


def _miou(pred: np.ndarray, sem: np.ndarray) -> float:
    ious = []
    for c in np.unique(sem):
        inter = ((pred == c) & (sem == c)).sum()
        union = ((pred == c) | (sem == c)).sum()
        ious.append(inter / union)
    return float(np.mean(ious))


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    synth.run(synth.SynthSettings(num_images=6, height=128, width=128, seed=5), synth.SynthJob(root / "data"))
    gt = coco.load_dataset(root / "data" / "gt.json")
    rng = np.random.default_rng(0)
    with H5Writer(root / "cams.h5", "cam", {"method": "test"}, {}) as w:
        for im in gt.images:
            cams, cats = _blurry_cams(gt, im, rng)
            w.put(im["id"], {"cams": cams}, attrs={"height": im["height"], "width": im["width"],
                                                    "file_name": im["file_name"]},
                  dataset_attrs={"cams": {"stride": 4, "category_ids": cats,
                                          "image_size": [im["height"], im["width"]]}},
                  dtypes={"cams": np.float16})
    return root, gt


def test_crf_sharpens_cam_labels(maps, tmp_path):
    root, gt = maps
    out = tmp_path / "refined.h5"
    n = run(MapSettings(bg_score=0.15), MapJob(str(root / "cams.h5"), str(root / "data" / "images"), str(out),
                                         device="cpu"))
    assert n.images == len(gt.images)
    before, after = [], []
    with H5Reader(root / "cams.h5") as src, H5Reader(out, expect_stage="refine-crf") as ref:
        for im in gt.images:
            sem = _semantic(gt, im)
            cams = src.get(im["id"], dtype=np.float32)["cams"]
            cats = np.asarray([0, *src.dataset_attrs(im["id"], "cams")["category_ids"]])
            up = F.interpolate(torch.from_numpy(cams)[None], size=sem.shape, mode="bilinear",
                               align_corners=False)[0].numpy()
            plain = cats[np.concatenate([np.full((1, *sem.shape), 0.15), up]).argmax(0)]
            got = ref.get(im["id"])
            assert got["cams"].shape == cams.shape and got["cams"].dtype == np.float16
            assert ref.dataset_attrs(im["id"], "cams")["stride"] == 4
            before.append(_miou(plain, sem))
            after.append(_miou(got["labels"], sem))
    print(f"semantic mIoU: thresholded CAMs {np.mean(before):.3f}, CRF-refined {np.mean(after):.3f}")
    assert np.mean(after) > np.mean(before) + 0.05, (np.mean(before), np.mean(after))


def test_image_without_classes_is_all_background():
    probs, labels = refine_maps(np.zeros((10, 12, 3), np.uint8), np.zeros((0, 3, 3), np.float32),
                                RefineSettings(), 0.15, torch.device("cpu"))
    assert probs.shape == (1, 10, 12) and int(labels.max()) == 0


def test_store_without_file_names_needs_dataset(tmp_path, maps):
    root, gt = maps
    with H5Writer(tmp_path / "bare.h5", "cam", {}, {}) as w:
        w.put(gt.images[0]["id"], {"cams": np.zeros((1, 32, 32), np.float32)},
              dataset_attrs={"cams": {"stride": 4, "category_ids": [1]}})
    with pytest.raises(BadInputError, match="--dataset"):
        run(MapSettings(bg_score=0.15), MapJob(str(tmp_path / "bare.h5"), None, str(tmp_path / "o.h5"), device="cpu"))
    n = run(MapSettings(bg_score=0.15), MapJob(str(tmp_path / "bare.h5"), str(root / "data" / "images"),
                                           str(tmp_path / "o.h5"), dataset=str(root / "data" / "gt.json"),
                                           device="cpu"))
    assert n.images == 1
