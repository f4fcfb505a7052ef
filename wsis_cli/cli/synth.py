"""``wsis synth``: write a synthetic instance-segmentation dataset (images, masks, boxes, image labels)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.common import Quiet, Seed, Verbose, setup

_SIZE = re.compile(r"^\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` (or ``"N"`` for a square) -> ``(height, width)``; raises ``typer.BadParameter``."""
    m = _SIZE.match(text)
    if not m:
        raise typer.BadParameter(f"expected HxW such as 256x256 or 64x96, got {text!r}", param_hint="--size")
    h = int(m.group(1))
    return h, int(m.group(2)) if m.group(2) else h


def synth(
    out_dir: Annotated[
        Path,
        typer.Argument(metavar="OUT_DIR", help="Folder to create (absent or empty unless --force).",
                       show_default=False),
    ],
    num_images: Annotated[int, typer.Option("--num-images", "-n", min=1, help="Number of images.")] = 100,
    size: Annotated[
        str | None,
        typer.Option("--size", metavar="HxW", help="Image size, height x width (default 256x256)."),
    ] = None,
    height: Annotated[int | None, typer.Option("--height", help="Image height in pixels.")] = None,
    width: Annotated[int | None, typer.Option("--width", help="Image width in pixels.")] = None,
    classes: Annotated[int, typer.Option("--classes", "-k", min=1, max=8,
                                         help="Number of classes: disc, box, triangle, star, ring, cross, "
                                              "hexagon, blob (the first K).")] = 3,
    min_instances: Annotated[int, typer.Option("--min-instances", min=0, help="Fewest instances per image.")] = 2,
    max_instances: Annotated[int, typer.Option("--max-instances", min=0, max=64,
                                               help="Most instances per image.")] = 6,
    seed: Seed = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT_DIR if it exists and is not empty.")] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Write a deterministic synthetic dataset to train and test weakly supervised segmentation on.

    Touching and occluding instances of several shape classes on textured backgrounds. The same settings and seed give byte-identical files, and image i depends only on (seed, i).

    Writes OUT_DIR/images/*.png, gt.json (instance masks), boxes.json (boxes only) and labels.json (image-level labels); pass [bold]--images OUT_DIR/images[/bold] with them to the other subcommands.
    """
    setup(quiet, verbose)
    from wsis_cli.stages.synth.settings import SynthJob, SynthSettings

    h, w = SynthSettings.height, SynthSettings.width  # the fields' defaults
    if size is not None:
        if height is not None or width is not None:
            raise typer.BadParameter("give either --size or --height/--width, not both", param_hint="--size")
        h, w = parse_size(size)
    h = height if height is not None else h
    w = width if width is not None else w
    if min_instances > max_instances:
        raise typer.BadParameter(f"--min-instances {min_instances} is above --max-instances {max_instances}",
                                 param_hint="--min-instances")

    from wsis_cli.io.atomic import check_output_dir

    try:
        settings = SynthSettings(num_images=num_images, height=h, width=w, classes=classes,
                                 min_instances=min_instances, max_instances=max_instances, seed=seed, force=force)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    check_output_dir(out_dir, force=force)
    from wsis_cli.stages.synth.stage import run  # OpenCV and NumPy load once the flags are valid

    run(settings, SynthJob(out_dir))
