"""Small training helpers every learning stage shares: LR schedules, loss warm-ups, EMA teachers, RNG state.

Schedules return a multiplicative factor of the base learning rate for a 0-based step, so a resumed run
that restores its step count continues the same curve.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
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
