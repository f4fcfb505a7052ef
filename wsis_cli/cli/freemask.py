"""``wsis freemask``: coarse class-agnostic masks with no labels (Free Mask), or a few (``--labeled``)."""

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
    LearningRate,
    NoAmp,
    Quiet,
    Resume,
    RunOpt,
    Shard,
    Verbose,
    Weights,
    Workers,
    setup,
)
from wsis_cli.models.backbone_names import ARCH_HELP, DEFAULT_ARCH, DEFAULT_WEIGHTS

_FM = "Free Mask"
_FILTERS = "Filters (FreeSOLO's; 0 disables)"
_FEW = "Few labels (--labeled)"
_PRE = "Self-supervised pre-training (--pretrain)"


def _scales(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in value.split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {value!r}", param_hint="--scales") from None


def freemask(
    inputs: Annotated[str, typer.Argument(metavar="IMAGES|COCO",
                                          help="A folder of images, or a COCO file listing images (with --images).")],
    images: ImagesDir = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Output COCO dataset (- for stdout).")] = "-",
    embeddings: Annotated[Path | None, typer.Option("--embeddings", help="Also write the 128-d query embeddings "
                                                    "of every mask to this HDF5 file.")] = None,
    category: Annotated[str, typer.Option("--category", help="Name of the single output category.")] = "object",
    arch: Annotated[str, typer.Option("--arch", help=f"Backbone: {ARCH_HELP}.")] = DEFAULT_ARCH,
    weights: Weights = DEFAULT_WEIGHTS,
    stage: Annotated[int, typer.Option("--stage", min=1, max=4, help="Stage whose output is used (1..4: strides "
                                       "4, 8, 16, 32).")] = 4,
    last_stride: Annotated[int, typer.Option("--last-stride", min=1, max=2,
                                             help="Stride of the last stage: 2 (C5 at 1/32, FreeSOLO) or 1 (1/16).")] = 2,
    short_side: Annotated[int, typer.Option("--short-side", min=0, help="Resize so the short side is this "
                                            "(0: keep; FreeSOLO uses 800).")] = 512,
    max_size: Annotated[int, typer.Option("--max-size", min=16, help="...and the long side at most this.")] = 1333,
    scales: Annotated[str, typer.Option("--scales", help="Query pyramid scales.", rich_help_panel=_FM)] = "1.0,0.5,0.25",
    threshold: Annotated[float, typer.Option("--threshold", help="Soft-mask threshold.", rich_help_panel=_FM)] = 0.5,
    sigma: Annotated[float, typer.Option("--sigma", help="Matrix NMS Gaussian sigma (decay exp(-sigma*iou^2)).",
                                         rich_help_panel=_FM)] = 2.0,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=999, help="Masks kept per image after NMS.",
                                       rich_help_panel=_FM)] = 20,
    split: Annotated[bool, typer.Option("--split/--no-split", help="Split each kept mask into its connected "
                                        "components, deduplicated by NMS (up to 999 per image): one query's mask "
                                        "covers every object of its kind. --no-split: FreeSOLO's masks as they are.",
                                        rich_help_panel=_FM)] = True,
    min_score: Annotated[float, typer.Option("--min-score", min=0, help="Keep masks with decayed maskness >= this.",
                                             rich_help_panel=_FILTERS)] = 0.7,
    min_center_y: Annotated[float, typer.Option("--min-center-y", min=0, help="Keep masks whose centre lies below "
                                                "this fraction of the height.", rich_help_panel=_FILTERS)] = 0.2,
    max_width: Annotated[float, typer.Option("--max-width", min=0, help="Keep masks narrower than this fraction of "
                                             "the width.", rich_help_panel=_FILTERS)] = 0.95,
    pretrain: Annotated[bool, typer.Option("--pretrain", help="First train the backbone on the input images "
                                           "themselves, without labels (dense region contrast); its model.pt in "
                                           "RUN/pretrain is reusable with --weights.", rich_help_panel=_PRE)] = False,
    pretrain_epochs: Annotated[int, typer.Option("--pretrain-epochs", min=0, help="Pre-training epochs.",
                                                 rich_help_panel=_PRE)] = 20,
    pretrain_lr: Annotated[float, typer.Option("--pretrain-lr", min=0.0, help="Pre-training AdamW learning rate.",
                                               rich_help_panel=_PRE)] = 3e-3,
    pretrain_side: Annotated[int, typer.Option("--pretrain-side", min=0, help="Short side of the images during "
                                               "pre-training (0: --short-side; half of it is 4x cheaper).",
                                               rich_help_panel=_PRE)] = 0,
    regions: Annotated[int, typer.Option("--regions", min=1, help="Colour/position clusters per image that "
                                         "pre-training contrasts.", rich_help_panel=_PRE)] = 8,
    labeled: Annotated[Path | None, typer.Option("--labeled", help="COCO dataset with masks of a few input images: "
                                                 "fine-tune the backbone on them first.", rich_help_panel=_FEW)] = None,
    epochs: Epochs = 10,
    lr: LearningRate = 0.005,
    tau: Annotated[float, typer.Option("--tau", min=0.0, help="Contrastive temperature.", rich_help_panel=_FEW)] = 0.5,
    match_iou: Annotated[float, typer.Option("--match-iou", help="IoU at which a generated mask counts as its ground "
                                             "truth's view.", rich_help_panel=_FEW)] = 0.5,
    run: RunOpt = None,
    checkpoint: CheckpointOpt = None,
    resume: Resume = False,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same output.")] = 0,
    device: Device = "auto",
    batch_size: BatchSize = 8,
    workers: Workers = 0,
    shard: Shard = None,
    no_amp: NoAmp = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Coarse class-agnostic instance masks from a self-supervised backbone (FreeSOLO's Free Mask).

    Every location of the backbone's features, at three pyramid scales, is a query; its cosine score map
    against all locations, min-max normalised, is a soft mask ranked by maskness; matrix NMS and the top-k
    keep the best. Without self-supervised weights at hand, --pretrain first trains the backbone on the input
    images themselves (no label). With --labeled, the backbone is first fine-tuned contrastively on the few labelled images
    (run folder --run, --resume, --checkpoint to reuse it). Writes a COCO dataset; --embeddings adds the
    query embeddings as HDF5.
    """
    setup(quiet, verbose)
    if out != "-":
        from wsis_cli.io.atomic import check_output_path

        check_output_path(out)
    elif resume and not (labeled or pretrain):
        raise typer.BadParameter("--resume needs a file output, not stdout", param_hint="--resume")
    if embeddings is not None:
        from wsis_cli.io.atomic import check_output_path

        check_output_path(embeddings)
    from wsis_cli.stages.freemask.settings import (
        BackboneSpec,
        FreeMaskJob,
        FreeMaskParams,
        FreeMaskSettings,
        PretrainSettings,
        TuneSettings,
    )

    try:
        settings = FreeMaskSettings(
            backbone=BackboneSpec(arch=arch, weights=weights, stage=stage, last_stride=last_stride,
                                  short_side=short_side, max_size=max_size),
            params=FreeMaskParams(scales=_scales(scales), threshold=threshold, sigma=sigma, top_k=top_k,
                                  min_score=min_score or None, min_center_y=min_center_y or None,
                                  max_width=max_width or None, split=split),
            tune=TuneSettings(epochs=epochs, lr=lr, tau=tau, match_iou=match_iou, seed=seed),
            pretrain=(PretrainSettings(epochs=pretrain_epochs, lr=pretrain_lr, regions=regions,
                                       short_side=pretrain_side, seed=seed)
                      if pretrain else None),
            category=category, seed=seed,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    job = FreeMaskJob(inputs=inputs, out=out, images=str(images) if images else None,
                      labeled=str(labeled) if labeled else None, embeddings=str(embeddings) if embeddings else None,
                      run=str(run) if run else None, checkpoint=str(checkpoint) if checkpoint else None,
                      device=device, batch_size=batch_size, workers=workers, shard=shard, resume=resume,
                      amp=not no_amp)
    # the network stack loads only once every flag is known to be valid
    from wsis_cli.runtime.progress import make_progress
    from wsis_cli.stages.freemask.stage import run as run_stage

    run_stage(settings, job, make_progress(quiet))
