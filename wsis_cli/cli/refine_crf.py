"""``wsis refine-crf``: sharpen instance masks with a mean-field CRF on the image."""

from __future__ import annotations

from typing import Annotated

import typer

from wsis_cli.cli.common import BatchSize, Device, ImagesDir, Quiet, Shard, Verbose, setup

_CRF = "CRF model"


def refine_crf(
    pseudo: Annotated[str, typer.Argument(metavar="PSEUDO", help="COCO dataset with masks (- for stdin), or an "
                                          "HDF5 of class score maps such as cams.h5.")],
    images: ImagesDir = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Output COCO dataset (- for stdout); HDF5 for map input.")
                   ] = "-",
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
    guard: Annotated[str, typer.Option(help="contrast: keep the input mask unless the refined mask's boundary lies "
                                       "on --guard-gain times stronger image edges and overlaps the input by "
                                       "--guard-iou; none: "
                                       "always take the CRF's mask. Masks only.")] = "contrast",
    guard_iou: Annotated[float, typer.Option(help="Least IoU between input and refined mask the guard accepts.",
                                             min=0, max=1)] = 0.5,
    guard_gain: Annotated[float, typer.Option(help="How much stronger the refined mask's boundary edges must be "
                                              "than the input's.", min=0)] = 1.1,
    guard_slope: Annotated[float, typer.Option(help="Extra edge strength asked per unit of mask the change "
                                               "moves: the guard needs --guard-gain + slope × (1 − IoU).",
                                               min=0)] = 1.0,
    bg_score: Annotated[float, typer.Option(help="Score maps: constant background score in front of the classes.",
                                            rich_help_panel="Score maps (HDF5 input)")] = 0.15,
    dataset: Annotated[str | None, typer.Option(help="Score maps: COCO file naming the images, when the store "
                                                "does not.", rich_help_panel="Score maps (HDF5 input)")] = None,
    device: Device = "auto",
    batch_size: BatchSize = 16,
    shard: Shard = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from OUT.partial.")] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Refine each instance mask with a two-label CRF on its box grown by a margin; keep ids, classes, scores.

    Reads a COCO dataset with masks (from irnet, mal-label, freemask, ...) and writes the same dataset with
    sharper masks and recomputed boxes and areas. Given an HDF5 of class score maps (cams.h5), refines each
    image's maps as one (K+1)-label CRF and writes refined maps plus a full-resolution label map to an HDF5
    output. Shards with --shard (or the SLURM/torchrun env) and resumes with --resume.
    """
    setup(quiet, verbose)
    if pseudo != "-":
        from wsis_cli.io.h5 import is_h5_file

        if is_h5_file(pseudo):
            _refine_maps(pseudo, images, out, dataset, bg_score, device, shard, resume, quiet, dict(
                kernel_size=kernel_size, dilation=dilation, iterations=iterations, w_appearance=w_appearance,
                theta_alpha=theta_alpha, theta_beta=theta_beta, w_smooth=w_smooth, theta_gamma=theta_gamma))
            return
    if out != "-":
        from wsis_cli.io.atomic import check_output_path

        check_output_path(out)
    elif resume:
        raise typer.BadParameter("--resume needs a file output, not stdout", param_hint="--resume")
    from wsis_cli.stages.refine.settings import RefineJob, RefineSettings

    try:
        settings = RefineSettings(
            margin=margin, min_margin=min_margin, confidence=confidence, threshold=threshold,
            kernel_size=kernel_size, dilation=dilation, iterations=iterations, w_appearance=w_appearance,
            theta_alpha=theta_alpha, theta_beta=theta_beta, w_smooth=w_smooth, theta_gamma=theta_gamma,
            guard=guard, guard_iou=guard_iou, guard_gain=guard_gain, guard_slope=guard_slope,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    job = RefineJob(pseudo=pseudo, images=str(images) if images else None, out=out, device=device,
                    batch_size=batch_size, shard=shard, resume=resume)
    # the network stack loads only once every flag is known to be valid
    from wsis_cli.runtime.progress import make_progress
    from wsis_cli.stages.refine.stage import run

    run(settings, job, make_progress(quiet))




def _refine_maps(maps: str, images, out: str, dataset: str | None, bg_score: float, device: str,
                 shard: str | None, resume: bool, quiet: bool, crf: dict) -> None:
    if out == "-":
        raise typer.BadParameter("score maps are written to HDF5, which needs a file: give -o OUT.h5",
                                 param_hint="--out")
    if not 0.0 < bg_score < 1.0:
        raise typer.BadParameter("must be in (0, 1)", param_hint="--bg-score")
    from wsis_cli.stages.refine.settings import MapJob, MapSettings

    try:
        settings = MapSettings(**crf, bg_score=bg_score)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    job = MapJob(maps=maps, images=str(images) if images else None, out=out, dataset=dataset, device=device,
                 shard=shard, resume=resume)
    from wsis_cli.runtime.progress import make_progress
    from wsis_cli.stages.refine.maps import run

    run(settings, job, make_progress(quiet))
