"""train-student data-parallel: two Gloo ranks on the CPU stay in sync, only rank 0 writes the run folder, and a
run stopped by SIGUSR1 and resumed equals the uninterrupted run (issue #17, items 9 and 10)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from wsis_cli.io.coco import load_dataset
from wsis_cli.io.run_dir import RunDir
from wsis_cli.runtime.distributed import init_distributed
from wsis_cli.runtime.errors import Terminated
from wsis_cli.stages.student import stage
from wsis_cli.stages.synth import stage as synth


def _worker(rank: int, port: int, root: str, run: str, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    ds = load_dataset(Path(root) / "gt.json")
    settings = stage.StudentSettings(arch="resnet18-fpn", weights="none", min_size=64, max_size=64, epochs=1,
                                     batch_size=2, lr=0.02, warmup_iters=1, rois_per_image=16, mask_head_channels=16,
                                     workers=0)
    result = stage.train_rounds(settings, ds, str(Path(root) / "images"), run, ctx)
    torch.save({"state": result.model.state_dict(), "history": result.history}, f"{out}/{rank}.pt")
    ctx.shutdown()


@pytest.mark.slow
def test_two_ranks_train_in_sync(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    synth.run(synth.SynthSettings(num_images=4, height=64, width=64, classes=1, min_instances=1, max_instances=2,
                                  seed=4), synth.SynthJob(root))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    mp.spawn(_worker, args=(port, str(root), str(run), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in (0, 1))
    for k, v in r0["state"].items():
        if "running_" in k or "num_batches" in k:
            continue  # BN statistics: DDP broadcasts rank 0's before each forward; each rank's last update is its own
        assert torch.allclose(v.float(), r1["state"][k].float(), atol=1e-5), k
    # 4 images, global batch 2 over 2 ranks: 2 steps per epoch on each rank
    assert r0["history"][0]["step"] == 2 and r0["history"][0]["loss"] == pytest.approx(r1["history"][0]["loss"])
    assert (run / "model.pt").exists() and len((run / "metrics.jsonl").read_text().splitlines()) == 1


def _settings(epochs: int) -> stage.StudentSettings:
    return stage.StudentSettings(arch="resnet18-fpn", weights="none", min_size=64, max_size=64, epochs=epochs,
                                 batch_size=2, lr=0.02, warmup_iters=1, rois_per_image=16, mask_head_channels=16,
                                 workers=0)


def _resume_worker(rank: int, port: int, root: str, run: str, out: str, mode: str) -> None:
    """``mode``: ``full`` trains uninterrupted; ``stop`` gets SIGUSR1 on rank 1 only, in the second step of
    epoch 2, with rank 0 slow to write its checkpoint; ``resume`` continues with --resume."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    torch.manual_seed(0)  # as seed_everything does in the CLI: both ranks start from one state
    ctx = init_distributed("cpu")
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("wsis").addHandler(handler)
    logging.getLogger("wsis").setLevel(logging.INFO)
    report: dict = {"said": said}
    if mode == "stop":
        real_step, real_save = stage.set_loss_step, RunDir.save_checkpoint

        def signal_at_step_2(model: torch.nn.Module, step: int) -> None:
            if step == 2 and rank == 1:
                os.kill(os.getpid(), signal.SIGUSR1)
            real_step(model, step)

        def slow_save(self: RunDir, state: dict) -> object:
            if state.get("batch"):  # the preemption save: rank 1 must wait for it
                time.sleep(3)
            return real_save(self, state)

        stage.set_loss_step = signal_at_step_2  # type: ignore[assignment]
        RunDir.save_checkpoint = slow_save  # type: ignore[method-assign]
    ds = load_dataset(Path(root) / "gt.json")
    try:
        result = stage.train_rounds(_settings(3), ds, str(Path(root) / "images"), run, ctx, resume=mode == "resume")
        report["history"] = result.history
    except Terminated as e:
        report["terminated"] = str(e)
        report["checkpoint_written"] = (Path(run) / "last.pt").exists()
    torch.save(report, f"{out}/{mode}-{rank}.pt")
    ctx.shutdown()


@pytest.mark.slow
def test_two_ranks_stopped_by_sigusr1_resume_exactly(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    synth.run(synth.SynthSettings(num_images=4, height=64, width=64, classes=1, min_instances=1, max_instances=3,
                                  seed=4), synth.SynthJob(root))

    def spawn(run: Path, mode: str) -> list[dict]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_resume_worker, args=(port, str(root), str(run), str(tmp_path), mode), nprocs=2, join=True)
        return [torch.load(tmp_path / f"{mode}-{r}.pt", weights_only=False) for r in (0, 1)]

    full = spawn(tmp_path / "full", "full")
    stopped = spawn(tmp_path / "stopped", "stop")
    # item 10: every rank stops, rank 1 only after rank 0 has written, and only rank 0 says so
    assert [r["terminated"] for r in stopped] == ["a signal to another rank", "SIGUSR1"]
    assert all(r["checkpoint_written"] for r in stopped)
    assert [sum("checkpoint saved" in m for m in r["said"]) for r in stopped] == [1, 0]
    ckpt = torch.load(tmp_path / "stopped" / "last.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (1, 1, 3) and len(ckpt["rng_ranks"]) == 2
    # item 9: every rank continues from its own random state, so the losses are the uninterrupted run's
    resumed = spawn(tmp_path / "stopped", "resume")
    want = [h["loss"] for h in full[0]["history"]]
    assert [h["loss"] for h in resumed[0]["history"]] == pytest.approx(want, rel=1e-5)
    assert [h["loss"] for h in resumed[1]["history"]] == pytest.approx(want, rel=1e-5)
