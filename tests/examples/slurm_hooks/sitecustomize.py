"""Pause points for tests/examples/test_examples_slurm.py, loaded by Python at start-up via PYTHONPATH.

A tiny job finishes within a second of starting, too fast to requeue or signal "mid-run" on purpose.
These hooks hold a job at a known point of its *first* attempt (``SLURM_RESTART_COUNT`` unset or 0) and
touch a marker file, so the test acts only once the job is really there; a requeued attempt runs freely.
Nothing here is active without its variable, and wsis itself is unchanged.

* ``WSIS_TEST_PAUSE_LABEL=DIR`` (with ``WSIS_TEST_PAUSE_TASKS=1:2``): ``mal-label`` in those array tasks
  stops after its first finished image (written to the ``.partial`` file), touches
  ``DIR/label-<task>.paused`` and sleeps until a signal ends it.
* ``WSIS_TEST_PAUSE_STUDENT=DIR``: ``train-student`` on every rank stops after its first optimizer step
  (mid-epoch), touches ``DIR/student-<rank>.paused`` and waits until a SIGUSR1/SIGTERM requested a stop,
  then goes on: the run saves its checkpoint and exits 143 exactly as after a real signal.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_LIMIT = 300.0  # seconds a paused process waits before it goes on anyway (a test that died must not hang it)


def _first_attempt() -> bool:
    return os.environ.get("SLURM_RESTART_COUNT", "0") in ("", "0")


def _pause_label(folder: Path) -> None:
    task = os.environ.get("SLURM_ARRAY_TASK_ID", "")
    if task not in os.environ.get("WSIS_TEST_PAUSE_TASKS", "").split(":"):
        return
    from wsis_cli.io.checkpoint import ImageCheckpoint

    add = ImageCheckpoint.add
    calls = []

    def paused_add(self: ImageCheckpoint, image_id: int, records: list) -> None:
        add(self, image_id, records)
        calls.append(image_id)
        if len(calls) == 1:
            (folder / f"label-{task}.paused").touch()
            end = time.monotonic() + _LIMIT
            while time.monotonic() < end:
                time.sleep(0.1)  # the SIGTERM handler raises here

    ImageCheckpoint.add = paused_add


def _pause_student(folder: Path) -> None:
    from wsis_cli.stages.student import stage as train_student

    agreed = train_student._stop_agreed
    calls = []

    def paused_agreed(stop, ctx, device):  # noqa: ANN001, ANN202 - the wrapped function's signature
        calls.append(1)
        if len(calls) == 1:
            (folder / f"student-{os.environ.get('SLURM_PROCID', '0')}.paused").touch()
            end = time.monotonic() + _LIMIT
            while stop.requested is None and time.monotonic() < end:
                time.sleep(0.1)
        return agreed(stop, ctx, device)

    train_student._stop_agreed = paused_agreed


def _install() -> None:
    if not _first_attempt():
        return
    if os.environ.get("WSIS_TEST_PAUSE_LABEL"):
        _pause_label(Path(os.environ["WSIS_TEST_PAUSE_LABEL"]))
    if os.environ.get("WSIS_TEST_PAUSE_STUDENT"):
        _pause_student(Path(os.environ["WSIS_TEST_PAUSE_STUDENT"]))


_install()
