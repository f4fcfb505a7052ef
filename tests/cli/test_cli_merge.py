"""wsis merge through a real subprocess: merged files, stdout, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from wsis_cli.io.h5 import H5Reader, H5Writer


def _wsis(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wsis_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def _one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("wsis: error: ")
    return lines[0]


IMAGES = [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in range(1, 7)]
CATS = [{"id": 1, "name": "disc"}]


def _ann(ann_id: int, image_id: int) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9.0, "iscrowd": 0,
            "segmentation": {"size": [8, 8], "counts": [9, 3, 5, 3, 5, 3, 36]}}


def _dataset(path: Path, image_ids: list[int], ann_ids: list[int]) -> Path:
    ds = {"images": [im for im in IMAGES if im["id"] in image_ids],
          "annotations": [_ann(a, i) for a, i in zip(ann_ids, image_ids, strict=True)], "categories": CATS}
    path.write_text(json.dumps(ds))
    return path


def test_json_merge_to_file_and_stdout(tmp_path: Path) -> None:
    a = _dataset(tmp_path / "a.json", [1, 3, 5], [1, 3, 5])
    b = _dataset(tmp_path / "b.json", [2, 4, 6], [2, 4, 6])
    gt = _dataset(tmp_path / "gt.json", list(range(1, 7)), list(range(1, 7)))
    r = _wsis("merge", a, b, "-o", tmp_path / "m.json", "--expect-images", gt)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and "merged 2 shards: 6 images, 6 annotations" in r.stderr
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(gt.read_text())
    r = _wsis("merge", b, a, "-o", "-", "-q")
    assert r.returncode == 0 and r.stderr == ""
    assert json.loads(r.stdout) == json.loads(gt.read_text())


def test_duplicate_annotation_ids_name_both_files(tmp_path: Path) -> None:
    a = _dataset(tmp_path / "a.json", [1, 3], [1, 2])
    b = _dataset(tmp_path / "b.json", [2, 4], [1, 2])
    r = _wsis("merge", a, b, "-o", tmp_path / "m.json")
    assert r.returncode == 3
    line = _one_error_line(r)
    assert str(a) in line and str(b) in line and "annotation id 1" in line and "--renumber" in line
    assert not (tmp_path / "m.json").exists()
    r = _wsis("merge", a, b, "-o", tmp_path / "m.json", "--renumber")
    assert r.returncode == 0, r.stderr
    assert [(x["id"], x["image_id"]) for x in json.loads((tmp_path / "m.json").read_text())["annotations"]] == [
        (1, 1), (2, 2), (3, 3), (4, 4)]


def test_missing_images_are_listed(tmp_path: Path) -> None:
    a = _dataset(tmp_path / "a.json", [1, 3, 5], [1, 3, 5])
    gt = _dataset(tmp_path / "gt.json", list(range(1, 7)), list(range(1, 7)))
    r = _wsis("merge", a, "-o", tmp_path / "m.json", "--expect-images", gt)
    assert r.returncode == 3
    line = _one_error_line(r)
    assert f"{gt}: 3 of its 6 images are missing" in line and ": 2, 4, 6;" in line
    assert not (tmp_path / "m.json").exists()


def _store(path: Path, ids: list[int], stage: str = "cam") -> Path:
    with H5Writer(path, stage, {"lr": 0.1, "shard": path.stem}) as w:
        for i in ids:
            w.put(i, {"cam": np.full((2, 4, 4), i, np.float32)}, dtypes={"cam": np.float16})
    return path


def test_h5_merge(tmp_path: Path) -> None:
    a, b = _store(tmp_path / "a.h5", [1, 3, 5]), _store(tmp_path / "b.h5", [2, 4, 6])
    r = _wsis("merge", a, b, "-o", tmp_path / "m.h5", "--expect-count", "6")
    assert r.returncode == 0, r.stderr
    assert "6 images (stage cam)" in r.stderr
    with H5Reader(tmp_path / "m.h5", "cam") as reader:
        assert reader.ids() == list(range(1, 7))
        assert float(reader.get(4)["cam"].max()) == 4.0
    r = _wsis("merge", a, b, "-o", "-")
    assert r.returncode == 2 and "stdout" in r.stderr


def test_h5_duplicate_ids_and_stages(tmp_path: Path) -> None:
    a, b = _store(tmp_path / "a.h5", [1, 3, 5]), _store(tmp_path / "b.h5", [2, 3])
    r = _wsis("merge", a, b, "-o", tmp_path / "m.h5")
    assert r.returncode == 3
    line = _one_error_line(r)
    assert "image 3" in line and str(a) in line and str(b) in line
    c = _store(tmp_path / "c.h5", [7], stage="freemask")
    r = _wsis("merge", a, c, "-o", tmp_path / "m.h5")
    assert r.returncode == 3
    assert "stage 'freemask'" in _one_error_line(r)
    assert not list(tmp_path.glob("m.h5*"))


def test_bad_paths(tmp_path: Path) -> None:
    a = _dataset(tmp_path / "a.json", [1], [1])
    r = _wsis("merge", a, tmp_path / "gone.json", "-o", tmp_path / "m.json")
    assert r.returncode == 3
    assert f"{tmp_path / 'gone.json'}: file not found" in _one_error_line(r)
    r = _wsis("merge", a, "-o", tmp_path / "nowhere" / "m.json")
    assert r.returncode == 3
    assert "does not exist" in _one_error_line(r)
    assert not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    _store(tmp_path / "s.h5", [1])
    (tmp_path / "s.h5").rename(tmp_path / "s.h5.partial")
    r = _wsis("merge", tmp_path / "s.h5.partial", "-o", tmp_path / "m.h5")
    assert r.returncode == 3 and "unfinished" in _one_error_line(r)
    r = _wsis("merge", a, "-o", tmp_path / "m.json", "--expect-count", "1", "--expect-images", a)
    assert r.returncode == 2
    r = _wsis("merge", "-o", tmp_path / "m.json")
    assert r.returncode == 2
