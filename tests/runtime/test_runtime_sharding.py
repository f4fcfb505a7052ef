"""Shards: parsing, where they come from (flag, SLURM array, SLURM tasks, torchrun), and exact splits."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from wsis_cli.runtime.errors import UsageError
from wsis_cli.runtime.sharding import (
    Shard,
    parse_shard,
    resolve_shard,
    shard_ids,
    shard_suffix,
    with_shard_suffix,
)

ALL = {
    "SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1",
    "SLURM_PROCID": "2", "SLURM_NTASKS": "4",
    "RANK": "1", "WORLD_SIZE": "3",
}


def test_parse() -> None:
    assert parse_shard("0/4") == Shard(0, 4)
    assert parse_shard(" 3 / 4 ") == Shard(3, 4)
    assert str(parse_shard("2/5")) == "2/5"
    assert parse_shard("0/1").is_whole


@pytest.mark.parametrize("spec", ["4/4", "-1/4", "0/0", "1", "a/b", "1/2/3", "", "1/-2"])
def test_parse_rejects(spec: str) -> None:
    with pytest.raises(UsageError, match="--shard|0 <= I < N"):
        parse_shard(spec)


def test_resolution_order() -> None:
    assert resolve_shard("1/2", ALL) == Shard(1, 2)
    assert resolve_shard(None, ALL) == Shard(4, 8)  # array task 5 of tasks 1..8
    env = {k: v for k, v in ALL.items() if not k.startswith("SLURM_ARRAY")}
    assert resolve_shard(None, env) == Shard(2, 4)
    env = {k: v for k, v in env.items() if not k.startswith("SLURM")}
    assert resolve_shard(None, env) == Shard(1, 3)
    assert resolve_shard(None, {}) == Shard(0, 1)
    assert resolve_shard(None, {}).source == "default"
    assert resolve_shard(None, ALL).source.startswith("SLURM_ARRAY_TASK_ID")


def test_incomplete_pairs_are_ignored() -> None:
    assert resolve_shard(None, {"SLURM_NTASKS": "4", "RANK": "0", "WORLD_SIZE": "2"}) == Shard(0, 2)
    assert resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "3"}) == Shard(0, 1)


def test_slurm_arrays() -> None:
    assert resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}) == Shard(0, 4)
    stepped = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0",
               "SLURM_ARRAY_TASK_STEP": "4"}
    assert resolve_shard(None, stepped) == Shard(3, 4)
    irregular = {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"}
    with pytest.raises(UsageError, match="--shard I/N explicitly"):
        resolve_shard(None, irregular)
    assert resolve_shard("2/3", irregular) == Shard(2, 3)


def test_bad_environment() -> None:
    with pytest.raises(UsageError, match="RANK='x' is not an integer"):
        resolve_shard(None, {"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(UsageError, match="RANK/WORLD_SIZE"):
        resolve_shard(None, {"RANK": "2", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_cover_every_id_exactly_once(count: int) -> None:
    ids = list(range(1, 101)) + [1000, 5, 17]  # duplicates are kept once
    random.Random(count).shuffle(ids)
    parts = [shard_ids(ids, Shard(i, count)) for i in range(count)]
    flat = [x for p in parts for x in p]
    assert sorted(flat) == sorted(set(ids)) and len(flat) == len(set(ids))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert parts == [shard_ids(sorted(ids), Shard(i, count)) for i in range(count)]  # order-independent


def test_suffixes() -> None:
    assert shard_suffix(Shard(0, 4)) == ".shard-0-of-4"
    assert shard_suffix(Shard()) == ""
    assert with_shard_suffix("out/cams.h5", Shard(1, 4)) == Path("out/cams.shard-1-of-4.h5")
    assert with_shard_suffix("pseudo", Shard(1, 2)) == Path("pseudo.shard-1-of-2")
    assert with_shard_suffix("cams.h5", Shard()) == Path("cams.h5")
