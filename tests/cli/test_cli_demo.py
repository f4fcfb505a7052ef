"""`wsis demo` prints its table on stderr and keeps files only when asked."""

from __future__ import annotations

import subprocess
import sys


def _wsis(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "wsis_cli", *args], capture_output=True, text=True, cwd=cwd)


def test_demo_prints_the_table_on_stderr_and_nothing_on_stdout(tmp_path):
    r = _wsis("demo", "-n", "4", "--size", "64x80", "--methods", "box-filled", "--no-students", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert "box-filled" in r.stderr and "mean IoU" in r.stderr
    assert list(tmp_path.iterdir()) == []  # the default work folder is temporary


def test_demo_out_keeps_every_file(tmp_path):
    out = tmp_path / "demo"
    r = _wsis("demo", "-n", "4", "--size", "64x64", "--methods", "box-filled", "--student-epochs", "1", "--out",
              str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert (out / "report.json").is_file() and (out / "data" / "gt.json").is_file()
    # students are trained by default: the upper bound and one on the path's labels, each with its run folder
    assert (out / "student-gt" / "model.pt").is_file() and (out / "student-box-filled" / "model.pt").is_file()
    assert (out / "student-gt.json").is_file() and (out / "student-box-filled.json").is_file()  # their predictions
    # report.html: the table and four images of every row beside the ground truth, all files present
    import re

    page = (out / "report.html").read_text()
    assert page.count("<section") == 3 and "student ← ground truth" in page and "box-filled" in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 3 * 4 * 2 and all((out / s).is_file() for s in srcs)


def test_unknown_student_loss_is_a_usage_error(tmp_path):
    r = _wsis("demo", "--student-loss", "nope", cwd=tmp_path)
    assert r.returncode == 2 and "--student-loss" in r.stderr


def test_unknown_demo_method_is_a_usage_error(tmp_path):
    r = _wsis("demo", "--methods", "box-filled,nope", cwd=tmp_path)
    assert r.returncode == 2 and "nope" in r.stderr


def test_demo_out_in_a_missing_folder_is_bad_input(tmp_path):
    r = _wsis("demo", "-n", "4", "--size", "64x64", "--out", str(tmp_path / "no" / "such"))
    assert r.returncode == 3
    assert len(r.stderr.strip().splitlines()) == 1 and "does not exist" in r.stderr


def test_sigterm_exits_143_with_one_line(tmp_path):
    import signal
    import time

    out = tmp_path / "d"
    p = subprocess.Popen([sys.executable, "-m", "wsis_cli", "demo", "-n", "3000", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out.glob("data.partial-*")) and time.monotonic() < deadline:  # synth is under way
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert "terminated" in err.strip().splitlines()[-1]
    assert not list(out.glob("data.partial-*")) and not (out / "data").exists()  # nothing half-made is left


def test_demo_markdown_prints_the_same_table_on_stdout(tmp_path):
    r = _wsis("demo", "-n", "4", "--size", "64x80", "--methods", "box-filled", "--no-students", "--no-refine",
              "--markdown", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "wsis demo: 4 synthetic 64x80 images, 3 classes (×100)"
    assert lines[2] == "| method | mask AP | AP50 | AP75 | box AP | mean IoU |"
    assert lines[3] == "|---|---:|---:|---:|---:|---:|"
    row = lines[4].strip("|").split("|")
    assert row[0].strip().startswith("box-filled") and len(row) == 6
    assert row[-1].strip() in r.stderr  # the mean IoU printed on stderr too
