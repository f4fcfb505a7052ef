"""`mal-label` data-parallel training: two Gloo ranks on the CPU train what one process trains on the same
global batches, and only rank 0 writes the run folder and the labels."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler, Sampler

from wsis_cli.io import coco
from wsis_cli.runtime.distributed import DistContext
from wsis_cli.stages.mal.stage import DEMO_SETTINGS, MalJob, run
from wsis_cli.stages.synth import stage as synth

PER_RANK_BATCH = 2
# a LayerNorm encoder: BatchNorm statistics would legitimately differ between a batch of 2 and one of 4
SETTINGS = replace(DEMO_SETTINGS, encoder="vit_tiny", weights="none", encoder_depth=1, crop_size=32,
                   decoder_dim=8, epochs=2, batch_size=PER_RANK_BATCH, lr=1e-3, warmup_epochs=0.5,
                   crf_iterations=3, min_train_area=16.0, amp=False)


def _job(root: Path, out: Path, run_dir: Path) -> MalJob:
    return MalJob(boxes=str(root / "even.json"), images=str(root / "images"), out=str(out), run=str(run_dir),
                  device="cpu")


def _worker(rank: int, port: int, root: str, out_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    out = Path(out_dir)
    summary = run(SETTINGS, _job(Path(root), out / "ddp.json", out / "ddp-run"))  # joins the group itself
    (out / f"rank{rank}.json").write_text(json.dumps({"boxes": summary.boxes, "trained_on": summary.trained_on}))


class _TwoRankOrder(Sampler):
    """One process visiting the boxes as two ranks do together: batch k = rank 0's batch k + rank 1's."""

    def __init__(self, dataset, seed: int) -> None:
        self.ranks = [DistributedSampler(dataset, num_replicas=2, rank=r, shuffle=True, seed=seed) for r in (0, 1)]

    def set_epoch(self, epoch: int) -> None:
        for s in self.ranks:
            s.set_epoch(epoch)

    def __iter__(self):
        parts = [list(s) for s in self.ranks]
        order = []
        for k in range(0, len(parts[0]), PER_RANK_BATCH):
            for p in parts:
                order += p[k : k + PER_RANK_BATCH]
        return iter(order)

    def __len__(self) -> int:
        return sum(len(s) for s in self.ranks)


@pytest.mark.slow
def test_two_ranks_train_like_one_process_on_the_same_batches(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "synth"
    synth.run(synth.SynthSettings(num_images=4, height=64, width=64, seed=5), synth.SynthJob(root))
    boxes = coco.load_dataset(root / "boxes.json")
    # an even number of boxes: DistributedSampler would otherwise repeat one to even the ranks out
    anns = boxes.annotations[: len(boxes.annotations) // 2 * 2]
    coco.write_dataset(boxes.with_annotations(anns), root / "even.json")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(root), str(tmp_path)), nprocs=2, join=True)

    # the same global batches (2 x 2) in one process (batch 4)
    monkeypatch.setattr(DistContext, "sampler", lambda self, dataset, *, shuffle, seed, drop_last=False:
                        _TwoRankOrder(dataset, seed))
    one = replace(SETTINGS, batch_size=2 * PER_RANK_BATCH)
    run(one, _job(root, tmp_path / "one.json", tmp_path / "one-run"))

    ddp, single = (torch.load(tmp_path / f"{n}-run" / "model.pt", weights_only=False) for n in ("ddp", "one"))
    for part in ("model", "teacher"):
        for k, v in single[part].items():
            assert torch.allclose(ddp[part][k], v, atol=1e-5, rtol=1e-4), (part, k)
    lines = [json.loads(x) for x in (tmp_path / "ddp-run" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "one-run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == SETTINGS.epochs  # rank 0 alone logged (one line per epoch)
    assert lines[-1]["step"] >= 2 * SETTINGS.epochs  # several optimiser steps, not a trivial match
    for a, b in zip(lines, ref, strict=True):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    # rank 0 trained and labelled every box; rank 1 trained on the same boxes and wrote nothing
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == {"boxes": len(anns), "trained_on": r1["trained_on"]} and r1["boxes"] == 0
    assert sorted(p.name for p in tmp_path.glob("ddp*")) == ["ddp-run", "ddp.json"]
    labelled = coco.load_dataset(tmp_path / "ddp.json").annotations
    assert [a["id"] for a in labelled] == [a["id"] for a in anns]
