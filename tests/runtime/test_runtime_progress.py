"""Progress: plain periodic lines off-terminal, a Rich bar on one, nothing when quiet."""

from __future__ import annotations

import io

import pytest

from wsis_cli.runtime.progress import (
    NullProgress,
    PlainProgress,
    Progress,
    RichProgress,
    format_duration,
    make_progress,
    progress_interval,
    track,
)


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_at_most_every_interval() -> None:
    out, clock = io.StringIO(), _Clock()
    p = PlainProgress(out, interval=30, clock=clock)
    p.start(500, "cam")
    for _ in range(120):
        clock.t += 10 / 120 * 3  # 120 images in 30 s -> 4 img/s
        p.advance()
    clock.t += 5
    p.advance(5)  # too soon after the last line
    p.finish()
    lines = out.getvalue().splitlines()
    assert lines == ["cam: 120/500 images (24%), 4.0 img/s, eta 1m35s",
                     "cam: 125/500 images (25%), 3.6 img/s, took 35s"]
    p.advance()  # after finish: ignored
    assert len(out.getvalue().splitlines()) == 2


def test_plain_unknown_total_and_other_units() -> None:
    out, clock = io.StringIO(), _Clock()
    p = PlainProgress(out, interval=0, clock=clock)
    p.start(None, "merge", unit="shards")
    clock.t += 2
    p.advance(4)
    p.finish()
    assert out.getvalue().splitlines() == ["merge: 4 shards, 2.0 shards/s", "merge: 4 shards, 2.0 shards/s, took 2s"]


def test_make_progress_picks_the_reporter() -> None:
    out = io.StringIO()
    assert isinstance(make_progress(quiet=True, stream=out), NullProgress)
    plain = make_progress(quiet=False, stream=out)
    assert isinstance(plain, PlainProgress) and isinstance(plain, Progress)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = make_progress(quiet=False, stream=tty)
    assert isinstance(bar, RichProgress)
    bar.start(3, "cam")
    bar.advance(3)
    bar.finish()
    assert "cam" in tty.getvalue()


def test_quiet_emits_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    p = make_progress(quiet=True)
    assert list(track(range(5), description="cam", progress=p)) == list(range(5))
    assert capsys.readouterr() == ("", "")


def test_track_reports_each_item_and_finishes_on_error() -> None:
    out, clock = io.StringIO(), _Clock()
    p = PlainProgress(out, interval=0, clock=clock)
    assert list(track([1, 2, 3], description="x", progress=p)) == [1, 2, 3]
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == [
        "x: 1/3 images (33%)", "x: 2/3 images (66%)", "x: 3/3 images (100%)"]
    out = io.StringIO()
    with pytest.raises(ValueError):
        for i in track(range(10), description="y", progress=PlainProgress(out, interval=0)):
            if i == 2:
                raise ValueError
    assert out.getvalue().splitlines()[-1].startswith("y: 2/10 images (20%)")
    assert "took" in out.getvalue().splitlines()[-1]


def test_short_tasks_are_silent() -> None:
    out = io.StringIO()
    assert list(track(range(3), description="z", progress=PlainProgress(out, interval=30))) == [0, 1, 2]
    assert out.getvalue() == ""


def test_interval_from_environment() -> None:
    assert progress_interval({}) == 30.0
    assert progress_interval({"WSIS_PROGRESS_INTERVAL": "2.5"}) == 2.5
    assert progress_interval({"WSIS_PROGRESS_INTERVAL": "soon"}) == 30.0
    assert progress_interval({"WSIS_PROGRESS_INTERVAL": "-1"}) == 30.0


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 45, 120, 161, 1500, 3900)] == ["0s", "45s", "2m", "2m41s", "25m", "1h05m"]


def test_rich_bar_on_a_terminal_keeps_log_lines_whole() -> None:
    """On a real terminal (a pty) the bar is drawn and log lines print above it, not glued onto it."""
    import os
    import pty
    import re
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        from wsis_cli.runtime import log
        from wsis_cli.runtime.progress import RichProgress, make_progress, track
        log.configure()
        p = make_progress()
        assert isinstance(p, RichProgress), p
        for i in track(range(4), description="cam", progress=p):
            if i == 2:
                log.get_logger().info("a log line")
    """)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=slave, stdout=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", b"".join(chunks).decode(errors="replace"))
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    assert "wsis: a log line" in lines
    assert any(line.startswith("cam") and "4/4 images" in line for line in lines)
