"""``wsis cam``: train a multi-label classifier on image-level labels and write class attention maps."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.common import (
    BatchSize,
    CheckpointOpt,
    Device,
    Epochs,
    ImagesDir,
    LearningRate,
    NoAmp,
    Quiet,
    Resume,
    RunOpt,
    Seed,
    Shard,
    Verbose,
    Weights,
    Workers,
    check_backbone,
    setup,
)
from wsis_cli.models.backbone_names import DEFAULT_ARCH, DEFAULT_WEIGHTS

_TRAIN = "Training (ignored with --checkpoint)"
_MAPS = "Maps"


class Method(str, Enum):
    cam = "cam"
    gradcam = "gradcam"


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=flag) from None
    if not values:
        raise typer.BadParameter("expected at least one number", param_hint=flag)
    return values


def _pair(text: str | None, flag: str) -> tuple[int, int] | None:
    if text is None or text.strip().lower() == "auto":
        return None
    values = _floats(text, flag)
    if len(values) != 2 or any(v != int(v) for v in values):
        raise typer.BadParameter(f"expected two integers LO,HI, got {text!r}", param_hint=flag)
    return int(values[0]), int(values[1])


def cam(
    labels: Annotated[str, typer.Argument(metavar="LABELS", help="COCO file with image-level labels (any annotation "
                                          "gives its image its category), - for stdin.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output HDF5 file of CAMs (cams.h5).")],
    images: ImagesDir = None,
    run: RunOpt = None,
    checkpoint: CheckpointOpt = None,
    resume: Resume = False,
    arch: Annotated[str, typer.Option(help="Classifier backbone: resnet18..152 or timm:NAME (a CNN).",
                                      rich_help_panel=_TRAIN)] = DEFAULT_ARCH,
    weights: Weights = DEFAULT_WEIGHTS,
    last_stride: Annotated[int, typer.Option(min=1, max=2, help="Stride of the last stage: 1 = output stride 16 "
                                             "(IRNet), 2 = 32.", rich_help_panel=_TRAIN)] = 1,
    train_early: Annotated[bool, typer.Option("--train-early", help="Also train stages 1-2 (upstream freezes them; "
                                              "helps from scratch).", rich_help_panel=_TRAIN)] = False,
    epochs: Epochs = 5,
    batch_size: BatchSize = 16,
    lr: LearningRate = 0.002,
    head_lr_mult: Annotated[float, typer.Option(min=0.0, help="Classifier LR = lr x this.",
                                                rich_help_panel=_TRAIN)] = 10.0,
    momentum: Annotated[float, typer.Option(min=0.0, max=0.999, help="SGD momentum.", rich_help_panel=_TRAIN)] = 0.9,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="SGD weight decay.", rich_help_panel=_TRAIN)] = 1e-4,
    resize_long: Annotated[str, typer.Option(metavar="LO,HI|auto", help="Random long-side resize range, pixels "
                                             "(auto: 0.64-1.28 x the median long side).",
                                             rich_help_panel=_TRAIN)] = "auto",
    crop: Annotated[int, typer.Option(min=0, help="Random crop side, pixels (0: the median long side rounded up "
                                      "to 16).", rich_help_panel=_TRAIN)] = 0,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of the images held out "
                                                "(deterministically) to report validation mAP.",
                                                rich_help_panel=_TRAIN)] = 0.1,
    val: Annotated[Path | None, typer.Option("--val", metavar="LABELS", dir_okay=False,
                                             help="Separate validation labels (instead of --val-fraction).",
                                             rich_help_panel=_TRAIN)] = None,
    no_amp: NoAmp = False,
    method: Annotated[Method, typer.Option(help="cam, or gradcam (Grad-CAM of the same classifier).",
                                           rich_help_panel=_MAPS)] = Method.cam,
    scales: Annotated[str, typer.Option(metavar="S,S,...", help="Inference scales (each also mirrored).",
                                        rich_help_panel=_MAPS)] = "1.0,0.5,1.5,2.0",
    no_flip: Annotated[bool, typer.Option("--no-flip", help="Skip the mirrored pass.", rich_help_panel=_MAPS)] = False,
    gradcam_stage: Annotated[int, typer.Option(min=3, max=4, help="Grad-CAM target stage (4 = last).",
                                               rich_help_panel=_MAPS)] = 4,
    device: Device = "auto",
    workers: Workers = 0,
    seed: Seed = 0,
    shard: Shard = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Class attention maps from image-level labels: train a multi-label CAM classifier (or load
    --checkpoint) and write per image the maps of its labelled classes, stride 4, each scaled to [0, 1].

    Output: HDF5 for `wsis irnet`; /images/<id>/cams is float16 K x ceil(H/4) x ceil(W/4) with its category ids.
    Run folder (--run, default OUT.cam-run): run.json, last.pt per epoch, metrics.jsonl (val mAP), model.pt.
    Under torchrun: data-parallel training, then each rank writes its shard (join them with `wsis merge`).
    """
    setup(quiet, verbose)
    # Parse the list options before the stage (torch, torchvision) loads: a typo fails in a blink.
    scale_values = _floats(scales, "--scales")
    resize_range = _pair(resize_long, "--resize-long")
    from wsis_cli.io.atomic import check_output_path

    check_output_path(out)
    from wsis_cli.stages.cam.settings import CamJob, CamSettings, TrainSettings

    try:
        train = TrainSettings(arch=arch, weights=weights, last_stride=last_stride, train_early=train_early,
                              epochs=epochs, batch_size=batch_size, lr=lr, head_lr_mult=head_lr_mult,
                              momentum=momentum, weight_decay=weight_decay,
                              resize_long=resize_range, crop=crop or None,
                              val_fraction=val_fraction, val=str(val) if val else None, seed=seed, amp=not no_amp,
                              workers=workers)
        settings = CamSettings(method=method.value, scales=scale_values, flip=not no_flip,
                               gradcam_stage=gradcam_stage, train=train)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if checkpoint is None:
        check_backbone(arch)
    job = CamJob(labels=labels, images=str(images) if images else None, out=str(out),
                 run_dir=str(run) if run else None, checkpoint=str(checkpoint) if checkpoint else None,
                 resume=resume, device=device, batch_size=batch_size, shard=shard)
    # the network stack loads only once every flag is known to be valid
    from wsis_cli.runtime.progress import make_progress
    from wsis_cli.stages.cam.stage import run as run_stage

    run_stage(settings, job, make_progress(quiet))
