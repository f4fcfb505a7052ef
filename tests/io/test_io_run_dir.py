"""Run folders: run.json, atomic checkpoints, resume checks, model.pt for --checkpoint."""

import json

import pytest
import torch

from wsis_cli.io.run_dir import RunDir, default_run_dir, read_model
from wsis_cli.runtime.errors import BadInputError, UsageError


def test_default_run_dir_sits_beside_the_output(tmp_path):
    assert default_run_dir(tmp_path / "cams.h5", "cam") == tmp_path / "cams.cam-run"
    assert default_run_dir("-", "irnet").name == "wsis-irnet-run"


def test_checkpoint_roundtrip_and_resume(tmp_path):
    run = RunDir(tmp_path / "run", "cam", {"lr": 0.1, "epochs": 3}, resume=False)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["settings"]["lr"] == 0.1
    assert run.load_checkpoint() is None
    run.save_checkpoint({"epoch": 1, "model": {"w": torch.ones(2)}})
    run.log_metrics({"epoch": 1, "loss": 0.5})
    again = RunDir(tmp_path / "run", "cam", {"lr": 0.1, "epochs": 5}, resume=True)  # more epochs is fine
    state = again.load_checkpoint()
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.ones(2))
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1


def test_prune_metrics_drops_epochs_after_the_checkpoint_and_torn_lines(tmp_path):
    run = RunDir(tmp_path / "run", "irnet", {"lr": 0.1}, resume=False)
    for epoch in (1, 2, 3):
        run.log_metrics({"epoch": epoch, "loss": 1.0 / epoch})
    run.log_metrics({"note": "no epoch"})
    with open(tmp_path / "run" / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 4, "lo')  # killed mid-write
    assert run.prune_metrics(2) == 2
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}, {"note": "no epoch"}]
    # mal-label logs 0-based indices: after two finished epochs index 1 stays and index 2 goes
    assert run.prune_metrics(2, index_based=True) == 1
    assert run.prune_metrics(2, index_based=True) == 0


def test_existing_run_needs_resume_and_same_settings(tmp_path):
    run = RunDir(tmp_path / "run", "cam", {"lr": 0.1}, resume=False)
    run.save_checkpoint({"epoch": 0})
    with pytest.raises(UsageError, match="--resume"):
        RunDir(tmp_path / "run", "cam", {"lr": 0.1}, resume=False)
    with pytest.raises(BadInputError, match="lr"):
        RunDir(tmp_path / "run", "cam", {"lr": 0.2}, resume=True)
    with pytest.raises(BadInputError, match="stage"):
        RunDir(tmp_path / "run", "irnet", {"lr": 0.1}, resume=True)


def test_resume_into_a_folder_holding_only_a_nested_run(tmp_path):
    # freemask --pretrain --labeled interrupted during pre-training: <run>/pretrain/ exists, <run>/run.json not
    inner = RunDir(tmp_path / "run" / "pretrain", "freemask", {"epochs": 2}, resume=False)
    inner.save_checkpoint({"epoch": 1})
    outer = RunDir(tmp_path / "run", "freemask", {"epochs": 3}, resume=True)
    assert outer.load_checkpoint() is None
    assert json.loads((tmp_path / "run" / "run.json").read_text())["settings"] == {"epochs": 3}
    # anything else in the folder still makes it not a run to resume
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(BadInputError, match="no run.json"):
        RunDir(tmp_path / "other", "freemask", {}, resume=True)


def test_model_file_for_checkpoint_flag(tmp_path):
    run = RunDir(tmp_path / "run", "cam", {"arch": "resnet18"}, resume=False)
    path = run.save_model({"w": torch.zeros(3)}, {"category_ids": [1, 2]})
    obj = read_model(path, "cam")
    assert obj["category_ids"] == [1, 2] and obj["settings"]["arch"] == "resnet18"
    with pytest.raises(BadInputError, match="stage 'cam'"):
        read_model(path, "irnet")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 20)
    with pytest.raises(BadInputError, match="junk.pt"):
        read_model(tmp_path / "junk.pt", "cam")
    torch.save({"w": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(BadInputError, match="not a wsis model"):
        read_model(tmp_path / "plain.pt", "cam")


def test_only_rank_0_writes_run_json(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    RunDir(tmp_path / "worker", "cam", {"lr": 0.1}, resume=False)
    assert (tmp_path / "worker").is_dir() and not (tmp_path / "worker" / "run.json").exists()
    monkeypatch.setenv("RANK", "0")
    RunDir(tmp_path / "main", "cam", {"lr": 0.1}, resume=False)
    assert (tmp_path / "main" / "run.json").exists()
    RunDir(tmp_path / "explicit", "cam", {"lr": 0.1}, resume=False, main=False)
    assert not (tmp_path / "explicit" / "run.json").exists()
