"""wsis_cli.io.atomic: outputs appear whole or not at all, and unwritable places fail early (exit 3)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from wsis_cli.io.atomic import atomic_path, atomic_write_text, check_output_path, finalize, partial_name
from wsis_cli.runtime.errors import BadInputError, ExitCode

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_file_appears_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with atomic_write_text(target) as fh:
        fh.write("partial")
        assert not target.exists()  # still under its temporary name
        assert len(listing(tmp_path)) == 1 and listing(tmp_path)[0].startswith(".out.json.")
    assert target.read_text() == "partial"
    assert listing(tmp_path) == ["out.json"]


def test_exception_removes_temp_and_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("previous result")
    with pytest.raises(RuntimeError), atomic_write_text(target) as fh:
        fh.write("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "previous result"
    assert listing(tmp_path) == ["out.json"]


def test_keyboard_interrupt_also_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
        raise KeyboardInterrupt
    assert listing(tmp_path) == []


def test_atomic_path_yields_a_sibling(tmp_path: Path) -> None:
    target = tmp_path / "masks.h5"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data"


def test_new_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_write_text(tmp_path / "a.txt") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_replacing_keeps_the_existing_mode(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    target.chmod(0o640)
    with atomic_write_text(target) as fh:
        fh.write("new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_partial_name_and_finalize(tmp_path: Path) -> None:
    target = tmp_path / "cams.h5"
    part = partial_name(target)
    assert part == tmp_path / "cams.h5.partial"
    part.write_bytes(b"done")
    finalize(part, target)
    assert target.read_bytes() == b"done" and not part.exists()


# ------------------------------------------------------------------------------- check_output_path


def test_check_output_path_accepts_writable_places(tmp_path: Path) -> None:
    assert check_output_path(tmp_path / "new.json") == tmp_path / "new.json"
    (tmp_path / "exists.json").write_text("{}")
    assert check_output_path(tmp_path / "exists.json") == tmp_path / "exists.json"
    assert check_output_path(tmp_path / "newdir", is_dir=True) == tmp_path / "newdir"
    assert check_output_path(tmp_path, is_dir=True) == tmp_path


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as info:
        check_output_path(tmp_path / "no" / "out.json")
    assert info.value.exit_code == ExitCode.BAD_INPUT
    assert str(tmp_path / "no") in str(info.value) and "does not exist" in str(info.value)
    with pytest.raises(BadInputError, match="does not exist"), atomic_write_text(tmp_path / "no" / "x.json"):
        pass
    assert not (tmp_path / "no").exists()


def test_folder_where_a_file_is_expected_and_vice_versa(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="is a folder"):
        check_output_path(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(BadInputError, match="not a folder"):
        check_output_path(tmp_path / "file", is_dir=True)
    # a "folder" that is really a file cannot hold outputs either (works even as root)
    with pytest.raises(BadInputError):
        check_output_path(tmp_path / "file" / "out.json")


@pytest.mark.skipif(IS_ROOT, reason="root ignores file permissions")
def test_read_only_folder(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(BadInputError, match="no permission"):
            check_output_path(ro / "out.json")
        with pytest.raises(BadInputError, match="no permission"), atomic_write_text(ro / "out.json"):
            pass
    finally:
        ro.chmod(0o700)
    assert listing(ro) == []


def test_no_permission_branch_even_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same refusal, with os.access faked, so it is exercised where permissions are not enforced."""
    import wsis_cli.io.atomic as atomic

    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)
    with pytest.raises(BadInputError) as info:
        check_output_path(tmp_path / "out.json")
    assert str(info.value) == f"{tmp_path / 'out.json'}: no permission to write in {tmp_path}"
