"""wsis_cli.io.stdio: JSON files and pipes, and every way JSON input can be bad (exit 3, file named)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from wsis_cli.io.stdio import display_name, read_json, write_json
from wsis_cli.runtime.errors import BadInputError, ExitCode


def bad(path: Path | str) -> BadInputError:
    with pytest.raises(BadInputError) as info:
        read_json(path)
    assert info.value.exit_code == ExitCode.BAD_INPUT
    return info.value


def test_round_trip_file(tmp_path: Path) -> None:
    obj = {"images": [{"id": 1, "file_name": "é.png"}], "n": 1.5, "ok": True, "none": None}
    write_json(obj, tmp_path / "a.json")
    assert read_json(tmp_path / "a.json") == obj
    assert read_json(str(tmp_path / "a.json")) == obj
    write_json(obj, tmp_path / "b.json", indent=2)
    assert (tmp_path / "b.json").read_text(encoding="utf-8").endswith("}\n")
    assert "\n  " in (tmp_path / "b.json").read_text(encoding="utf-8")


def test_write_replaces_atomically_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    write_json([1, 2], target)
    assert json.loads(target.read_text()) == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_dash_reads_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO('[{"image_id": 1}]'))
    assert read_json("-") == [{"image_id": 1}]


def test_dash_writes_stdout_only(capsys: pytest.CaptureFixture[str]) -> None:
    write_json({"a": 1}, "-")
    out = capsys.readouterr()
    assert json.loads(out.out) == {"a": 1}
    assert out.out.endswith("\n") and out.err == ""


def test_stdin_through_a_real_pipe() -> None:
    code = "from wsis_cli.io.stdio import read_json, write_json; write_json(read_json('-'), '-')"
    res = subprocess.run([sys.executable, "-c", code], input='{"x": [1, 2]}', capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"x": [1, 2]}


def test_display_name() -> None:
    assert display_name("-") == "<stdin>"
    assert display_name(Path("a/b.json")) == "a/b.json"


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}')
    assert read_json(p) == {"a": 1}


# ------------------------------------------------------------------------------------------ bad input


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "gt.json"
    p.write_text('{\n  "images": [1, 2,\n  ]\n}\n')
    e = bad(p)
    assert e.path == str(p)
    assert e.record == "line 3 column 3"
    assert "malformed JSON" in str(e)
    assert str(e).startswith(f"{p}: line 3 column 3: malformed JSON")


def test_truncated_json(tmp_path: Path) -> None:
    p = tmp_path / "cut.json"
    p.write_text('{"images": [{"id": 1')
    e = bad(p)
    assert e.record is not None and e.record.startswith("line 1 column")


@pytest.mark.parametrize("text", ["", "   \n\t\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    p = tmp_path / "empty.json"
    p.write_text(text)
    e = bad(p)
    assert "empty file" in str(e) and str(p) in str(e)


def test_empty_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    e = bad("-")
    assert e.path == "<stdin>" and "empty" in e.message


def test_malformed_stdin_names_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("[1, 2"))
    e = bad("-")
    assert str(e).startswith("<stdin>: line 1 column")


def test_non_utf8(tmp_path: Path) -> None:
    p = tmp_path / "latin1.json"
    p.write_bytes('{"name": "café"}'.encode("latin-1"))
    e = bad(p)
    assert "not UTF-8" in str(e) and "byte 13" in str(e) and str(p) in str(e)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert "file not found" in str(bad(tmp_path / "nope.json"))
    assert "not a file" in str(bad(tmp_path))


def test_trailing_garbage(tmp_path: Path) -> None:
    p = tmp_path / "two.json"
    p.write_text('{"a": 1}\n{"b": 2}\n')
    e = bad(p)
    assert e.record == "line 2 column 1" and "Extra data" in e.message


def test_write_into_missing_folder_is_bad_output(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        write_json({}, tmp_path / "missing" / "out.json")
    assert not (tmp_path / "missing").exists()
