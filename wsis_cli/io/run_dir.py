"""Run folders of the learning stages: resolved settings, checkpoints, metrics, the final model.

Layout of ``--run DIR``::

    run.json        stage, wsis version, the resolved settings the run was started with
    last.pt         full training state after the last finished epoch (model, optimizer, scaler, epoch,
                    RNG...), written atomically: a kill never leaves a half-written checkpoint
    metrics.jsonl   one JSON line per logged record (per-epoch losses, validation figures)
    model.pt        the trained model: what ``--checkpoint`` takes to predict without training

Every learning stage (``cam``, ``irnet``, ``mal-label``, ``freemask --labeled``, ``train-student``) keeps one;
the same flags (``--run``, ``--resume``, ``--checkpoint``) mean the same thing in each.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from wsis_cli import __version__
from wsis_cli.io.atomic import atomic_path, atomic_write_text
from wsis_cli.io.provenance import diff_settings, to_jsonable
from wsis_cli.io.weights import read_checkpoint_file
from wsis_cli.runtime.errors import BadInputError, UsageError
from wsis_cli.runtime.log import get_logger

log = get_logger("run")

# settings a resumed run may change: they do not alter what is being learned
RESUME_MAY_CHANGE = frozenset({"resume", "workers", "device", "quiet", "verbose", "epochs", "batch_size",
                               "output", "run", "shard", "checkpoint", "amp"})


def default_run_dir(out: str | os.PathLike, stage: str) -> Path:
    """The run folder used when ``--run`` is not given: beside the output, named after it."""
    if str(out) == "-":
        return Path(f"wsis-{stage}-run")
    p = Path(out)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(f"{stem}.{stage}-run")


def is_main_process() -> bool:
    """Rank 0 of a data-parallel job (the process group's rank, else the launcher's variables), or a lone
    process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    for name in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "")
        if value.strip().isdigit():
            return int(value) == 0
    return True


class RunDir:
    """One learning run's folder (see the module docstring for its layout).

    Every rank of a data-parallel job opens the same folder (they all read a resumed checkpoint), but only
    rank 0 writes ``run.json`` (``main``; by default :func:`is_main_process`); the training loops already
    save checkpoints, metrics and the model from rank 0 only.
    """

    def __init__(self, path: str | os.PathLike, stage: str, settings: Any, *, resume: bool,
                 main: bool | None = None) -> None:
        self.path = Path(path)
        self.stage = stage
        self.settings = to_jsonable(settings)
        self.resume = resume
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--run {self.path}: exists and is not a folder")
        run_json = self.path / "run.json"
        if resume:
            self._check_resume(run_json)
        elif (self.path / "last.pt").exists() or (self.path / "model.pt").exists():
            raise UsageError(f"--run {self.path}: already holds a run; add --resume to continue it, or choose "
                             "another --run folder")
        new_dirs = [p for p in (self.path, *self.path.parents) if not p.exists()]
        before = {p.name for p in self.path.iterdir()} if self.path.is_dir() else set()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--run {self.path}: cannot create the run folder ({e.strerror})") from None
        self._created = (new_dirs, False, before)  # folders made, run.json written, what was there before
        if (is_main_process() if main is None else main) and not (resume and run_json.exists()):
            with atomic_write_text(run_json) as fh:
                json.dump({"stage": stage, "wsis_version": __version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                           "settings": self.settings}, fh, indent=1, sort_keys=True)
            self._created = (new_dirs, True, before)
        _OPENED.append(self)

    def discard_unused(self) -> None:
        """Undo the folder's creation if nothing but this run's ``run.json`` was written into it: a run that
        failed on its input before training leaves no folder behind (one that trained keeps its checkpoint)."""
        new_dirs, wrote_json, before = self._created
        try:
            added = {p.name for p in self.path.iterdir()} - before
            if wrote_json and added == {"run.json"}:
                (self.path / "run.json").unlink()
            for folder in new_dirs:  # innermost first; stops at the first that holds anything
                folder.rmdir()
        except OSError:
            pass

    def _check_resume(self, run_json: Path) -> None:
        if not run_json.exists():
            # a nested run (freemask's pretrain/, interrupted before the outer run began) is not foreign
            if self.path.exists() and any(not (p / "run.json").is_file() for p in self.path.iterdir()):
                raise BadInputError(run_json, None, "not a wsis run folder (no run.json) to resume")
            log.info("%s: nothing to resume, starting from scratch", self.path)
            return
        try:
            head = json.loads(run_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise BadInputError(run_json, None, f"cannot be read ({e})") from None
        if head.get("stage") != self.stage:
            raise BadInputError(run_json, None, f"a run of stage {head.get('stage')!r}, not {self.stage!r}")
        diff = diff_settings(head.get("settings", {}), self.settings, ignore=RESUME_MAY_CHANGE)
        if diff:
            raise BadInputError(run_json, None, "--resume needs the settings of the interrupted run; differs in "
                                + "; ".join(diff))

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "last.pt"

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        """Atomically write the full training state to ``last.pt``."""
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save({"wsis_stage": self.stage, "wsis_version": __version__, **state}, tmp)
        return self.checkpoint_path

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state saved by :meth:`save_checkpoint` when resuming, else ``None``."""
        if not self.resume or not self.checkpoint_path.exists():
            return None
        p = self.checkpoint_path
        try:
            state = torch.load(p, map_location="cpu", weights_only=False)  # our own file: RNG states inside
        except Exception as e:  # noqa: BLE001
            raise BadInputError(p, None, f"cannot be read as a checkpoint ({e}); delete it to restart") from None
        if not isinstance(state, dict) or state.get("wsis_stage") != self.stage:
            raise BadInputError(p, None, f"not a checkpoint of stage {self.stage!r}")
        log.info("%s: resuming after epoch %s", p, state.get("epoch"))
        return state

    def save_model(self, model_state: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.pt``: the trained weights plus what a later ``--checkpoint`` needs to rebuild them."""
        payload = {"wsis_stage": self.stage, "wsis_version": __version__, "settings": self.settings,
                   "model": model_state, **(extra or {})}
        with atomic_path(self.model_path) as tmp:
            torch.save(payload, tmp)
        return self.model_path

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (flushed at once: it is read while a run goes on)."""
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(to_jsonable(record), sort_keys=True) + "\n")

    def prune_metrics(self, finished: int, index_based: bool = False) -> int:
        """Drop the ``metrics.jsonl`` lines of epochs after the first ``finished`` ones, and torn lines.

        A loop logs an epoch's line and then checkpoints it; a job killed between the two would log that epoch
        again after ``--resume``. ``index_based``: a line's ``epoch`` is the epoch's 0-based index rather than
        the number of epochs finished. Lines without an ``epoch`` stay. Returns the number of lines dropped.
        """
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return 0
        lines = path.read_text(encoding="utf-8").splitlines()

        def kept(line: str) -> bool:
            try:
                epoch = json.loads(line).get("epoch")
            except (ValueError, AttributeError):
                return False
            return not isinstance(epoch, int) or epoch + (1 if index_based else 0) <= finished

        keep = [line for line in lines if kept(line)]
        if len(keep) < len(lines):
            with atomic_write_text(path) as fh:
                fh.write("".join(line + "\n" for line in keep))
        return len(lines) - len(keep)


_OPENED: list[RunDir] = []  # the run folders this process opened, in order


def discard_unused_runs() -> None:
    """:meth:`RunDir.discard_unused` for every run folder this process opened, the latest first (the CLI
    calls it when a command fails)."""
    while _OPENED:
        _OPENED.pop().discard_unused()


def forget_runs() -> None:
    """Keep every run folder opened so far (the CLI calls it when a command succeeds)."""
    _OPENED.clear()


def read_model(path: str | os.PathLike, stage: str) -> dict[str, Any]:
    """Load a ``model.pt`` written by :meth:`RunDir.save_model` of ``stage`` (for ``--checkpoint``)."""
    obj = read_checkpoint_file(path)
    if not isinstance(obj, dict) or "model" not in obj or "wsis_stage" not in obj:
        raise BadInputError(path, None, "not a wsis model checkpoint (expected a model.pt from a --run folder)")
    if obj["wsis_stage"] != stage:
        raise BadInputError(path, None, f"a model of stage {obj['wsis_stage']!r}, expected {stage!r}")
    return obj
