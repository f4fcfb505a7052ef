"""Small training helpers every learning stage shares: LR schedules, loss warm-ups, EMA teachers, RNG state,
and the epoch bookkeeping of the training loops (:class:`EpochBookkeeping`).

Schedules return a multiplicative factor of the base learning rate for a 0-based step, so a resumed run
that restores its step count continues the same curve.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


def poly_lr(step: int, total: int, power: float = 0.9) -> float:
    """``(1 - step/total) ** power`` (IRNet's schedule), 0 at and after ``total``."""
    if total <= 0:
        return 1.0
    return max(0.0, 1.0 - step / total) ** power


def linear_ramp(step: int, steps: int) -> float:
    """A loss or LR warm-up factor rising linearly from 0 to 1 over ``steps`` (1 when ``steps`` ≤ 0)."""
    if steps <= 0:
        return 1.0
    return min(1.0, max(0.0, step / steps))


def warmup_cosine(step: int, warmup: int, total: int, final: float = 0.2) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 down to ``final`` at ``total`` (MAL)."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    span = max(total - warmup, 1)
    t = min(1.0, (step - warmup) / span)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))


def check_finite(loss: torch.Tensor | float, *, stage: str, step: int, lr: float | None = None) -> None:
    """Stop a run whose loss is NaN or infinite, with one line saying where and what to try.

    Call it before ``backward``: the optimizer step that would poison the weights never happens, and the
    last good checkpoint in the run folder stays the one ``--resume`` continues from.
    """
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        from wsis_cli.runtime.errors import TrainingDivergedError

        at = f" (learning rate {lr:.3g})" if lr is not None else ""
        raise TrainingDivergedError(f"{stage}: training diverged at step {step}: the loss is {value}{at}; "
                                    "lower --lr (or use pretrained --weights) and start again")


def set_lr(optimizer: torch.optim.Optimizer, base_lrs: Sequence[float], factor: float) -> None:
    """Set each parameter group's LR to its base LR times ``factor``."""
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base * factor


class EMA:
    """An exponential-moving-average teacher: starts as an exact copy of the student.

    ``update`` does ``θ_t ← m·θ_t + (1−m)·θ_s`` over parameters and copies buffers (BN statistics are
    not averaged). The teacher never receives gradients.
    """

    def __init__(self, student: nn.Module, momentum: float = 0.996) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError("momentum must be in [0, 1]")
        self.momentum = momentum
        self.teacher = copy.deepcopy(_unwrap(student))
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        s = _unwrap(student)
        for t_p, s_p in zip(self.teacher.parameters(), s.parameters(), strict=True):
            t_p.mul_(self.momentum).add_(s_p.detach(), alpha=1.0 - self.momentum)
        for t_b, s_b in zip(self.teacher.buffers(), s.buffers(), strict=True):
            t_b.copy_(s_b)

    def state_dict(self) -> dict[str, Any]:
        return self.teacher.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (what to save and to average)."""
    return _unwrap(model)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states, so a resumed run draws the same augmentations."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_rng_states(ctx: Any) -> list[dict[str, Any]]:
    """Every rank's :func:`rng_state`, in rank order (a collective under DDP: every rank must call it).

    Ranks draw different numbers (RoI sampling, dropout and augmentations depend on each rank's own
    images), so a checkpoint of a data-parallel run must hold all of them for a resumed run to be exact.
    """
    return ctx.all_gather_object(rng_state())


def set_rank_rng_state(ckpt: dict[str, Any], ctx: Any) -> None:
    """Restore this rank's generators from a checkpoint written with :func:`rank_rng_states` (key
    ``rng_ranks``; ``rng`` alone is rank 0's, as older checkpoints hold).

    Resuming on another number of ranks cannot continue exactly (each rank's share of the batches changes):
    it warns and gives rank r the state of saved rank ``r mod saved``.
    """
    states = ckpt.get("rng_ranks") or [ckpt["rng"]]
    rank, world = int(getattr(ctx, "rank", 0)), int(getattr(ctx, "world_size", 1))
    if len(states) != world and rank == 0:
        from wsis_cli.runtime.log import get_logger

        get_logger("run").warning("the checkpoint holds the random state of %d rank(s), this run has %d: it "
                                  "continues, but not exactly as the interrupted run would have", len(states), world)
    set_rng_state(states[rank % len(states)])


class EpochBookkeeping:
    """What every training loop keeps around its steps: the epoch to start at, the step count, the epoch's
    mean losses, the ``last.pt`` checkpoint after each epoch and the progress bar.

    All learning stages (cam, irnet, mal-label, freemask ``--pretrain``/``--labeled``, train-student) train in
    epochs and continue from their run folder's ``last.pt`` with ``--resume``; keeping this in one place makes
    their checkpoints hold the same keys and come back the same way. The step itself (forward, losses,
    backward, EMA, accumulation) stays in each loop: that is where the stages differ.

    ``run`` is the :class:`~wsis_cli.io.run_dir.RunDir` (``None``: no checkpoint); ``state`` maps checkpoint
    keys to what is saved under them (anything with ``state_dict``/``load_state_dict``: the model, the
    optimizer, the loss scaler, an EMA teacher). ``progress`` counts ``unit`` = ``"steps"`` or ``"epochs"``.
    ``rank_rngs``: every rank's generators go into the checkpoint (:func:`rank_rng_states`; saving is then a
    collective), not only the main rank's. ``epoch_is_index``: the checkpoint's ``epoch`` is the finished
    epoch's 0-based index (mal-label's format) rather than the number of finished epochs.
    """

    def __init__(self, run: Any, state: Mapping[str, Any], epochs: int, *, ctx: Any = None,
                 steps_per_epoch: int = 1, progress: Any = None, label: str = "training", unit: str = "steps",
                 rank_rngs: bool = False, epoch_is_index: bool = False) -> None:
        from wsis_cli.runtime.progress import NullProgress

        self.run, self.state, self.total_epochs, self.ctx = run, dict(state), epochs, ctx
        self.steps_per_epoch = steps_per_epoch
        self.progress, self.label, self.unit = progress or NullProgress(), label, unit
        self.rank_rngs, self.epoch_is_index = rank_rngs, epoch_is_index
        self.start_epoch = 0
        self.step = 0  # optimizer steps over the whole run: what the LR schedules read
        self.sums: dict[str, torch.Tensor | float] = {}
        self.count = 0.0
        self._epoch_start = time.perf_counter()

    def resume(self) -> dict[str, Any] | None:
        """Load the run's ``last.pt`` when resuming: every ``state`` entry, the epoch, the step count and the
        RNG state. Returns the checkpoint (for a loop's own keys), or ``None`` when there is none."""
        ckpt = self.run.load_checkpoint() if self.run is not None else None
        if ckpt is None:
            return None
        for key, obj in self.state.items():
            obj.load_state_dict(ckpt[key])
        self.start_epoch = int(ckpt["epoch"]) + (1 if self.epoch_is_index else 0)
        if self.ctx is None or self.ctx.is_main:  # an epoch logged but not checkpointed is trained and logged again
            self.run.prune_metrics(self.start_epoch, index_based=self.epoch_is_index)
        # freemask's older checkpoints hold no step count: whole epochs of steps_per_epoch
        self.step = int(ckpt.get("step", self.start_epoch * self.steps_per_epoch))
        if self.rank_rngs:
            set_rank_rng_state(ckpt, self.ctx)
        else:
            set_rng_state(ckpt["rng"])
        return ckpt

    def epochs(self, sampler: Any = None, seed: int = 0) -> Iterator[int]:
        """The epochs left to train. Before each the loss sums and the clock restart and ``sampler`` (when
        given) is set to that epoch: a DistributedSampler's ``set_epoch``, or a single-process sampler's
        generator reseeded from ``(seed, epoch)``, so a resumed run draws the batches an uninterrupted one would."""
        todo = range(self.start_epoch, self.total_epochs)
        per = self.steps_per_epoch if self.unit == "steps" else 1
        self.progress.start(len(todo) * per, self.label, unit=self.unit)
        for epoch in todo:
            self.sums, self.count, self._epoch_start = {}, 0.0, time.perf_counter()
            if sampler is not None:
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)
                elif getattr(sampler, "generator", None) is not None:
                    sampler.generator.manual_seed(seed * 1_000_003 + epoch)
            yield epoch
            if self.unit == "epochs":
                self.progress.advance(1)
        self.progress.finish()

    def step_done(self) -> None:
        """Count one optimizer step (and advance a progress bar counting steps)."""
        self.step += 1
        if self.unit == "steps":
            self.progress.advance(1)

    def add(self, sums: Mapping[str, torch.Tensor | float], count: float = 1.0) -> None:
        """Add loss sums covering ``count`` samples or steps to the epoch's (tensors stay on their device:
        no synchronisation per step)."""
        for key, value in sums.items():
            value = value.detach().double() if isinstance(value, torch.Tensor) else float(value)
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += count

    def means(self, all_ranks: bool = True) -> dict[str, float]:
        """The epoch's sums over its count, each summed over every rank first (a collective under DDP);
        ``all_ranks=False``: this rank's own."""
        names = sorted(self.sums)
        device = self.ctx.device if self.ctx is not None else torch.device("cpu")
        packed = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float64, device=device) for k in names]
                             + [torch.tensor(self.count, dtype=torch.float64, device=device)])
        if all_ranks and self.ctx is not None:
            self.ctx.all_reduce_sum(packed)
        n = max(float(packed[-1]), 1.0)
        return {k: float(packed[i]) / n for i, k in enumerate(names)}

    @property
    def seconds(self) -> float:
        """Seconds since the current epoch started."""
        return time.perf_counter() - self._epoch_start

    def save(self, epochs_done: int, **extra: Any) -> None:
        """Write ``last.pt``: every ``state`` entry, the epoch to resume at (``epochs_done``), the step count,
        the RNG state and ``extra``. Only the main rank writes; with ``rank_rngs`` every rank must call it."""
        rngs = rank_rng_states(self.ctx) if self.rank_rngs else None
        if self.run is None or (self.ctx is not None and not self.ctx.is_main):
            return
        epoch = epochs_done - 1 if self.epoch_is_index else epochs_done
        rng = {"rng": rngs[0], "rng_ranks": rngs} if rngs is not None else {"rng": rng_state()}
        self.run.save_checkpoint({**{key: obj.state_dict() for key, obj in self.state.items()}, "epoch": epoch,
                                  "step": self.step, **rng, **extra})
