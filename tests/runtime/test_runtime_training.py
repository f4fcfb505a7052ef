"""Schedules, EMA teacher, RNG state round trip."""

import random

import pytest
import torch

from wsis_cli.runtime.training import (
    EMA,
    linear_ramp,
    poly_lr,
    rng_state,
    set_lr,
    set_rng_state,
    warmup_cosine,
)


def test_schedules_endpoints():
    assert poly_lr(0, 100) == 1.0 and poly_lr(100, 100) == 0.0 and 0 < poly_lr(50, 100) < 1
    assert linear_ramp(0, 10) == 0.0 and linear_ramp(5, 10) == 0.5 and linear_ramp(50, 10) == 1.0
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(100, 10, 100, final=0.2) == pytest.approx(0.2)
    vals = [warmup_cosine(s, 10, 100) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(vals, vals[1:], strict=False))


def test_set_lr_scales_each_group():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 0.1}, {"params": [p2], "lr": 1.0}])
    set_lr(opt, [0.1, 1.0], 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.5]


def test_ema_starts_as_copy_and_moves_towards_student():
    student = torch.nn.Linear(3, 2)
    ema = EMA(student, momentum=0.9)
    assert all(torch.equal(a, b) for a, b in zip(ema.teacher.parameters(), student.parameters(), strict=True))
    assert not any(p.requires_grad for p in ema.teacher.parameters())
    before = ema.teacher.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    ema.update(student)
    assert torch.allclose(ema.teacher.weight, before + 0.1)


def test_rng_state_roundtrip():
    state = rng_state()
    a = (random.random(), torch.rand(2))
    set_rng_state(state)
    b = (random.random(), torch.rand(2))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_check_finite_stops_a_diverged_run():
    from wsis_cli.runtime.errors import TrainingDivergedError
    from wsis_cli.runtime.training import check_finite

    check_finite(torch.tensor(1.5), stage="cam", step=3)
    with pytest.raises(TrainingDivergedError, match="cam: training diverged at step 7.*--lr"):
        check_finite(torch.tensor(float("nan")), stage="cam", step=7, lr=0.5)
    with pytest.raises(TrainingDivergedError):
        check_finite(float("inf"), stage="irnet", step=1)


class _Run:
    """A run folder in memory: what EpochBookkeeping reads and writes."""

    def __init__(self) -> None:
        self.saved: dict | None = None
        self.pruned: tuple | None = None

    def prune_metrics(self, finished: int, index_based: bool = False) -> int:
        self.pruned = (finished, index_based)
        return 0

    def save_checkpoint(self, state: dict) -> None:
        self.saved = state

    def load_checkpoint(self) -> dict | None:
        return self.saved


class _Progress:
    def __init__(self) -> None:
        self.calls: list = []

    def start(self, total, description, unit="images") -> None:
        self.calls.append(("start", total, unit))

    def advance(self, n: int = 1) -> None:
        self.calls.append(("advance", n))

    def finish(self) -> None:
        self.calls.append(("finish",))


def test_epoch_bookkeeping_saves_and_resumes_where_it_stopped():
    from wsis_cli.runtime.training import EpochBookkeeping

    run, model = _Run(), torch.nn.Linear(2, 1)
    book = EpochBookkeeping(run, {"model": model}, 3, steps_per_epoch=2)
    assert book.resume() is None
    for epoch in book.epochs():
        for loss in (1.0, 3.0):
            book.step_done()
            book.add({"loss": torch.tensor(loss)})
        assert book.means() == {"loss": 2.0}
        book.save(epoch + 1, extra="kept")
        if epoch == 1:
            break
    assert (run.saved["epoch"], run.saved["step"], run.saved["extra"]) == (2, 4, "kept")
    draw = torch.rand(3)  # what the interrupted run would draw next
    with torch.no_grad():
        model.weight.zero_()
    again = EpochBookkeeping(run, {"model": model}, 3, steps_per_epoch=2)
    assert again.resume() is run.saved
    assert (again.start_epoch, again.step) == (2, 4) and list(again.epochs()) == [2]
    assert run.pruned == (2, False)  # metrics of epochs after the checkpoint's go
    assert torch.equal(model.weight, run.saved["model"]["weight"]) and torch.equal(torch.rand(3), draw)


def test_epoch_bookkeeping_epoch_index_format_and_progress():
    from wsis_cli.runtime.training import EpochBookkeeping

    run, progress = _Run(), _Progress()
    book = EpochBookkeeping(run, {}, 2, steps_per_epoch=3, progress=progress, unit="epochs", epoch_is_index=True)
    for epoch in book.epochs():
        book.save(epoch + 1)
    assert run.saved["epoch"] == 1  # mal-label's format: the last finished epoch's index
    assert progress.calls == [("start", 2, "epochs"), ("advance", 1), ("advance", 1), ("finish",)]
    resumed = EpochBookkeeping(run, {}, 4, steps_per_epoch=3, epoch_is_index=True)
    resumed.resume()
    assert resumed.start_epoch == 2 and list(resumed.epochs()) == [2, 3] and run.pruned == (2, True)
    del run.saved["step"]  # freemask's older checkpoints: whole epochs of steps
    resumed.resume()
    assert resumed.step == 6
