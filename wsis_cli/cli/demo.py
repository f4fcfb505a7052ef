"""``wsis demo``: run the product end to end on an embedded synthetic default and print the table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.common import Quiet, Seed, Verbose, setup


def demo(
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", file_okay=False,
                     help="Keep every intermediate file in this folder (default: a temporary folder, removed)."),
    ] = None,
    num_images: Annotated[int, typer.Option("--num-images", "-n", min=4, help="Synthetic images.")] = 40,
    size: Annotated[str, typer.Option("--size", metavar="HxW", help="Image size, height x width.")] = "256x256",
    classes: Annotated[int, typer.Option("--classes", "-k", min=1, max=8, help="Synthetic classes.")] = 3,
    seed: Seed = 0,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Make a synthetic dataset, label it with every path wsis has, and score each against the ground truth.

    Prints one table on stderr: a row per labelling method with mask AP, AP50, AP75, box AP and mean
    instance mask IoU. With [bold]--out DIR[/bold] the data, every method's labels and report.json stay.
    """
    setup(quiet, verbose)
    from wsis_cli.cli.synth import parse_size

    h, w = parse_size(size)

    from wsis_cli.cli.tables import render_comparison
    from wsis_cli.io.atomic import work_dir
    from wsis_cli.stages.demo import DemoSettings, run

    settings = DemoSettings(num_images=num_images, height=h, width=w, classes=classes, seed=seed)
    with work_dir(out) as folder:
        rows = run(settings, folder)
        render_comparison([(r.method, r.report) for r in rows],
                          title=f"wsis demo: {num_images} synthetic {h}x{w} images, {classes} classes")
        if out is not None:
            from wsis_cli.runtime.log import get_logger

            get_logger("demo").info("demo: kept every file in %s (report.json has all the numbers)", folder)
