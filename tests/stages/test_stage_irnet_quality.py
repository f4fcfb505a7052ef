"""The quality IRNet must reach: CAM → IRNet beats thresholded CAMs + connected components (IRNet's "CAM"
row) in mask AP50 on synthetic images where instances of one class touch and occlude each other.

The CAMs are made from the ground truth the way real CAMs look (peaked inside each object, blurred over
its border, blind to the border between two touching objects of a class: see ``irnet_fakes``), so the
connected-components baseline merges touching instances while IRNet's displacement field can split them.
The baseline gets its best threshold on a 0.05 grid (picked on the ground truth). The fake CAMs peak
inside each object, so at its best threshold (0.55) the baseline splits many touching pairs too.

The set: 16 images of 128² (``synth`` seed 1, 2 classes, 2-5 instances) in which two instances of one
class touch, the first 16 such of a pool of 40 (``irnet_fakes.touching_subset``): 69% of their instances
touch one of their class. In the plain first 16 images of the pool only 44% do and 6 of 16 images have no
such pair, which leaves the baseline little to get wrong. Figures on both sets (AP50):

    set                                  baseline (best thr.)   IRNet, oracle maps   upstream inference, oracle maps
    touching (these tests)               0.585 (0.55)           0.665                0.370
    plain first 16 (until session 5)     0.728 (0.55)           0.777                0.577

Until session 5 the baseline's thresholds were 0.1-0.5 only (best 0.5: 0.697 on the plain set), which
understated it; at 0.55 it rises to 0.728, and the oracle test's margin on the plain set fell to 0.049.

Two tests decouple the pipeline:

* ``..._with_oracle_maps`` (CI, ~20-40 s): the instance synthesis fed the maps IRNet's branches are
  trained to predict, from the ground truth (``irnet_fakes.oracle_maps``: displacement to each centroid,
  a one-cell class boundary). It checks inference alone. Upstream's inference loses: the paper's
  centroid candidates swallow every object under ~10 px radius into the background, and its walk merges
  touching same-class instances.
* ``test_irnet_beats_cam_connected_components`` (opt-in, xfail): the whole stage, branches trained on a
  random frozen ResNet-18 (no network in tests, so no pretrained weights) at ``scale=2``. Still below
  the bar: the learnt maps are far from the oracle ones (see GAP and the figures below).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from irnet_fakes import instances_of, oracle_maps, touching_subset, write_fake_cams

from wsis_cli.io import coco
from wsis_cli.stages import synth
from wsis_cli.stages.baselines import cam_components
from wsis_cli.stages.evaluate import EvalSettings, evaluate
from wsis_cli.stages.irnet import IRNetJob, IRNetSettings, run, to_annotations
from wsis_cli.stages.irnet_instances import synthesize

MARGIN = 0.05  # AP50 points IRNet must add over the best baseline

# The whole stage (16 images of 128², batch 8, random frozen ResNet-18, no network in tests), AP50:
#
#   recipe                                             touching set (this test)   plain first 16
#   scale 1 (the paper's), 80 steps                    -                          0.25-0.27
#   scale 2, 160 steps (80 epochs), pairs radius 10    0.313                      0.551
#     + --train-radius 7                               0.362                      -
#     + --basin-threshold 0.5                          0.396                      0.558
#     + --field-cam-threshold 0.25 (the default now)   0.469 (this test)          0.572
#   the same with --seed 1: paper's pairs 0.331 (0.344 with the field threshold), radius 7 + basins 0.333
#   (0.333): the training options' gain is within the seed spread; the field threshold never lowered AP50
#   (+0.073, +0.014, +0.013, 0 over the four trained models).  320 steps (seed 0): 0.428, no better.
#   baseline, best threshold on a 0.05 grid            0.585 (0.55)               0.728 (0.55)
#   our inference on oracle maps                       0.665                      0.777
#
# Diagnostic loop on cached features (scale 2, 160 steps; figures of the learnt maps mixed with oracle ones):
# * plain set, radius 10: learnt 0.536; learnt boundary + oracle displacement 0.648; oracle boundary +
#   learnt displacement 0.600. Radius 7: 0.537 / 0.752 / 0.569; radius 5: 0.533 / 0.715 / 0.598. A smaller
#   radius makes the boundary nearly as good as the oracle's; the displacement field is the gap.
# * touching set, radius 7: 0.362 / 0.597 / 0.412; + basins 0.5: 0.372 / 0.597 / 0.428.
# * why the field fails (plain set, radius 7): 28 of 57 instances share their cluster with another
#   instance (9 with oracle maps), 12 are mostly unassigned (1). IRNet's pairs are class-level, so the
#   loss itself teaches touching same-class instances one centroid; --basin-threshold removes those pairs
#   where the CAM has two peaks, which helps a little. Background cells drift (their field is small noise,
#   followed for 300 steps) and form spurious sinks on the image border: the field is now zeroed where
#   every CAM is below --field-cam-threshold (0.25; 0.2: 0.410, 0.3: 0.458 on the touching set).
# * tried, no better: a backbone pre-trained without labels on the same 16 images (``freemask
#   --pretrain``'s region contrast, ResNet-18 at 256 px, 14 epochs, 79 s of one CPU): lower displacement
#   error (2.14 vs 2.60 cells) but AP50 0.496 vs 0.537 (radius 7) and 0.370 vs 0.491 (radius 10, 80
#   steps); layer3-4 trainable (lr 0.01, BN frozen), radius 10, 80 steps: 0.427 vs 0.491; following the
#   field only until a centroid candidate is reached: 0.524 vs 0.537; scale 4 at 40 steps (0.369, ~8x the
#   cost per step of scale 2), AdamW 1e-3 for 300 steps at scale 1 (0.336), three dilated 3x3 context
#   convolutions in the displacement branch (0.484), displacement lr 0.1 (0.512).
GAP = ("IRNet does not yet beat CAM + connected components with heads learnt in 160 CPU steps on a random "
       "backbone: AP50 0.47 vs 0.585 on the touching set (0.665 with oracle maps)")


def _data(tmp_path: Path, touching: bool = True) -> tuple[coco.Dataset, dict]:
    """16 synthetic 128² images (2 classes, 2-5 instances) and their fake CAMs; with ``touching`` (the
    default) only images where same-class instances touch, from a pool of 40 (see the module docstring)."""
    synth.run(synth.SynthSettings(num_images=40 if touching else 16, height=128, width=128, classes=2,
                                  min_instances=2, max_instances=5, seed=1), tmp_path / "data")
    if touching:
        touching_subset(tmp_path / "data" / "gt.json", 16)
    maps = write_fake_cams(tmp_path / "data" / "gt.json", tmp_path / "cams.h5")
    return coco.load_dataset(tmp_path / "data" / "gt.json"), maps


def _ap50(gt: coco.Dataset, annotations: list[dict]) -> float:
    return float(evaluate(gt, annotations, EvalSettings(iou_type="segm")).coco["segm"].stats["AP50"] or 0.0)


THRESHOLDS = [round(0.05 * k, 2) for k in range(1, 20)]  # 0.05 ... 0.95: a coarser grid misses the best one


def _baseline(gt: coco.Dataset, maps: dict) -> tuple[float, float]:
    """The baseline's best AP50 over ``THRESHOLDS`` (chosen on the ground truth) and that threshold."""
    return max((_ap50(gt, cam_components(gt.images, maps, gt.categories, threshold=t).annotations), t)
               for t in THRESHOLDS)


def test_irnet_inference_beats_cam_components_with_oracle_maps(tmp_path: Path) -> None:
    gt, maps = _data(tmp_path)
    oracle = {im["id"]: oracle_maps(im["height"], im["width"], instances_of(gt, im)) for im in gt.images}

    def labelled(**kw: object) -> float:
        anns = []
        for im in gt.images:
            cams, cats = maps[im["id"]]
            disp, edge = oracle[im["id"]]
            dets = synthesize(cams, torch.from_numpy(edge), disp, im["height"], im["width"], **kw)
            anns += to_annotations(im["id"], dets, cats, 1e-5)
        return _ap50(gt, anns)

    baseline, threshold = _baseline(gt, maps)
    ours = labelled()
    upstream = labelled(sink_divergence=math.inf, separate_instances=False, field_cam_threshold=0.0, peak_split=0.0)
    print(f"mask AP50 with oracle maps: IRNet inference {ours:.3f} (upstream's {upstream:.3f}), "
          f"CAM + connected components {baseline:.3f} (best threshold {threshold})")
    assert ours >= baseline + MARGIN
    assert ours >= upstream + MARGIN


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("WSIS_IRNET_QUALITY") != "1",
                    reason="~3-5 min on 2 idle CPU cores, still xfail: set WSIS_IRNET_QUALITY=1 to run it")
@pytest.mark.xfail(strict=False, reason=GAP)
def test_irnet_beats_cam_connected_components(tmp_path: Path) -> None:
    gt, maps = _data(tmp_path)
    baseline, threshold = _baseline(gt, maps)
    settings = IRNetSettings(weights="none", arch="resnet18", scale=2, epochs=80, batch_size=8, amp=False,
                             train_radius=7, basin_threshold=0.5)
    res = run(settings, IRNetJob(cams=str(tmp_path / "cams.h5"), out=str(tmp_path / "pseudo.json"),
                                 images=str(tmp_path / "data" / "images"), device="cpu"))
    irnet = _ap50(gt, res.dataset.annotations)
    print(f"mask AP50: IRNet {irnet:.3f}, CAM + connected components {baseline:.3f} (best threshold {threshold})")
    assert irnet >= baseline + MARGIN
