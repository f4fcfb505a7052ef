"""The upper bound: a student trained on ground truth clearly beats an untrained one (slow, still in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsis_cli.io.coco import load_dataset
from wsis_cli.runtime.distributed import DistContext
from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate
from wsis_cli.stages.student import stage
from wsis_cli.stages.synth import stage as synth


@pytest.mark.slow
def test_student_trained_on_ground_truth_beats_an_untrained_one(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    synth.run(synth.SynthSettings(num_images=8, height=64, width=64, classes=1, min_instances=1, max_instances=3,
                                  seed=11), synth.SynthJob(root))
    ds = load_dataset(root / "gt.json")
    images = str(root / "images")
    # the from-scratch recipe measured for the demo (GroupNorm, 64-channel FPN, AdamW 1e-3)
    settings = stage.StudentSettings(arch="resnet18-fpn", weights="none", min_size=64, max_size=64, epochs=10,
                                     batch_size=2, optimizer="adamw", lr=1e-3, warmup_iters=5, rois_per_image=32,
                                     mask_head_channels=32, group_norm=True, fpn_channels=64, box_head_dim=256,
                                     proposals=200, max_dets=20, workers=0)
    cpu = DistContext()

    def score(result: stage.TrainResult) -> tuple[float, float, float]:
        """(mask AP, mask AP50, mean instance IoU) on the training images."""
        preds = stage.predict(result.model, result.category_ids, ds.images, images, ds.source, torch.device("cpu"),
                              score_threshold=0.05, max_dets=20)
        report = evaluate(ds, preds, EvalSettings(max_dets=20))
        segm = report.coco.get("segm")
        ap50 = (segm.stats["AP50"] or 0.0) if segm else 0.0
        return report.mask_ap or 0.0, ap50, report.mean_iou or 0.0

    untrained = score(stage.train_rounds(stage.StudentSettings(**{**settings.__dict__, "epochs": 0}), ds, images,
                                tmp_path / "untrained", cpu))
    trained_run = stage.train_rounds(settings, ds, images, tmp_path / "trained", cpu)
    trained = score(trained_run)
    losses = [h["loss"] for h in trained_run.history]
    assert losses[-1] < 0.5 * losses[0], losses
    # measured (8 images, 40 steps): untrained 0 / 0 / 0.157, trained 0.057 / 0.129 / 0.532
    print(f"\nstudent (8 images, 40 steps): untrained AP/AP50/mIoU {untrained}, trained {trained}")
    # an untrained head's mean IoU depends on the initialisation (0.003-0.17 measured): compare, do not bound it
    assert trained[2] > untrained[2] + 0.2, (trained, untrained)
    assert trained[1] > untrained[1] + 0.05 and trained[0] > untrained[0], (trained, untrained)
