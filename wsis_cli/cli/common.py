"""Options every subcommand shares, and the small helpers the thin CLI layer needs.

Nothing heavy is imported here: ``wsis --help`` and TAB completion must stay instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and full tracebacks on stderr.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same output.")]
Device = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto picks CUDA when available).")
]
Workers = Annotated[int, typer.Option("--workers", min=0, help="Data-loading worker processes.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")]
Shard = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="I/N",
        help="Process shard I of N (0-based). Default: from SLURM array, SLURM_PROCID or torchrun env.",
    ),
]
ImagesDir = Annotated[
    Path | None,
    typer.Option("--images", "-i", help="Folder the file_name of each image is relative to.",
                 file_okay=False, dir_okay=True),
]


# --- learning stages: the same flags mean the same thing in every stage that trains
RunOpt = Annotated[
    Path | None,
    typer.Option("--run", metavar="DIR", file_okay=False,
                 help="Run folder: settings, checkpoints, metrics, model.pt. Default: beside the output."),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint", metavar="PATH", dir_okay=False,
                 help="A model.pt from an earlier run: skip training and only predict."),
]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run (and output) where it stopped.")]
Weights = Annotated[
    str,
    typer.Option("--weights", metavar="NAME|PATH|none",
                 help="Backbone init: imagenet (weights installed with wsis, for timm:tf_efficientnet_lite0..2), "
                 "a hub weights name (DEFAULT, IMAGENET1K_V2...; downloads), a local checkpoint (torchvision, timm, "
                 "DenseCL, MoCo, DINO, MAE layouts) or none."),
]
Epochs = Annotated[int, typer.Option("--epochs", min=0, help="Training epochs.")]
LearningRate = Annotated[float, typer.Option("--lr", min=0.0, help="Base learning rate.")]
NoAmp = Annotated[bool, typer.Option("--no-amp", help="Disable mixed precision on GPU (AMP is never used on CPU).")]


def setup(quiet: bool = False, verbose: bool = False) -> None:
    """Per-command start-up: logging to stderr, remembered verbosity for error reporting."""
    from wsis_cli.runtime import log

    log.configure(quiet=quiet, verbose=verbose)
    STATE["verbose"] = verbose
    STATE["quiet"] = quiet


STATE: dict[str, bool] = {"verbose": False, "quiet": False}


def check_backbone(arch: str, flag: str = "--arch") -> None:
    """A backbone name that cannot be built is a usage error (timm names get close suggestions); this
    loads torch and timm, so call it after the cheap checks."""
    from wsis_cli.models.registry import check_arch

    try:
        check_arch(arch)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint=flag) from None
