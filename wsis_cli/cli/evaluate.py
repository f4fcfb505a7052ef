"""``wsis eval``: COCO mask/box AP and AR plus mean instance mask IoU of predictions against a ground truth.

Thin layer: parse flags, check the outputs, call :func:`wsis_cli.stages.evaluate.stage.run` (which loads
the two files and evaluates them), render the tables on stderr and write the JSON report (``--json -`` puts
ONLY the JSON on stdout).
``--report DIR`` also draws the worst images (``wsis show``'s report with the ground truth beside).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from wsis_cli.cli import common


def eval_cmd(
    pred: Annotated[
        str,
        typer.Argument(metavar="PRED", help="Predictions: a COCO results list or dataset; - reads stdin."),
    ],
    gt: Annotated[str, typer.Option("--gt", "-g", metavar="GT", help="Ground-truth COCO dataset (- reads stdin).")],
    iou_type: Annotated[
        Literal["segm", "bbox", "both"],
        typer.Option("--iou-type", help="What to evaluate; 'both' falls back to boxes where masks are missing."),
    ] = "both",
    class_agnostic: Annotated[
        bool, typer.Option("--class-agnostic", help="Treat every category as one (GT and predictions).")
    ] = False,
    max_dets: Annotated[
        int,
        typer.Option("--max-dets", min=10, metavar="N",
                     help="Detections per image kept for AP and AR@N (maxDets [1, 10, N])."),
    ] = 100,
    reference_ap: Annotated[
        float | None,
        typer.Option("--reference-ap", metavar="X", min=0.0, max=100.0,
                     help="Fully supervised AP (0.42 or 42.0) to report the retention rate AP/X."),
    ] = None,
    backend: Annotated[
        Literal["chunked", "pycocotools", "faster"],
        typer.Option("--backend",
                     help="COCO AP implementation, all with pycocotools' numbers: chunked (default; bounded "
                          "memory, fastest), pycocotools, or faster (needs wsis\\[fast-eval])."),
    ] = "chunked",
    json_out: Annotated[
        str | None,
        typer.Option("--json", metavar="PATH|-", help="Write the full report as JSON (- for stdout, JSON only)."),
    ] = None,
    report_dir: Annotated[
        Path | None,
        typer.Option("--report", metavar="DIR", file_okay=False,
                     help="Also write the worst images as wsis show's HTML report (absent or empty folder): "
                          "predictions beside the ground truth, worst mean IoU first."),
    ] = None,
    report_limit: Annotated[
        int, typer.Option("--report-limit", min=1, metavar="N", help="Images in the --report.")
    ] = 50,
    images: common.ImagesDir = None,
    quiet: common.Quiet = False,
    verbose: common.Verbose = False,
) -> None:
    """Evaluate predictions against a ground truth: COCO AP/AR (masks and boxes) and mean mask IoU.

    With [bold]--report DIR -i IMAGES[/bold] the worst images are drawn too (wsis show --gt's report).
    """
    common.setup(quiet, verbose)
    from wsis_cli.io import stdio
    from wsis_cli.io.atomic import check_output_dir, check_output_path
    from wsis_cli.runtime.errors import UsageError
    from wsis_cli.runtime.progress import make_progress
    from wsis_cli.stages.evaluate.settings import EvalJob, EvalSettings
    from wsis_cli.stages.evaluate.stage import require_faster, run

    if pred == stdio.STDIO and gt == stdio.STDIO:
        raise UsageError("PRED and --gt cannot both read stdin")
    if json_out is not None and json_out != stdio.STDIO:
        check_output_path(json_out)  # fail before the work, not after it
    if report_dir is not None:
        if str(report_dir) == stdio.STDIO:
            raise UsageError("--report writes a folder; - (stdout) is not possible")
        check_output_dir(report_dir)  # fail before the work, not after it
    if backend == "faster":
        require_faster()
    settings = EvalSettings(
        iou_type=iou_type, class_agnostic=class_agnostic, max_dets=max_dets,
        reference_ap=reference_ap, backend=backend,
    )

    job = EvalJob(gt=gt, predictions=pred, report_dir=report_dir, report_limit=report_limit, images=images)
    # with --report, a bad image stops the command before the tables and with nothing written
    report = run(settings, job, make_progress(quiet))

    if not quiet:
        from wsis_cli.cli.tables import render_eval

        render_eval(report)
    if json_out is not None:
        stdio.write_json(report.to_json(), json_out, indent=2)
