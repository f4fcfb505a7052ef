"""Progress reporting for stages: a Rich bar on a terminal, plain periodic lines in logs, nothing if quiet.

Stages never print; they receive a :class:`Progress` (default :class:`NullProgress`) and call
``start`` / ``advance`` / ``finish``. The CLI picks the reporter with :func:`make_progress`:

* stderr is a terminal → a Rich progress bar on stderr;
* stderr is a file or pipe (SLURM logs, CI) → one plain line at most every ``WSIS_PROGRESS_INTERVAL``
  seconds (default 30), e.g. ``cam: 120/500 images (24%), 3.1 img/s, eta 2m``, and a last line on
  finish when there was any (tasks shorter than the interval stay silent);
* ``--quiet`` → nothing.

Rich is imported only when a bar is actually shown.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Protocol, TypeVar, runtime_checkable

from wsis_cli.runtime.log import LOGGER_NAME, get_logger

T = TypeVar("T")

DEFAULT_INTERVAL_S = 30.0
INTERVAL_ENV = "WSIS_PROGRESS_INTERVAL"


@runtime_checkable
class Progress(Protocol):
    """What a stage may call. ``total=None`` means unknown; calls after ``finish`` are ignored."""

    def start(self, total: int | None, description: str, unit: str = "images") -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    """Reports nothing: the default for library use and ``--quiet``."""

    def start(self, total: int | None, description: str, unit: str = "images") -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


class PlainProgress:
    """Plain lines for non-terminals: at most one per ``interval`` seconds, and a final one if any was
    written (a task shorter than the interval prints nothing).

    ``clock`` is injectable so tests need not sleep.
    """

    def __init__(self, stream: IO[str] | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.interval = progress_interval() if interval is None else interval
        self.clock = clock
        self.total: int | None = None
        self.done = 0
        self.description = ""
        self.unit = "images"
        self._t0 = self._last = 0.0
        self._active = False
        self._lines = 0

    def start(self, total: int | None, description: str, unit: str = "images") -> None:
        self.total, self.description, self.unit, self.done = total, description, unit, 0
        self._t0 = self._last = self.clock()
        self._active = True
        self._lines = 0

    def advance(self, n: int = 1) -> None:
        if not self._active:
            return
        self.done += n
        now = self.clock()
        if now - self._last >= self.interval and not (self.total is not None and self.done >= self.total):
            self._last = now
            self._emit(self.line(now))

    def finish(self) -> None:
        if not self._active:
            return
        self._active = False
        # Short tasks stay silent (the stage logs its own summary); a log that showed progress gets
        # a closing line.
        if self._lines:
            self._emit(self.line(self.clock(), final=True))

    def line(self, now: float, final: bool = False) -> str:
        """The text of one report, e.g. ``cam: 120/500 images (24%), 3.1 img/s, eta 2m``."""
        elapsed = max(now - self._t0, 1e-9)
        rate = self.done / elapsed
        short = "img" if self.unit == "images" else self.unit
        parts = [f"{self.done}/{self.total} {self.unit}" if self.total is not None else f"{self.done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.done // self.total}%)"
        parts.append(f"{rate:.1f} {short}/s")
        if final:
            parts.append(f"took {format_duration(elapsed)}")
        elif self.total is not None and rate > 0:
            parts.append(f"eta {format_duration((self.total - self.done) / rate)}")
        return f"{self.description}: " + ", ".join(parts)

    def _emit(self, text: str) -> None:
        self._lines += 1
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(text + "\n")
        stream.flush()


class RichProgress:
    """A Rich bar on ``stream`` (default stderr); for terminals only."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self._bar: Any = None
        self._task: Any = None
        self._rerouted: list[tuple[logging.StreamHandler, IO[str]]] = []

    def start(self, total: int | None, description: str, unit: str = "images") -> None:
        from rich import progress as rp
        from rich.console import Console

        self.finish()
        self._bar = rp.Progress(
            rp.TextColumn("[bold]{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
            rp.TextColumn(unit), rp.TaskProgressColumn(), rp.TimeElapsedColumn(), rp.TextColumn("eta"),
            rp.TimeRemainingColumn(), console=Console(file=self.stream) if self.stream else Console(stderr=True), transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)
        self._reroute_logs()

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def finish(self) -> None:
        if self._bar is not None:
            for handler, stream in self._rerouted:
                handler.setStream(stream)
            self._rerouted = []
            self._bar.stop()
            self._bar = None

    def _reroute_logs(self) -> None:
        """Send wsis log lines through Rich while the bar is live, so they print above it instead of
        being glued onto the bar's line. (Rich swaps ``sys.stderr`` for a proxy that does this, but
        logging handlers keep the stream they were created with.)"""
        if self.stream is not None or sys.stderr is sys.__stderr__:
            return  # not drawing on stderr, or Rich did not redirect it
        logger = logging.getLogger(LOGGER_NAME)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.__stderr__:
                self._rerouted.append((handler, handler.setStream(sys.stderr)))


def progress_interval(env: dict[str, str] | None = None) -> float:
    """Seconds between plain lines: ``WSIS_PROGRESS_INTERVAL`` if set to a number >= 0, else 30."""
    raw = (os.environ if env is None else env).get(INTERVAL_ENV)
    if raw is None:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also catches nan
        get_logger("progress").warning("ignoring %s=%r (not a number of seconds >= 0)", INTERVAL_ENV, raw)
        return DEFAULT_INTERVAL_S
    return value


def make_progress(quiet: bool = False, stream: IO[str] | None = None) -> Progress:
    """The reporter the CLI hands to a stage: nothing if ``quiet``, a bar on a terminal, else lines."""
    if quiet:
        return NullProgress()
    target = sys.stderr if stream is None else stream
    isatty = getattr(target, "isatty", None)
    if isatty is not None and isatty():
        return RichProgress(stream)
    return PlainProgress(stream)


def track(iterable: Iterable[T], total: int | None = None, description: str = "",
          progress: Progress | None = None, unit: str = "images") -> Iterator[T]:
    """Yield from ``iterable`` while reporting one step per item; ``finish`` runs even on error."""
    progress = progress if progress is not None else NullProgress()
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    progress.start(total, description, unit)
    try:
        for item in iterable:
            yield item
            progress.advance()
    finally:
        progress.finish()


def format_duration(seconds: float) -> str:
    """Short human durations: ``45s``, ``2m41s`` (seconds kept under 10 minutes), ``25m``, ``1h05m``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        m, r = divmod(s, 60)
        return f"{m}m{r:02d}s" if r and m < 10 else f"{m}m"
    h, r = divmod(s, 3600)
    return f"{h}h{r // 60:02d}m"
