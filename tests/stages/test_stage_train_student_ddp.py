"""train-student data-parallel: two Gloo ranks on the CPU stay in sync and only rank 0 writes the run folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from wsis_cli.io.coco import load_dataset
from wsis_cli.runtime.distributed import init_distributed
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
