"""Exit codes and the exceptions that map onto them.

Every failure the user can act on is raised as a :class:`WsisError` subclass carrying one clear line;
the CLI entry point turns it into that line on stderr and the matching exit code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # anything unexpected
    USAGE = 2  # bad flags or arguments
    BAD_INPUT = 3  # input data that cannot be used as given
    INTERRUPTED = 130  # Ctrl-C / SIGINT
    TERMINATED = 143  # SIGTERM (SLURM preemption or scancel): 128 + 15, as a shell reports it


class WsisError(Exception):
    """Base class: an error with a one-line message and an exit code."""

    exit_code: ExitCode = ExitCode.FAILURE


class UsageError(WsisError):
    """Bad command-line usage that argument parsing could not catch (exit 2)."""

    exit_code = ExitCode.USAGE


class TrainingDivergedError(WsisError):
    """A loss became NaN or infinite: the run stops before anything non-finite is saved or written (exit 1)."""

    exit_code = ExitCode.FAILURE


class DiskFullError(WsisError):
    """An output could not be written for lack of space (exit 1, like any failure of the machine)."""

    exit_code = ExitCode.FAILURE


class BadInputError(WsisError):
    """Input data that cannot be used (exit 3). Names the file and, where known, the record.

    >>> str(BadInputError("gt.json", "annotations[3] (id 17)", "bbox has zero width"))
    'gt.json: annotations[3] (id 17): bbox has zero width'
    """

    exit_code = ExitCode.BAD_INPUT

    def __init__(self, path: object, record: str | None, message: str) -> None:
        self.path = str(path)
        self.record = record
        self.message = message
        parts = [self.path] + ([record] if record else []) + [message]
        super().__init__(": ".join(parts))


class Terminated(BaseException):  # noqa: N818 - a signal, like KeyboardInterrupt, not an error
    """Raised from the SIGTERM handler so that ``with`` blocks close files and keep ``.partial`` state."""
