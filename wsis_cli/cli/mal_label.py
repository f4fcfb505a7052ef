"""``wsis mal-label``: turn box annotations into instance masks with MAL (trains on the boxes themselves)."""

from __future__ import annotations

from typing import Annotated

import typer

from wsis_cli.cli.common import (
    BatchSize,
    CheckpointOpt,
    Device,
    ImagesDir,
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
from wsis_cli.models.backbone_names import DEFAULT_ARCH, DEFAULT_WEIGHTS, TIMM_PREFIX

_MODEL = "Model"
_TRAIN = "Training"
_LOSS = "Losses"


def _encoder_names(incomplete: str) -> list[str]:
    from wsis_cli.stages.mal.settings import ENCODERS  # light: no torch

    return [e for e in ENCODERS if e.startswith(incomplete)]


def mal_label(
    boxes: Annotated[str, typer.Argument(metavar="BOXES", help="COCO dataset with boxes (- for stdin).")],
    images: ImagesDir = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Output COCO dataset with masks (- for stdout).")] = "-",
    run: RunOpt = None,
    checkpoint: CheckpointOpt = None,
    resume: Resume = False,
    encoder: Annotated[str, typer.Option(help="Image encoder: timm:NAME (a CNN; default the packaged ImageNet "
                                         "EfficientNet-Lite0), a torchvision ViT (vit_b_16 = MAL's, vit_b_32, ...), "
                                         "vit_tiny / vit_small (DeiT shapes) or a ResNet (resnet18..152).",
                                         autocompletion=_encoder_names, rich_help_panel=_MODEL)] = DEFAULT_ARCH,
    weights: Weights = DEFAULT_WEIGHTS,
    encoder_depth: Annotated[int | None, typer.Option(min=0, help="Keep only the first N ViT blocks or CNN "
                                                      "stages (0: all). Default: all of a ViT; of a CNN the "
                                                      "deepest stage leaving 12+ cells a side on the crop "
                                                      "(stage 1, stride 4, at 48²).",
                                                      rich_help_panel=_MODEL)] = None,
    patch: Annotated[int, typer.Option(min=0, help="ViT patch size override (0: the encoder's own); a finer "
                                       "token grid for small crops, its embedding resampled.",
                                       rich_help_panel=_MODEL)] = 0,
    conv_stem: Annotated[bool, typer.Option("--conv-stem/--no-conv-stem", help="ViT: MAL's convolutional stem "
                                            "(stride-2 conv3x3 + GroupNorm + GELU layers, trained from scratch) "
                                            "instead of the patch embedding.", rich_help_panel=_MODEL)] = False,
    crop_size: Annotated[int | None, typer.Option(min=32, help="Side of the square RoI crop fed to the encoder "
                                                  "(a multiple of its stride). Default: 96, or 48 where 96 would "
                                                  "magnify the median training box more than 4x (side < 24 px).",
                                                  rich_help_panel=_MODEL)] = None,
    decoder_dim: Annotated[int, typer.Option(min=1, help="Channels of the attention decoder.",
                                             rich_help_panel=_MODEL)] = 32,
    scale_buckets: Annotated[bool, typer.Option("--scale-buckets/--no-scale-buckets", help="Decode small/medium/large boxes at "
                                                "crop/32, /16, /8 (as MAL at 512² crops; turn off for small "
                                                "crops, where these grids get too coarse).",
                                                rich_help_panel=_MODEL)] = False,
    outside: Annotated[str, typer.Option(help="Crop parts outside the image: wrap (as MAL), reflect or replicate.",
                                         rich_help_panel=_MODEL)] = "wrap",
    threshold: Annotated[float, typer.Option(help="Foreground probability that becomes mask.",
                                             rich_help_panel=_MODEL)] = 0.4,
    exclusive: Annotated[bool, typer.Option("--exclusive/--no-exclusive", help="Give each pixel shared by "
                                            "boxes of one image to one box: a box nested in another gets what "
                                            "its mask claims, elsewhere the box most confident there wins "
                                            "(visible instances do not overlap); --no-exclusive keeps overlaps.",
                                            rich_help_panel=_MODEL)] = True,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Label each box with the mean map of its crop "
                                       "and of the crop mirrored (twice the labelling time).",
                                       rich_help_panel=_MODEL)] = True,
    predict_with: Annotated[str, typer.Option(help="Label with the student (as MAL) or the EMA teacher.",
                                              rich_help_panel=_MODEL)] = "student",
    epochs: Annotated[int | None, typer.Option("--epochs", min=0, help="Training epochs. Default: enough for "
                                               "~600 steps (1 to 24 epochs), whatever the number of boxes.",
                                               rich_help_panel=_TRAIN)] = None,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="Base learning rate "
                                             "(MAL's: 1.5e-6 x global batch).",
                                             rich_help_panel=_TRAIN)] = 1e-3,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="AdamW weight decay.", rich_help_panel=_TRAIN)] = 5e-4,
    warmup_epochs: Annotated[float, typer.Option(min=0.0, help="Linear LR warm-up, in epochs (then cosine).",
                                                 rich_help_panel=_TRAIN)] = 0.5,
    final_lr: Annotated[float, typer.Option(min=0.0, help="Final LR as a fraction of --lr.",
                                            rich_help_panel=_TRAIN)] = 0.2,
    ema_momentum: Annotated[float, typer.Option(min=0.0, max=1.0, help="EMA teacher momentum.",
                                                rich_help_panel=_TRAIN)] = 0.95,
    max_expand: Annotated[float, typer.Option(min=0.0, help="Upper bound of the random box expansion in training.",
                                              rich_help_panel=_TRAIN)] = 1.2,
    min_train_area: Annotated[float, typer.Option(min=0.0, help="Boxes smaller than this (pixels²) are labelled "
                                                  "but not trained on.", rich_help_panel=_TRAIN)] = 64.0,
    mil_weight: Annotated[float, typer.Option(min=0.0, help="MIL loss weight.", rich_help_panel=_LOSS)] = 4.0,
    crf_weight: Annotated[float, typer.Option(min=0.0, help="CRF loss weight.", rich_help_panel=_LOSS)] = 4.0,
    mil_warmup: Annotated[int, typer.Option(min=0, help="MIL loss warm-up steps.", rich_help_panel=_LOSS)] = 20,
    crf_warmup: Annotated[int, typer.Option(min=0, help="CRF loss warm-up steps.", rich_help_panel=_LOSS)] = 60,
    crf_iterations: Annotated[int, typer.Option(min=0, help="Mean-field iterations of the CRF loss.",
                                                rich_help_panel=_LOSS)] = 10,
    crf_zeta: Annotated[float, typer.Option(min=0.0, help="Colour std of the CRF kernel (normalised image units).",
                                            rich_help_panel=_LOSS)] = 0.1,
    crf_variant: Annotated[str, typer.Option(help="CRF of the CRF loss's target: mal (MAL's MeanField: 3x3, "
                                             "normalised image, --crf-zeta) or dense (the kernel's default "
                                             "dense CRF on the [0, 1] image).", rich_help_panel=_LOSS)] = "dense",
    device: Device = "auto",
    batch_size: BatchSize = 4,
    workers: Workers = 0,
    shard: Shard = None,
    seed: Seed = 0,
    no_amp: NoAmp = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Label every box with an instance mask: train MAL on the boxes (or load --checkpoint), then predict.

    Each box is cut out at 1.3 x its size, encoded (by default: the stride-4 levels of the packaged
    ImageNet EfficientNet-Lite0 on 48² crops; MAL's own ViT-B on 512² crops is a set of flags away, see
    the README) and decoded by MAL's attention decoder; training uses only the boxes (MIL loss on row/column projections, CRF loss against an EMA
    teacher). Writes the input dataset with segmentation (RLE), area (the mask's) and score on every
    annotation; ids, boxes, categories and scores are kept. The run folder (--run, default beside the
    output) holds settings, per-epoch checkpoints and model.pt for --checkpoint. Runs data-parallel under
    torchrun; label shards with --shard and a --checkpoint.
    """
    setup(quiet, verbose)
    # every flag is checked before the network stack (torch) is imported: a bad option fails at once
    from wsis_cli.stages.mal.settings import ENCODERS, MalJob, MalSettings

    if encoder not in ENCODERS and not (encoder.startswith(TIMM_PREFIX) and len(encoder) > len(TIMM_PREFIX)):
        raise typer.BadParameter(f"unknown encoder {encoder!r}; choose timm:NAME (a CNN) or one of "
                                 f"{', '.join(ENCODERS)}", param_hint="--encoder")
    try:
        settings = MalSettings(
            encoder=encoder, weights=weights, encoder_depth=encoder_depth, patch=patch, conv_stem=conv_stem,
            crop_size=crop_size, decoder_dim=decoder_dim, scale_buckets=scale_buckets, epochs=epochs,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
            final_lr=final_lr, mil_weight=mil_weight, crf_weight=crf_weight, mil_warmup=mil_warmup,
            crf_warmup=crf_warmup, ema_momentum=ema_momentum, crf_iterations=crf_iterations, crf_zeta=crf_zeta,
            crf_variant=crf_variant, max_expand=max_expand, outside=outside, min_train_area=min_train_area,
            threshold=threshold, exclusive=exclusive, flip=flip, predict_with=predict_with, seed=seed, amp=not no_amp,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if out != "-":
        from wsis_cli.io.atomic import check_output_path

        check_output_path(out)
    elif resume and checkpoint is not None:
        raise typer.BadParameter("--resume of the labelling needs a file output, not stdout", param_hint="--resume")
    from wsis_cli.stages.mal.inputs import load_boxes

    dataset = load_boxes(boxes)  # a bad box fails here, before torch loads
    if checkpoint is None and encoder.startswith(TIMM_PREFIX):
        check_backbone(encoder, "--encoder")  # a timm name that does not exist: close names, exit 2
    job = MalJob(boxes=boxes, images=str(images) if images else None, out=out, run=str(run) if run else None,
                 checkpoint=str(checkpoint) if checkpoint else None, resume=resume, device=device,
                 workers=workers, shard=shard, boxes_data=dataset)
    from wsis_cli.runtime.progress import make_progress
    from wsis_cli.stages.mal.stage import run as run_stage

    run_stage(settings, job, make_progress(quiet))
