"""Faults of issue #17, each where the user meets it: a real `wsis` process, its exit code and its one line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

IMAGES = [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in range(1, 5)]
CATS = [{"id": 1, "name": "disc"}]


def wsis(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wsis_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("wsis: error: "), r.stderr
    return lines[0]


def ann(ann_id: int, image_id: int) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9.0, "iscrowd": 0,
            "segmentation": {"size": [8, 8], "counts": [9, 3, 5, 3, 5, 3, 36]}, "score": 0.9}


def dataset(path: Path, image_ids: list[int], ann_ids: list[int] | None = None) -> Path:
    ann_ids = ann_ids if ann_ids is not None else image_ids
    ds = {"images": [im for im in IMAGES if im["id"] in image_ids],
          "annotations": [ann(a, i) for a, i in zip(ann_ids, image_ids, strict=True)], "categories": CATS}
    path.write_text(json.dumps(ds))
    return path


# ------------------------------------------------------------------------ 1. devices and FIFOs are written in place


def test_fifo_output_is_written_in_place_not_replaced(tmp_path: Path) -> None:
    gt = dataset(tmp_path / "gt.json", [1, 2, 3, 4])
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = wsis("eval", gt, "--gt", gt, "--json", fifo, "--quiet")
    if reader.is_alive():  # the process never opened the FIFO: unblock our reader
        with open(fifo, "wb"):
            pass
    reader.join(10)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert json.loads(got[0])  # the report went through the pipe
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.json", "report.fifo"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_device_reports_disk_full(tmp_path: Path) -> None:
    a = dataset(tmp_path / "a.json", [1, 2])
    b = dataset(tmp_path / "b.json", [3, 4])
    r = wsis("merge", a, b, "-o", "/dev/full")
    assert r.returncode == 1
    assert "/dev/full" in one_error_line(r) and "no space left" in r.stderr
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert not list(Path("/dev").glob(".full.*"))
