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
    num_images: Annotated[int | None, typer.Option("--num-images", "-n", min=4, show_default=False,
                                                   help="Synthetic images [default: 24; 64 with --full].")] = None,
    size: Annotated[str | None, typer.Option("--size", metavar="HxW", show_default=False,
                                             help="Image size, height x width [default: 128x128; 192x192 with "
                                             "--full].")] = None,
    classes: Annotated[int, typer.Option("--classes", "-k", min=1, max=8, help="Synthetic classes.")] = 3,
    methods: Annotated[str, typer.Option("--methods", metavar="KEY,...",
                                         help="Only these paths: box-filled, mal, irnet, freemask (default: all).")] = "",
    refine: Annotated[bool, typer.Option("--refine/--no-refine", help="Also score each path after refine-crf.")] = True,
    students: Annotated[bool, typer.Option("--students/--no-students",
                                           help="Train a student (Mask R-CNN) on each path's labels and on the ground "
                                           "truth, and report retention of that upper bound.")] = True,
    student_epochs: Annotated[int | None, typer.Option("--student-epochs", min=1, show_default=False,
                                                       help="Epochs of each student [default: 16; 48 with --full]."
                                                       )] = None,
    student_loss: Annotated[str, typer.Option("--student-loss", metavar="standard|projection",
                                              help="The students' mask loss.")] = "standard",
    full: Annotated[bool, typer.Option("--full", help="More and larger images, students trained 3x longer "
                                       "(tens of minutes on a CPU).")] = False,
    seed: Seed = 0,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Make a synthetic dataset, label it with every path wsis has, and score each against the ground truth.

    Paths: boxes → box-filled floor and mal-label; image tags → cam → irnet; nothing → freemask; each also
    after refine-crf. Then a Mask R-CNN student is trained on each path's labels and on the ground truth
    (the upper bound; --no-students skips them). Prints one table on stderr: mask AP, AP50, AP75, box AP,
    mean instance IoU and each student's retention of the upper bound. With [bold]--out DIR[/bold] the data, every stage's output and report.json stay.
    """
    setup(quiet, verbose)
    from wsis_cli.cli.synth import parse_size
    from wsis_cli.stages.demo import FULL_IMAGES, FULL_SIZE

    if size is not None:
        h, w = parse_size(size)
    else:
        h, w = FULL_SIZE if full else (128, 128)
    if num_images is None:
        num_images = FULL_IMAGES if full else 24
    if student_loss not in ("standard", "projection"):
        raise typer.BadParameter("expected standard or projection", param_hint="--student-loss")

    from wsis_cli.cli.tables import render_comparison
    from wsis_cli.io.atomic import work_dir
    from wsis_cli.stages.demo import DemoSettings, run

    keys = tuple(k.strip() for k in methods.split(",") if k.strip())
    from wsis_cli.stages.demo import METHODS

    unknown = sorted(set(keys) - {m.key for m in METHODS})
    if unknown:
        raise typer.BadParameter(f"unknown {unknown}; choose from {', '.join(m.key for m in METHODS)}",
                                 param_hint="--methods")
    settings = DemoSettings(num_images=num_images, height=h, width=w, classes=classes, seed=seed, refine=refine,
                            students=students, student_epochs=student_epochs,
                            student_mask_loss=student_loss, methods=keys, full=full)
    with work_dir(out) as folder:
        rows = run(settings, folder)
        render_comparison([(r.method, r.report) for r in rows],
                          title=f"wsis demo: {num_images} synthetic {h}x{w} images, {classes} classes")
        if out is not None:
            from wsis_cli.runtime.log import get_logger

            get_logger("demo").info("demo: kept every file in %s (report.json has all the numbers)", folder)
