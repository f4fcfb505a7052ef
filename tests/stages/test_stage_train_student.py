"""train-student on tiny synthetic sets: the loss falls, predictions score in eval, resume is exact,
SIGUSR1 saves a resumable checkpoint, self-training rounds run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from wsis_cli.io.coco import Dataset, load_dataset, load_predictions
from wsis_cli.runtime.distributed import DistContext
from wsis_cli.runtime.errors import BadInputError, Terminated
from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate
from wsis_cli.stages.student import stage
from wsis_cli.stages.student.data import StudentData, collect_instances
from wsis_cli.stages.synth import stage as synth

SIDE = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset]:
    root = tmp_path_factory.mktemp("student") / "synth"
    synth.run(synth.SynthSettings(num_images=4, height=SIDE, width=SIDE, classes=2, min_instances=1,
                                  max_instances=3, seed=3), synth.SynthJob(root))
    return root, load_dataset(root / "gt.json")


def tiny(**kw: object) -> stage.StudentSettings:
    base = dict(arch="resnet18-fpn", weights="none", min_size=SIDE, max_size=SIDE, epochs=3, batch_size=1,
                lr=0.02, warmup_iters=2, rois_per_image=32, mask_head_channels=32, max_dets=20, workers=0, seed=0)
    base.update(kw)
    return stage.StudentSettings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(data: tuple[Path, Dataset], tmp_path_factory: pytest.TempPathFactory) -> stage.TrainResult:
    root, ds = data
    run = tmp_path_factory.mktemp("runs") / "a"
    return stage.train_rounds(tiny(), ds, str(root / "images"), run, DistContext())


def test_loss_falls_and_predictions_load_in_eval(data: tuple[Path, Dataset], trained: stage.TrainResult) -> None:
    root, ds = data
    losses = [h["loss"] for h in trained.history]
    assert len(losses) == 3 and all(h["step"] == 4 * (i + 1) for i, h in enumerate(trained.history))
    assert losses[-1] < 0.8 * losses[0], losses
    run = trained.model_path.parent
    assert {"run.json", "last.pt", "metrics.jsonl", "model.pt"} <= {p.name for p in run.iterdir()}
    preds = stage.predict(trained.model, trained.category_ids, ds.images, str(root / "images"), ds.source,
                          torch.device("cpu"), score_threshold=0.05, max_dets=20)
    assert preds and all(p["category_id"] in (1, 2) and len(p["bbox"]) == 4 for p in preds)
    path = run / "preds.json"
    path.write_text(__import__("json").dumps(preds))
    loaded = load_predictions(path, ds)
    report = evaluate(ds, loaded, EvalSettings(max_dets=20))
    assert report.mask_ap is not None and report.mask_ap >= 0.0


def test_sigusr1_saves_and_resume_reproduces_the_uninterrupted_run(
        data: tuple[Path, Dataset], trained: stage.TrainResult, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    root, ds = data
    real = stage.set_loss_step

    def signal_at_step_5(model: torch.nn.Module, step: int) -> None:
        if step == 5:  # the second batch of epoch 2
            os.kill(os.getpid(), signal.SIGUSR1)
        real(model, step)

    monkeypatch.setattr(stage, "set_loss_step", signal_at_step_5)
    with pytest.raises(Terminated):
        stage.train_rounds(tiny(), ds, str(root / "images"), tmp_path / "b", DistContext())
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (1, 2, 6)
    assert ckpt["optimizer"]["state"], "momentum buffers are saved"
    assert not (tmp_path / "b" / "model.pt").exists()
    monkeypatch.setattr(stage, "set_loss_step", real)
    resumed = stage.train_rounds(tiny(), ds, str(root / "images"), tmp_path / "b", DistContext(), resume=True)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in trained.history]
    a, b = trained.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-4), k
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in trained.history], rel=1e-4)


def test_a_used_run_folder_needs_resume(data: tuple[Path, Dataset], trained: stage.TrainResult) -> None:
    root, ds = data
    from wsis_cli.runtime.errors import UsageError

    with pytest.raises(UsageError, match="--resume"):
        stage.train_rounds(tiny(), ds, str(root / "images"), trained.model_path.parent, DistContext())


def test_data_skips_unusable_annotations_and_keeps_empty_images(data: tuple[Path, Dataset],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    root, ds = data
    empty = {"size": [SIDE, SIDE], "counts": [SIDE * SIDE]}  # uncompressed RLE: all background
    anns = [dict(a) for a in ds.annotations if a["image_id"] != 2]
    anns[0] = {**anns[0], "segmentation": empty}
    anns.append({**anns[1], "id": 999, "iscrowd": 1})
    edited = ds.with_annotations(anns)
    inst = collect_instances(edited, ds.category_ids)
    assert inst[2] == [] and sum(map(len, inst.values())) == len(anns) - 2
    assert "empty mask" in caplog.text and "crowd" in caplog.text
    sample = StudentData(ds.images, inst, str(root / "images"), ds.source, with_lab=True)
    image, target = sample[1]  # image id 2: no annotation
    assert image.shape == (3, SIDE, SIDE) and target["boxes"].shape == (0, 4) and target["masks"].shape[0] == 0
    assert target["lab"].shape == (3, SIDE, SIDE) and 0 <= float(target["lab"][0].min()) <= 100
    boxes_only = ds.with_annotations([{k: v for k, v in a.items() if k != "segmentation"} for a in ds.annotations])
    with pytest.raises(BadInputError, match="has no segmentation"):
        collect_instances(boxes_only, ds.category_ids)
    assert sum(map(len, collect_instances(boxes_only, ds.category_ids, box_masks=True).values())) == len(ds.annotations)


def test_projection_loss_and_two_rounds_of_self_training(data: tuple[Path, Dataset], tmp_path: Path) -> None:
    root, ds = data
    result = stage.train_rounds(tiny(mask_loss="projection", epochs=2, rounds=2, round_score=0.0, round_max=5,
                            pairwise_warmup=2), ds, str(root / "images"), tmp_path / "st", DistContext())
    keys = set(result.history[0])
    assert {"loss_mask_max", "loss_mask_avg", "loss_mask_pairwise"} <= keys and "loss_mask" not in keys
    assert [h["round"] for h in result.history] == [1, 1, 2, 2]
    assert result.history[-1]["loss_mask_pairwise"] > 0
    labels2 = load_dataset(tmp_path / "st" / "round-2" / "labels.json")
    per_image: dict[int, int] = {}
    for a in labels2.annotations:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    assert labels2.annotations and max(per_image.values()) <= 5
    assert (tmp_path / "st" / "model.pt").exists()


def test_self_training_labels_drop_image_wide_masks() -> None:
    """FreeSOLO's filter: a kept prediction whose box spans >= 0.95 of the image width is not a label."""
    import numpy as np

    from wsis_cli.io import rle
    from wsis_cli.stages.student.predict import results_to_dataset_annotations

    wide = np.zeros((20, 40), np.uint8)
    wide[5:10, 0:39] = 1  # 39 of 40 columns
    small = np.zeros((20, 40), np.uint8)
    small[2:8, 3:12] = 1
    results = [{"image_id": 1, "category_id": 1, "segmentation": rle.encode(m), "score": s}
               for m, s in ((wide, 0.9), (small, 0.8))]
    kept = results_to_dataset_annotations(results, score_threshold=0.5, max_per_image=5, image_widths={1: 40},
                                          max_width=0.95)
    assert [a["score"] for a in kept] == [0.8] and kept[0]["bbox"] == [3, 2, 9, 6]
    assert len(results_to_dataset_annotations(results, score_threshold=0.5, max_per_image=5)) == 2
