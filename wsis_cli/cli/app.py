"""The ``wsis`` Typer application: registers subcommands and maps errors onto exit codes.

Each subcommand lives in its own module and imports heavy libraries only inside its function body.
"""

from __future__ import annotations

import os
import sys

import typer

from wsis_cli import __version__
from wsis_cli.cli import common

app = typer.Typer(
    name="wsis",
    help="Weakly supervised instance segmentation: cheap labels in, instance pseudo-labels out.\n\n"
    "Subcommands read and write COCO JSON (use - for stdin/stdout) and HDF5, and chain through the shell.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wsis {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Weakly supervised instance segmentation toolkit."""


def _register() -> None:
    from wsis_cli.cli import (
        cam,
        completion,
        demo,
        evaluate,
        freemask,
        irnet,
        mal_label,
        merge,
        refine_crf,
        show,
        synth,
        train_student,
    )

    app.command("synth")(synth.synth)
    app.command("eval")(evaluate.eval_cmd)
    app.command("merge")(merge.merge)
    app.command("refine-crf")(refine_crf.refine_crf)
    app.command("cam")(cam.cam)
    app.command("irnet")(irnet.irnet)
    app.command("freemask")(freemask.freemask)
    app.command("train-student")(train_student.train_student)
    app.command("mal-label")(mal_label.mal_label)
    app.command("show")(show.show)
    app.command("demo")(demo.demo)
    app.command("completion")(completion.completion)


_register()


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"wsis: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


_repeating = False  # the repeater thread of _repeat_sigterm has started


def _repeat_sigterm(interval: float = 5.0) -> None:
    """Deliver SIGTERM to the main thread again every ``interval`` seconds until the process exits.

    A Python signal handler runs at the next bytecode of the main thread, which may be inside a finalizer
    or a C extension's callback, where the raised exception is printed as "ignored" and lost: a demo in CI
    went on for 20 minutes after its SIGTERM. Repeating the signal makes the exit certain, while leaving
    the usual path (cleanup in ``finally`` blocks, one line, exit 143) unchanged when the first one lands.
    """
    import _thread
    import signal
    import threading
    import time

    global _repeating
    if _repeating:
        return
    _repeating = True

    def _loop() -> None:
        while True:
            time.sleep(interval)
            _thread.interrupt_main(signal.SIGTERM)

    threading.Thread(target=_loop, name="wsis-sigterm", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one clear line on stderr and a distinct exit code for each failure.

    Typer (standalone mode) already turns usage errors into exit 2 and Ctrl-C into 130; our own
    :class:`WsisError` and anything unexpected are mapped here.
    """
    import signal

    from wsis_cli.runtime.errors import Terminated

    def _on_sigterm(signum: int, frame: object) -> None:
        _repeat_sigterm()
        raise Terminated

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _main(argv)
    except SystemExit as e:
        run_dir = sys.modules.get("wsis_cli.io.run_dir")  # only loaded (with torch) by a learning stage
        if run_dir is not None:
            if e.code not in (0, None):  # a learning stage that failed before training leaves no run folder
                run_dir.discard_unused_runs()
            run_dir.forget_runs()
        raise


def _main(argv: list[str] | None) -> None:
    from wsis_cli.runtime.errors import ExitCode, Terminated, WsisError

    try:
        app(args=argv, prog_name="wsis")
    except WsisError as e:
        _traceback_if_verbose()
        _fail(str(e), int(e.exit_code))
    except KeyboardInterrupt:
        _fail("interrupted", int(ExitCode.INTERRUPTED))
    except Terminated as e:
        by = str(e.args[0]) if e.args else "SIGTERM"  # train-student also stops on SIGUSR1
        _fail(f"terminated ({by}); finished work is kept, rerun with --resume", int(ExitCode.TERMINATED))
    except BrokenPipeError:
        # the reader of our stdout went away (e.g. `| head`): not worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(int(ExitCode.FAILURE)) from None
    except Exception as e:  # noqa: BLE001 - last resort: one line, the traceback only with --verbose
        _traceback_if_verbose()
        _fail(f"{type(e).__name__}: {e}", int(ExitCode.FAILURE))


def _traceback_if_verbose() -> None:
    if common.STATE["verbose"]:
        import traceback

        traceback.print_exc()


if __name__ == "__main__":
    main()
