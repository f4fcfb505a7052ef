"""``wsis irnet``: CAMs + image-level labels → instance pseudo-labels (IRNet)."""

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
    RunOpt,
    Seed,
    Shard,
    Verbose,
    Workers,
    setup,
)
from wsis_cli.models.backbone_names import DEFAULT_ARCH

_MINE = "Relation mining"
_TRAIN = "Training"
_INFER = "Inference"


def irnet(
    cams: Annotated[Path, typer.Argument(metavar="CAMS_H5", help="cams.h5 written by wsis cam.", dir_okay=False)],
    images: ImagesDir = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Output COCO dataset of instances (- for stdout).")] = "-",
    labels: Annotated[Path | None, typer.Option(
        "--labels", dir_okay=False, help="COCO file with the image records. Default: the one cams.h5 records.")] = None,
    semantic: Annotated[Path | None, typer.Option(
        "--semantic", file_okay=False, help="Also write semantic label maps (PNG, category ids) to this folder.")] = None,
    weights: Annotated[str, typer.Option(
        "--weights", metavar="cam|NAME|PATH|none", rich_help_panel=_TRAIN,
        help="Frozen backbone: cam (the CAM classifier's, via cams.h5), a torchvision weights name, a "
        "checkpoint file or none.")] = "cam",
    arch: Annotated[str, typer.Option(help="Backbone when --weights is not cam: resnet18..152 or timm:NAME.",
                                      rich_help_panel=_TRAIN)] = DEFAULT_ARCH,
    scale: Annotated[int, typer.Option(
        help="Upsample images by this (1, 2 or 4) before the backbone, so the branches work at stride 4/scale: "
        "for small objects (a few stride-4 cells across); costs about scale² the compute.",
        rich_help_panel=_TRAIN)] = 1,
    fg_threshold: Annotated[float, typer.Option(help="Background score against which CAMs are confident "
                                                "foreground.", rich_help_panel=_MINE)] = 0.30,
    bg_threshold: Annotated[float, typer.Option(help="Background score against which CAMs are confident "
                                                "background.", rich_help_panel=_MINE)] = 0.05,
    crf_iterations: Annotated[int, typer.Option(min=0, help="CRF iterations.", rich_help_panel=_MINE)] = 10,
    basin_threshold: Annotated[float, typer.Option(
        help="Split each class's confident foreground at its CAM peaks (parts above this score) and leave pairs "
        "across two peaks out of the displacement loss, so touching instances of one class are not taught to "
        "share a centroid; 0: off, the paper's class-level pairs.", rich_help_panel=_MINE)] = 0.0,
    epochs: Epochs = 3,
    batch_size: BatchSize = 32,
    crop: Annotated[int, typer.Option(min=16, help="Training crop side, pixels.", rich_help_panel=_TRAIN)] = 512,
    edge_lr: Annotated[float, typer.Option(min=0.0, help="Boundary branch learning rate.",
                                           rich_help_panel=_TRAIN)] = 0.1,
    dp_lr: Annotated[float, typer.Option(min=0.0, help="Displacement branch learning rate.",
                                         rich_help_panel=_TRAIN)] = 1.0,
    train_radius: Annotated[float, typer.Option(
        help="Radius of the training pairs, in cells of the branches' grid (stride 4/scale); the paper's 10. "
        "Smaller suits small objects.", rich_help_panel=_TRAIN)] = 10.0,
    beta: Annotated[float, typer.Option(help="Affinity exponent of the random walk.", rich_help_panel=_INFER)] = 10.0,
    walk_steps: Annotated[int, typer.Option(min=0, help="Random-walk steps.", rich_help_panel=_INFER)] = 256,
    ins_bg_threshold: Annotated[float, typer.Option(help="Background score of instance synthesis.",
                                                    rich_help_panel=_INFER)] = 0.25,
    sem_bg_threshold: Annotated[float, typer.Option(help="Background score of --semantic maps.",
                                                    rich_help_panel=_INFER)] = 0.25,
    centroid_threshold: Annotated[float, typer.Option(help="|displacement| below which a pixel is a centroid "
                                                      "candidate (stride-4 pixels).", rich_help_panel=_INFER)] = 2.5,
    centroid_divergence: Annotated[float, typer.Option(
        help="A centroid candidate must also be a sink of the displacement field (divergence below this), so "
        "objects smaller than --centroid-threshold stay apart from the background; inf: the paper's rule.",
        rich_help_panel=_INFER)] = -0.5,
    separate_instances: Annotated[bool, typer.Option(
        help="The random walk does not cross between two instances of the displacement field (touching "
        "instances of one class stay apart); --no-separate-instances: upstream's walk.",
        rich_help_panel=_INFER)] = True,
    field_cam_threshold: Annotated[float, typer.Option(
        help="Follow the displacement field only where some CAM reaches this (elsewhere its small noise, "
        "followed for 300 steps, carries background into object centroids); 0: upstream.",
        rich_help_panel=_INFER)] = 0.25,
    peak_split: Annotated[float, typer.Option(
        help="Split an instance whose CAM has several peaks (parts above this fraction of its max), and group "
        "the CAM cells the displacement field leaves without a centroid by their peaks; 0: upstream.",
        rich_help_panel=_INFER)] = 0.8,
    min_score: Annotated[float, typer.Option(help="Drop instances scoring less (fragments under 1% of the image "
                                             "score 0).", rich_help_panel=_INFER)] = 1e-5,
    run: RunOpt = None,
    checkpoint: CheckpointOpt = None,
    resume: Resume = False,
    device: Device = "auto",
    workers: Workers = 0,
    seed: Seed = 0,
    shard: Shard = None,
    no_amp: NoAmp = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Train IRNet's boundary and displacement branches on relations mined from CAMs, then label instances.

    Reads cams.h5 (from wsis cam) and the image records of its labels file; mines confident foreground and
    background with a CRF, trains on a frozen backbone (by default the CAM classifier's), and turns
    boundaries, displacements and CAMs into instance masks by a random walk. Writes a COCO dataset with
    RLE masks, boxes, areas and scores. --checkpoint skips training; --resume continues a run and the
    output; --shard splits the images (train once, then predict shards with --checkpoint).
    """
    setup(quiet, verbose)
    if out != "-":
        from wsis_cli.io.atomic import check_output_path

        check_output_path(out)
    elif resume:
        raise typer.BadParameter("--resume needs a file output, not stdout", param_hint="--resume")
    if semantic is not None and not semantic.is_dir():
        raise typer.BadParameter(f"{semantic} is not an existing folder", param_hint="--semantic")
    from wsis_cli.stages.irnet.settings import IRNetJob, IRNetSettings

    try:
        settings = IRNetSettings(
            weights=weights, arch=arch, scale=scale, fg_threshold=fg_threshold, bg_threshold=bg_threshold,
            crf_iterations=crf_iterations, epochs=epochs, batch_size=batch_size, crop=crop, edge_lr=edge_lr,
            dp_lr=dp_lr, train_radius=train_radius, basin_threshold=basin_threshold, seed=seed, beta=beta,
            walk_steps=walk_steps, ins_bg_threshold=ins_bg_threshold,
            sem_bg_threshold=sem_bg_threshold, centroid_threshold=centroid_threshold,
            centroid_divergence=centroid_divergence, separate_instances=separate_instances, min_score=min_score,
            field_cam_threshold=field_cam_threshold, peak_split=peak_split,
            amp=not no_amp,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    job = IRNetJob(cams=str(cams), out=out, images=str(images) if images else None,
                   labels=str(labels) if labels else None, run=str(run) if run else None,
                   checkpoint=str(checkpoint) if checkpoint else None, resume=resume,
                   semantic=str(semantic) if semantic else None, device=device, workers=workers, shard=shard)
    # the network stack loads only once every flag is known to be valid
    from wsis_cli.runtime.progress import make_progress
    from wsis_cli.stages.irnet.stage import run as run_stage

    run_stage(settings, job, make_progress(quiet))
