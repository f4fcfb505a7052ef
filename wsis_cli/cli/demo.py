"""``wsis demo``: run the product end to end on an embedded synthetic default and print the table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.common import Quiet, Seed, Verbose, setup
from wsis_cli.stages.demo.settings import FULL_EPOCHS_FACTOR, FULL_IMAGES, FULL_SIZE, DemoSettings

# the defaults live in DemoSettings (and stages/student/demo.py's DEMO_EPOCHS); the help only shows them
_D = DemoSettings()


def demo(
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", file_okay=False,
                     help="Keep every intermediate file in this folder, and write report.html there: the table and a few "
                          "images of every row beside the ground truth (default: a temporary folder, removed)."),
    ] = None,
    num_images: Annotated[int | None, typer.Option("--num-images", "-n", min=4, show_default=False,
                                                   help=f"Synthetic images (default: {_D.num_images}; {FULL_IMAGES} with "
                                                   "--full).")] = None,
    size: Annotated[str | None, typer.Option("--size", metavar="HxW", show_default=False,
                                             help=f"Image size, height x width (default: {_D.height}x{_D.width}; "
                                             f"{FULL_SIZE[0]}x{FULL_SIZE[1]} with --full).")] = None,
    classes: Annotated[int, typer.Option("--classes", "-k", min=1, max=8, help="Synthetic classes.")] = _D.classes,
    methods: Annotated[str, typer.Option("--methods", metavar="KEY,...",
                                         help="Only these paths: box-filled, mal, irnet, freemask (default: all).")] = "",
    refine: Annotated[bool, typer.Option("--refine/--no-refine", help="Also score each path after refine-crf.")] = _D.refine,
    students: Annotated[bool, typer.Option("--students/--no-students",
                                           help="Train a student (Mask R-CNN) on each path's labels and on the ground "
                                           "truth, and report retention of that upper bound.")] = _D.students,
    student_epochs: Annotated[int | None, typer.Option("--student-epochs", min=1, show_default=False,
                                                       help="Epochs of each student (default: the demo student's; "
                                                       f"{FULL_EPOCHS_FACTOR}x that with --full).")] = None,
    student_loss: Annotated[str, typer.Option("--student-loss", metavar="standard|projection",
                                              help="The students' mask loss.")] = _D.student_mask_loss,
    student_jobs: Annotated[int, typer.Option("--student-jobs", "-j", min=1,
                                              help="Students trained side by side, one CPU thread each (1: one "
                                              "after another).")] = _D.student_jobs,
    full: Annotated[bool, typer.Option("--full", help=f"More and larger images, students trained {FULL_EPOCHS_FACTOR}x "
                                       "longer (tens of minutes on a CPU).")] = _D.full,
    markdown: Annotated[bool, typer.Option("--markdown", help="Also print the table as Markdown on stdout (the "
                                           "README's demo table is this output).")] = False,
    seed: Seed = 0,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Make a synthetic dataset, label it with every path wsis has, and score each against the ground truth.

    Paths: boxes → box-filled floor and mal-label; image tags → cam → irnet; nothing → freemask; each also
    after refine-crf. Then a Mask R-CNN student is trained on each path's labels and on the ground truth
    (the upper bound; --no-students skips them). Prints one table on stderr: mask AP, AP50, AP75, box AP,
    mean instance IoU and each student's retention of the upper bound. With [bold]--out DIR[/bold] the data, every stage's output and report.json stay, and DIR/report.html shows the table and a few images of every row beside the ground truth.
    """
    setup(quiet, verbose)
    from wsis_cli.cli.synth import parse_size

    if student_loss not in ("standard", "projection"):
        raise typer.BadParameter("expected standard or projection", param_hint="--student-loss")

    from wsis_cli.cli.tables import render_comparison
    from wsis_cli.io.atomic import work_dir
    from wsis_cli.stages.demo.settings import DemoJob
    from wsis_cli.stages.demo.stage import run

    keys = tuple(k.strip() for k in methods.split(",") if k.strip())
    from wsis_cli.stages.demo.stage import METHODS

    unknown = sorted(set(keys) - {m.key for m in METHODS})
    if unknown:
        raise typer.BadParameter(f"unknown {unknown}; choose from {', '.join(m.key for m in METHODS)}",
                                 param_hint="--methods")
    settings = DemoSettings.make(num_images=num_images, size=parse_size(size) if size is not None else None,
                                 full=full, classes=classes, seed=seed, refine=refine, students=students,
                                 student_epochs=student_epochs, student_mask_loss=student_loss, methods=keys,
                                 student_jobs=student_jobs)
    with work_dir(out) as folder:
        rows = run(settings, DemoJob(folder)).rows
        render_comparison([(r.method, r.report) for r in rows],
                          title=f"wsis demo: {settings.num_images} synthetic {settings.height}x{settings.width} "
                          f"images, {classes} classes")
        if markdown:
            from wsis_cli.cli.tables import comparison_markdown

            sys.stdout.write(comparison_markdown([(r.method, r.report) for r in rows],
                                                 f"wsis demo: {settings.num_images} synthetic "
                                                 f"{settings.height}x{settings.width} images, {classes} classes"))
        if out is not None:
            from wsis_cli.cli.tables import comparison_cells
            from wsis_cli.runtime.log import get_logger
            from wsis_cli.stages.show.gallery import GalleryRow, write_gallery

            header, cells = comparison_cells([(r.method, r.report) for r in rows])
            page = write_gallery(folder / "report.html", f"wsis demo: {settings.num_images} synthetic "
                                 f"{settings.height}x{settings.width} images, {classes} classes (×100)", header,
                                 [GalleryRow(r.method, r.output, tuple(c), r.class_agnostic)
                                  for r, c in zip(rows, cells, strict=True)],
                                 folder / "data" / "gt.json", folder / "data" / "images")
            get_logger("demo").info("demo: kept every file in %s (report.json has all the numbers); open %s",
                                    folder, page)
