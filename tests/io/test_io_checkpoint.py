"""ImageCheckpoint: per-image progress of a stage, resumable after a crash, memory-only for stdout."""

from __future__ import annotations

import pytest

from wsis_cli.io.atomic import partial_name
from wsis_cli.io.checkpoint import ImageCheckpoint
from wsis_cli.runtime.errors import BadInputError


def _recs(image_id: int, *ids: int) -> list[dict]:
    return [{"id": i, "image_id": image_id} for i in ids]


def test_crash_keeps_partial_and_resume_continues(tmp_path):
    out = tmp_path / "out.json"
    with pytest.raises(RuntimeError), ImageCheckpoint(out, "stage", {"a": 1}, resume=False) as ckpt:
        ckpt.add(1, _recs(1, 5, 2))
        ckpt.add(2, _recs(2, 3))
        raise RuntimeError("killed")
    assert partial_name(out).is_file()
    # a line cut short by the crash is simply redone
    with open(partial_name(out), "a", encoding="utf-8") as fh:
        fh.write('{"image_id": 3, "recor')
    with ImageCheckpoint(out, "stage", {"a": 1}, resume=True) as ckpt:
        assert ckpt.done == {1, 2}
        ckpt.add(3, _recs(3, 4))
        assert [r["id"] for r in ckpt.annotations()] == [2, 3, 4, 5]
    assert not partial_name(out).exists()


def test_without_resume_starts_afresh(tmp_path):
    out = tmp_path / "out.json"
    with pytest.raises(RuntimeError), ImageCheckpoint(out, "stage", {}, resume=False) as ckpt:
        ckpt.add(1, _recs(1, 1))
        raise RuntimeError
    with ImageCheckpoint(out, "stage", {}, resume=False) as ckpt:
        assert ckpt.done == set()


@pytest.mark.parametrize(("stage", "settings"), [("other", {"a": 1}), ("stage", {"a": 2})])
def test_resume_refuses_other_stage_or_settings(tmp_path, stage, settings):
    out = tmp_path / "out.json"
    with pytest.raises(RuntimeError), ImageCheckpoint(out, "stage", {"a": 1}, resume=False) as ckpt:
        ckpt.add(1, _recs(1, 1))
        raise RuntimeError
    with pytest.raises(BadInputError, match="partial"):
        ImageCheckpoint(out, stage, settings, resume=True)


def test_stdout_is_memory_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with ImageCheckpoint("-", "stage", {}, resume=True) as ckpt:
        ckpt.add(7, _recs(7, 9, 8))
        assert ckpt.done == {7}
        assert [r["id"] for r in ckpt.annotations()] == [8, 9]
    assert list(tmp_path.iterdir()) == []
