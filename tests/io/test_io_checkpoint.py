"""ImageCheckpoint: per-image progress of a stage, resumable after a crash, memory-only for stdout."""

from __future__ import annotations

import os
from collections.abc import KeysView

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


def _interrupted(out, settings=None, inputs=None) -> bytes:
    with pytest.raises(RuntimeError), ImageCheckpoint(out, "stage", settings or {}, resume=False,
                                                      inputs=inputs) as ckpt:
        ckpt.add(1, _recs(1, 1))
        ckpt.add(2, _recs(2, 2))
        raise RuntimeError
    return partial_name(out).read_bytes()


def test_resume_appends_and_never_rewrites_finished_lines(tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    before = _interrupted(out)
    opened = []
    real_open = open

    def spy(path, mode="r", *a, **k):
        opened.append(mode)
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(RuntimeError), ImageCheckpoint(out, "stage", {}, resume=True) as ckpt:
        ckpt.add(3, _recs(3, 3))
        raise RuntimeError
    assert "w" not in opened and "a" in opened
    after = partial_name(out).read_bytes()
    assert after.startswith(before) and after.count(b"\n") == 4


def test_resume_cuts_only_a_torn_tail(tmp_path):
    out = tmp_path / "out.json"
    before = _interrupted(out)
    partial_name(out).write_bytes(before + b'{"image_id": 3, "rec')
    with pytest.raises(RuntimeError), ImageCheckpoint(out, "stage", {}, resume=True) as ckpt:
        assert set(ckpt.done) == {1, 2}
        raise RuntimeError
    assert partial_name(out).read_bytes() == before


def test_resume_refuses_a_changed_input(tmp_path):
    out, src, h5 = tmp_path / "out.json", tmp_path / "in.json", tmp_path / "cams.h5"
    src.write_text('{"a": 1}')
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"0" * 10)
    _interrupted(out, inputs={"pseudo": src, "cams": h5, "images": tmp_path, "stdin": "-"})
    os.utime(src, ns=(1, 1))  # same content, other time: the same input
    with ImageCheckpoint(out, "stage", {}, resume=True, inputs={"pseudo": src, "cams": h5}) as ckpt:
        assert set(ckpt.done) == {1, 2}
    _interrupted(out, inputs={"pseudo": src, "cams": h5})
    src.write_text('{"a": 2}')
    with pytest.raises(BadInputError, match=r"in\.json: changed since the interrupted run \(its content"):
        ImageCheckpoint(out, "stage", {}, resume=True, inputs={"pseudo": src, "cams": h5})
    src.write_text('{"a": 1}')
    os.utime(h5, ns=(5, 5))  # HDF5 is not hashed: its time tells
    with pytest.raises(BadInputError, match=r"cams\.h5: changed .*modification time"):
        ImageCheckpoint(out, "stage", {}, resume=True, inputs={"pseudo": src, "cams": h5})


def test_done_is_a_live_view_not_a_copy(tmp_path):
    """#18: stages test membership per image; a copy per access made that quadratic."""
    with ImageCheckpoint(tmp_path / "out.json", "stage", {}, resume=False) as ckpt:
        done = ckpt.done
        ckpt.add(7, _recs(7, 1))
        assert 7 in done and 7 in ckpt and 8 not in ckpt
        assert isinstance(done, KeysView)
