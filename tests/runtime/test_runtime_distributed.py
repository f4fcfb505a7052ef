"""Data-parallel context: single process by default; two Gloo ranks on CPU agree on all-reduced sums."""

import os
import socket

import torch
import torch.multiprocessing as mp

from wsis_cli.runtime.distributed import init_distributed


def test_single_process_without_launcher(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu")
    assert not ctx.enabled and ctx.is_main and ctx.world_size == 1
    model = torch.nn.Linear(2, 2)
    assert ctx.wrap(model) is model
    assert torch.equal(ctx.all_reduce_sum(torch.ones(2)), torch.ones(2))
    assert len(list(ctx.sampler(list(range(5)), shuffle=True, seed=0))) == 5


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update({"SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    ctx = init_distributed("cpu")
    total = ctx.all_reduce_sum(torch.tensor([float(rank + 1)]))
    share = list(ctx.sampler(list(range(10)), shuffle=False, seed=0))
    torch.save({"total": total.item(), "share": share, "rank": ctx.rank}, f"{out}/{rank}.pt")
    ctx.shutdown()


def test_two_ranks_under_srun_variables(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert r0["total"] == r1["total"] == 3.0
    assert sorted(r0["share"] + r1["share"]) == list(range(10)) and not set(r0["share"]) & set(r1["share"])
