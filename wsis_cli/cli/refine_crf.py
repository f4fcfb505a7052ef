"""``wsis refine-crf``: sharpen instance masks with a mean-field CRF on the image."""

from __future__ import annotations

from typing import Annotated

import typer

from wsis_cli.cli.common import BatchSize, Device, ImagesDir, Quiet, Shard, Verbose, setup

_CRF = "CRF model"


def refine_crf(
    pseudo: Annotated[str, typer.Argument(metavar="PSEUDO", help="COCO dataset with masks (- for stdin).")],
    images: ImagesDir = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Output COCO dataset (- for stdout).")] = "-",
    margin: Annotated[float, typer.Option(help="Crop = box grown by this fraction of its side.", min=0)] = 0.25,
    min_margin: Annotated[int, typer.Option(help="...and by at least this many pixels.", min=0)] = 8,
    confidence: Annotated[float, typer.Option(help="Trust in the input mask per pixel, in (0.5, 1).",
                                              rich_help_panel=_CRF)] = 0.7,
    threshold: Annotated[float, typer.Option(help="Refined probability that becomes mask.",
                                             rich_help_panel=_CRF)] = 0.5,
    kernel_size: Annotated[int, typer.Option(help="Window side (odd).", rich_help_panel=_CRF)] = 5,
    dilation: Annotated[int, typer.Option(help="Spacing of window taps, pixels.", rich_help_panel=_CRF)] = 2,
    iterations: Annotated[int, typer.Option(help="Mean-field iterations.", rich_help_panel=_CRF)] = 10,
    w_appearance: Annotated[float, typer.Option(help="Weight of the colour (bilateral) kernel.",
                                                rich_help_panel=_CRF)] = 1.0,
    theta_alpha: Annotated[float, typer.Option(help="Spatial std of the bilateral kernel, pixels.",
                                               rich_help_panel=_CRF)] = 6.0,
    theta_beta: Annotated[float, typer.Option(help="Colour std of the bilateral kernel, on 0-1 intensities.",
                                              rich_help_panel=_CRF)] = 0.06,
    w_smooth: Annotated[float, typer.Option(help="Weight of the smoothness kernel.", rich_help_panel=_CRF)] = 0.5,
    theta_gamma: Annotated[float, typer.Option(help="Spatial std of the smoothness kernel, pixels.",
                                               rich_help_panel=_CRF)] = 1.5,
    device: Device = "auto",
    batch_size: BatchSize = 16,
    shard: Shard = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from OUT.partial.")] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Refine each instance mask with a two-label CRF on its box grown by a margin; keep ids, classes, scores.

    Reads a COCO dataset with masks (from irnet, mal-label, freemask, ...) and writes the same dataset with
    sharper masks and recomputed boxes and areas. Shards with --shard (or the SLURM/torchrun env) and
    resumes with --resume.
    """
    setup(quiet, verbose)
    if out != "-":
        from wsis_cli.io.atomic import check_output_path

        check_output_path(out)
    elif resume:
        raise typer.BadParameter("--resume needs a file output, not stdout", param_hint="--resume")
    from wsis_cli.runtime.progress import make_progress
    from wsis_cli.stages.refine_crf import RefineJob, RefineSettings, run

    try:
        settings = RefineSettings(
            margin=margin, min_margin=min_margin, confidence=confidence, threshold=threshold,
            kernel_size=kernel_size, dilation=dilation, iterations=iterations, w_appearance=w_appearance,
            theta_alpha=theta_alpha, theta_beta=theta_beta, w_smooth=w_smooth, theta_gamma=theta_gamma,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    job = RefineJob(pseudo=pseudo, images=str(images) if images else None, out=out, device=device,
                    batch_size=batch_size, shard=shard, resume=resume)
    run(settings, job, make_progress(quiet))


