"""``wsis show``: look at labels before trusting a number — overlays as PNGs and a static HTML report.

Thin layer: parse and validate the flags, check the output folder, call :func:`wsis_cli.stages.show.stage.run`
and say where the report is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from wsis_cli.cli import common


def show(
    labels: Annotated[
        str,
        typer.Argument(metavar="LABELS",
                       help="Labels to draw: a COCO dataset or results list; - reads stdin."),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", metavar="REPORT", file_okay=False,
                     help="Report folder to create (absent or empty unless --force): index.html, view/, img/."),
    ],
    images: common.ImagesDir = None,
    gt: Annotated[
        str | None,
        typer.Option("--gt", "-g", metavar="GT",
                     help="Ground-truth dataset: drawn beside the labels, every instance gets its IoU, "
                          "images sort worst first."),
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option("--compare", metavar="B",
                     help="A second label set (dataset or results list) drawn beside LABELS."),
    ] = None,
    sort: Annotated[
        Literal["auto", "id", "file", "worst", "best", "instances"],
        typer.Option("--sort", help="Image order; auto: worst first by mean IoU with --gt/--compare, else id."),
    ] = "auto",
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, metavar="N",
                                              help="Keep the first N images after sorting.")] = None,
    ids: Annotated[
        str | None,
        typer.Option("--ids", metavar="LIST", help="Only these image ids, e.g. 3,7,10-12."),
    ] = None,
    shard: common.Shard = None,
    page_size: Annotated[int, typer.Option("--page-size", min=1, help="Thumbnails per index page.")] = 100,
    thumb_side: Annotated[int, typer.Option("--thumb-side", min=16, max=1024,
                                            help="Long side of the thumbnails, pixels.")] = 192,
    min_side: Annotated[int, typer.Option("--min-side", min=16, max=8192,
                                          help="Smaller images are enlarged to this long side in full views.")] = 512,
    max_side: Annotated[int, typer.Option("--max-side", min=16, max=8192,
                                          help="Larger images are reduced to this long side in full views.")] = 1024,
    score_threshold: Annotated[
        float, typer.Option("--score-threshold", min=0.0, help="Leave out labels scoring below this.")
    ] = 0.0,
    match_iou: Annotated[
        float, typer.Option("--match-iou", min=0.0, max=1.0,
                            help="IoU at which an instance counts as found (shares its colour; else dashed).")
    ] = 0.5,
    class_agnostic: Annotated[
        bool, typer.Option("--class-agnostic", help="Match instances whatever their classes.")
    ] = False,
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Opacity of the mask fill.")] = 0.45,
    no_boxes: Annotated[bool, typer.Option("--no-boxes", help="Do not draw boxes around masks.")] = False,
    no_labels: Annotated[bool, typer.Option("--no-labels", help="Do not write class, score and IoU tags.")] = False,
    max_tags: Annotated[
        int, typer.Option("--max-tags", min=0, help="Write tags only on panels with at most this many instances.")
    ] = 40,
    title: Annotated[str | None, typer.Option("--title", help="Title of the report pages.")] = None,
    image_format: Annotated[
        Literal["auto", "png", "jpg"],
        typer.Option("--format", help="Full views as png (crisp mask edges) or jpg (photos, several times "
                                      "smaller); auto: jpg where the image itself is a JPEG, else png."),
    ] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace REPORT if it exists and is not empty.")] = False,
    quiet: common.Quiet = False,
    verbose: common.Verbose = False,
) -> None:
    """Draw labels over their images and write a static HTML report that opens from disk (no server).

    Each instance gets a colour, its outline, box and a tag with class, score and (with --gt or --compare) its best IoU; an index of thumbnails links to a full view per image. With [bold]--gt[/bold] the ground truth is drawn beside the labels and images sort worst first; [bold]--compare B.json[/bold] puts a second label set beside them.
    """
    common.setup(quiet, verbose)
    from wsis_cli.io.atomic import check_output_dir
    from wsis_cli.runtime.errors import UsageError
    from wsis_cli.stages.show import ShowJob, ShowSettings, parse_ids

    if min_side > max_side:
        raise UsageError(f"--min-side {min_side} is above --max-side {max_side}")
    settings = ShowSettings(
        sort=sort, limit=limit, ids=parse_ids(ids) if ids is not None else None, page_size=page_size,
        thumb_side=thumb_side, min_side=min_side, max_side=max_side, score_threshold=score_threshold,
        match_iou=match_iou, class_agnostic=class_agnostic, alpha=alpha, boxes=not no_boxes,
        labels=not no_labels, max_tags=max_tags, title=title, image_format=image_format,
    )
    job = ShowJob(labels=labels, out=str(out), images=str(images) if images else None, gt=gt, compare=compare,
                  shard=shard, force=force)
    check_output_dir(out, force=force)  # fail before the work, not after it

    from wsis_cli.runtime.progress import make_progress
    from wsis_cli.stages.show.stage import run

    run(settings, job, make_progress(quiet))
