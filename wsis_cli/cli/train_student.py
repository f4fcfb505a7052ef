"""``wsis train-student``: train a Mask R-CNN student on pseudo-labels, or predict with a trained one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.common import (
    BatchSize,
    CheckpointOpt,
    Device,
    Epochs,
    ImagesDir,
    NoAmp,
    Quiet,
    Resume,
    Seed,
    Verbose,
    Weights,
    Workers,
    setup,
)
from wsis_cli.models.backbone_names import DEFAULT_ARCH, DEFAULT_WEIGHTS

_MODEL = "Model"
_OPT = "Optimisation"
_PRED = "Prediction"
_SELF = "Self-training"


def train_student(
    labels: Annotated[str, typer.Argument(
        metavar="LABELS", help="Training: a COCO dataset with masks (pseudo-labels or ground truth). With "
        "--checkpoint: the images to predict on, as a COCO dataset or a folder of images.")],
    images: ImagesDir = None,
    out: Annotated[str, typer.Option(
        "--out", "-o", help="Training: the run folder (run.json, last.pt, metrics.jsonl, model.pt). With "
        "--checkpoint: the COCO results file (- for stdout).")] = ...,  # type: ignore[assignment]
    checkpoint: CheckpointOpt = None,
    arch: Annotated[str, typer.Option(help="timm:NAME (a CNN under an FPN), resnet50-fpn, resnet18-fpn or "
                                      "mobilenet-v3-fpn.", rich_help_panel=_MODEL)] = DEFAULT_ARCH,
    weights: Weights = DEFAULT_WEIGHTS,
    init_weights: Annotated[Path | None, typer.Option(
        "--init-weights", metavar="PATH", dir_okay=False, rich_help_panel=_MODEL,
        help="Start from the weights of a train-student model.pt (weights only; --resume continues a run).")] = None,
    mask_loss: Annotated[str, typer.Option(
        help="standard (per-pixel) or projection (FreeSOLO's projection Dice + colour-affinity losses for coarse "
        "masks; box-only annotations then train on their box).", rich_help_panel=_MODEL)] = "standard",
    min_size: Annotated[int, typer.Option(help="Short side images are resized to.", min=16,
                                          rich_help_panel=_MODEL)] = 800,
    max_size: Annotated[int, typer.Option(help="Long side limit after resizing.", min=16,
                                          rich_help_panel=_MODEL)] = 1333,
    rois_per_image: Annotated[int, typer.Option(help="RoIs sampled per training image (fewer: faster on CPU).",
                                                min=4, rich_help_panel=_MODEL)] = 512,
    mask_head_channels: Annotated[int, typer.Option(help="Width of the 4-conv mask head (torchvision: 256).", min=8,
                                                    rich_help_panel=_MODEL)] = 256,
    group_norm: Annotated[bool, typer.Option(
        "--group-norm", help="GroupNorm in the backbone (from scratch), FPN and mask head instead of BatchNorm: "
        "trains from scratch with batches of a few images.", rich_help_panel=_MODEL)] = False,
    fpn_channels: Annotated[int, typer.Option(help="FPN width (torchvision: 256; ResNet backbones only).", min=8,
                                              rich_help_panel=_MODEL)] = 256,
    box_head_dim: Annotated[int, typer.Option(help="Width of the box head's MLP (torchvision: 1024).", min=8,
                                              rich_help_panel=_MODEL)] = 1024,
    proposals: Annotated[int, typer.Option(help="RPN proposals kept per image at inference (twice as many in "
                                           "training; torchvision: 1000).", min=1, rich_help_panel=_MODEL)] = 1000,
    epochs: Epochs = 12,
    batch_size: BatchSize = 4,
    accumulate: Annotated[int, typer.Option(help="Micro-batches per optimizer step (gradient accumulation).",
                                            min=1, rich_help_panel=_OPT)] = 1,
    optimizer: Annotated[str, typer.Option(help="sgd (momentum 0.9) or adamw.", rich_help_panel=_OPT)] = "sgd",
    lr: Annotated[float | None, typer.Option(help="Base learning rate [default: 0.01 sgd, 1e-4 adamw].", min=0.0,
                                             rich_help_panel=_OPT)] = None,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.", min=0.0, rich_help_panel=_OPT)] = 1e-4,
    warmup_iters: Annotated[int, typer.Option(help="Linear LR warm-up steps (then cosine decay).", min=0,
                                              rich_help_panel=_OPT)] = 100,
    clip_grad: Annotated[float, typer.Option(help="Max gradient norm (0: off).", min=0.0,
                                             rich_help_panel=_OPT)] = 10.0,
    pairwise_warmup: Annotated[int, typer.Option(help="Projection loss: warm-up steps of the pairwise term.",
                                                 min=0, rich_help_panel=_OPT)] = 1000,
    no_flip: Annotated[bool, typer.Option("--no-flip", help="No random horizontal flips.",
                                          rich_help_panel=_OPT)] = False,
    val: Annotated[Path | None, typer.Option(
        metavar="VAL.json", dir_okay=False, help="Ground truth scored after every epoch (images under --images).")
    ] = None,
    score_threshold: Annotated[float, typer.Option(help="Keep detections scoring at least this.", min=0.0, max=1.0,
                                                   rich_help_panel=_PRED)] = 0.05,
    max_dets: Annotated[int, typer.Option(help="At most this many detections per image.", min=1,
                                          rich_help_panel=_PRED)] = 100,
    output_format: Annotated[str, typer.Option(
        "--format", help="With --checkpoint: results (a COCO results list) or dataset (images + annotations, "
        "trainable as labels).", rich_help_panel=_PRED)] = "results",
    rounds: Annotated[int, typer.Option(help="Training rounds; each round after the first trains on the previous "
                                        "round's confident predictions.", min=1, rich_help_panel=_SELF)] = 1,
    round_score: Annotated[float, typer.Option(help="Self-training: keep predictions scoring at least this.",
                                               min=0.0, max=1.0, rich_help_panel=_SELF)] = 0.5,
    round_max: Annotated[int, typer.Option(help="Self-training: at most this many masks per image.", min=1,
                                           rich_help_panel=_SELF)] = 20,
    round_max_width: Annotated[float, typer.Option(
        help="Self-training: drop masks whose box spans at least this fraction of the image width (FreeSOLO: "
        "0.95; 1 keeps all).", min=0.01, max=1.0, rich_help_panel=_SELF)] = 0.95,
    resume: Resume = False,
    seed: Seed = 0,
    device: Device = "auto",
    workers: Workers = 2,
    no_amp: NoAmp = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Train torchvision's Mask R-CNN on LABELS, or (with --checkpoint) predict COCO results with one.

    Training writes the run folder -o RUN: run.json (resolved settings), last.pt (checkpoint after every
    epoch), metrics.jsonl (losses and, with --val, AP per epoch) and model.pt. Runs data-parallel under
    torchrun or srun. On SIGTERM or SIGUSR1 it saves a checkpoint and exits with 143: rerun with --resume.
    """
    setup(quiet, verbose)
    if checkpoint is not None:
        from wsis_cli.stages.student.settings import PredictJob

        try:
            job = PredictJob(source=labels, images=str(images) if images is not None else None, out=out,
                             checkpoint=str(checkpoint), score_threshold=score_threshold, max_dets=max_dets,
                             output_format=output_format, batch_size=batch_size, device=device, amp=not no_amp)
        except ValueError:
            raise typer.BadParameter("expected results or dataset", param_hint="--format") from None
        if out != "-":
            from wsis_cli.io.atomic import check_output_path

            check_output_path(out)
        from wsis_cli.runtime.progress import make_progress
        from wsis_cli.stages.student.predict import run_predict

        run_predict(job, make_progress(quiet))
        return
    if output_format not in ("results", "dataset"):
        raise typer.BadParameter("expected results or dataset", param_hint="--format")
    if out == "-":
        raise typer.BadParameter("training writes a run folder, not stdout", param_hint="--out")
    if Path(out).exists() and not Path(out).is_dir():
        from wsis_cli.runtime.errors import BadInputError

        raise BadInputError(out, None, "exists and is not a folder: training writes its run folder at -o "
                            "(with --checkpoint, -o is the results file)")
    if labels == "-":
        raise typer.BadParameter("training reads its labels from a file (- is only for --checkpoint input)",
                                 param_hint="LABELS")
    from wsis_cli.stages.student.settings import StudentSettings

    try:
        settings = StudentSettings(
            arch=arch, weights=weights, init_weights=str(init_weights) if init_weights else None, mask_loss=mask_loss,
            min_size=min_size, max_size=max_size, epochs=epochs, batch_size=batch_size, accumulate=accumulate,
            optimizer=optimizer, lr=lr, weight_decay=weight_decay, warmup_iters=warmup_iters, clip_grad=clip_grad,
            rois_per_image=rois_per_image, mask_head_channels=mask_head_channels, group_norm=group_norm,
            fpn_channels=fpn_channels, box_head_dim=box_head_dim, proposals=proposals,
            pairwise_warmup=pairwise_warmup, flip=not no_flip,
            val=str(val) if val else None, score_threshold=score_threshold, max_dets=max_dets, rounds=rounds,
            round_score=round_score, round_max=round_max, round_max_width=round_max_width, seed=seed, amp=not no_amp, workers=workers)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    from wsis_cli.stages.student.settings import StudentJob
    from wsis_cli.stages.student.stage import run as run_stage

    run_stage(settings, StudentJob(labels=labels, images=str(images) if images is not None else None, run=out,
                                   resume=resume, device=device))
