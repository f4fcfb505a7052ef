"""``wsis merge``: join the shard outputs of one stage (COCO JSON or HDF5), checking ids."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli.common import Quiet, Verbose, setup


def merge(
    shards: Annotated[list[Path], typer.Argument(
        metavar="SHARD", show_default=False,
        help="Shard outputs of one stage: COCO JSON datasets, results lists, or HDF5 stores.")],
    output: Annotated[str, typer.Option(
        "--output", "-o", metavar="OUT", show_default=False,
        help="Merged output file (- for stdout, JSON only). Written atomically.")],
    expect_images: Annotated[Path | None, typer.Option(
        "--expect-images", metavar="GT.json", dir_okay=False,
        help="The dataset whose images were sharded: every one of its images must be in the shards.")] = None,
    expect_count: Annotated[int | None, typer.Option(
        "--expect-count", metavar="N", min=0,
        help="The shards together must hold exactly N images.")] = None,
    renumber: Annotated[bool, typer.Option(
        "--renumber", help="Reassign annotation ids 1..N instead of requiring them unique across shards.")] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Join shard outputs (from --shard I/N runs) into one file.

    Checks that shards are finished and of one kind, that no image id (HDF5) or annotation id (JSON) appears in two shards, that image records and categories agree, and, with --expect-images or --expect-count, that no image is missing.

    Example: wsis merge cams.shard-*-of-4.h5 -o cams.h5 --expect-images train.json
    """
    setup(quiet, verbose)
    from wsis_cli.io.atomic import check_output_path
    from wsis_cli.runtime.errors import UsageError
    from wsis_cli.runtime.log import get_logger
    from wsis_cli.runtime.progress import make_progress
    from wsis_cli.stages.merge.settings import MergeJob, MergeSettings
    from wsis_cli.stages.merge.stage import run

    if expect_images is not None and expect_count is not None:
        raise UsageError("--expect-images and --expect-count are mutually exclusive")
    if output != "-":
        check_output_path(output)
    settings = MergeSettings(expect_count, renumber)
    summary = run(settings, MergeJob(tuple(shards), output, expect_images), make_progress(quiet))
    if summary.kind == "h5":
        what = f"{summary.images} images (stage {summary.stage})"
    else:
        noun = "annotations" if summary.kind == "dataset" else "results"
        what = f"{summary.images} images, {summary.annotations} {noun}"
    get_logger("merge").info("merged %d shards: %s -> %s", summary.shards, what,
                             "<stdout>" if output == "-" else output)
