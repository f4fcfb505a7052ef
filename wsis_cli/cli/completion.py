"""``wsis completion``: print or write static shell-completion scripts.

The scripts are generated from the app's own command tree (see :mod:`wsis_cli.cli.completion_scripts`)
and list everything literally, so TAB never starts Python. Refresh the committed copies with::

    uv run wsis completion --write completions/
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from wsis_cli.cli import common


class ShellName(str, Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def completion(
    shell: Annotated[
        ShellName | None,
        typer.Argument(metavar="SHELL", help="Shell to print the script for: bash, zsh or fish.", show_default=False),
    ] = None,
    write: Annotated[
        Path | None,
        typer.Option(
            "--write",
            metavar="DIR",
            file_okay=False,
            dir_okay=True,
            help="Write all three scripts (wsis.bash, _wsis, wsis.fish) into DIR instead of printing one.",
        ),
    ] = None,
    quiet: common.Quiet = False,
    verbose: common.Verbose = False,
) -> None:
    """Print a shell-completion script for bash, zsh or fish.

    [bold]bash[/bold]: add [cyan]source <(wsis completion bash)[/cyan] to ~/.bashrc, or save it as
    ~/.local/share/bash-completion/completions/wsis.

    [bold]zsh[/bold]: [cyan]wsis completion zsh > ~/.zfunc/_wsis[/cyan] with fpath=(~/.zfunc $fpath) before
    compinit in ~/.zshrc (or [cyan]source <(wsis completion zsh)[/cyan] after compinit).

    [bold]fish[/bold]: [cyan]wsis completion fish > ~/.config/fish/completions/wsis.fish[/cyan].

    The scripts are static (TAB never starts Python); regenerate them after upgrading wsis.
    """
    common.setup(quiet, verbose)
    from wsis_cli.cli import completion_scripts
    from wsis_cli.runtime.errors import UsageError

    if write is not None:
        if shell is not None:
            raise UsageError("give either a SHELL to print or --write DIR, not both")
        from wsis_cli.io.atomic import check_output_path
        from wsis_cli.runtime import log

        check_output_path(write, is_dir=True)
        for path in completion_scripts.write_all(write):
            log.get_logger("completion").info("wrote %s", path)
        return
    if shell is None:
        raise UsageError("missing SHELL: one of bash, zsh, fish (or --write DIR for all three)")
    sys.stdout.write(completion_scripts.generate(shell.value))
    sys.stdout.flush()
