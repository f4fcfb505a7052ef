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


# ------------------------------------------------------------ 2 and 4. --resume: changed inputs, appended progress


@pytest.fixture(scope="module")
def crf_data(tmp_path_factory) -> Path:
    from wsis_cli.io import coco
    from wsis_cli.stages.baselines.degrade import degrade_dataset
    from wsis_cli.stages.synth import stage as synth

    root = tmp_path_factory.mktemp("faults-crf") / "d"
    synth.run(synth.SynthSettings(num_images=3, height=48, width=64, seed=5), synth.SynthJob(root))
    gt = coco.load_dataset(root / "gt.json")
    coco.write_dataset(degrade_dataset(gt, "dilate", radius=2), root / "in.json")
    coco.write_dataset(degrade_dataset(gt, "erode", radius=1), root / "other.json")
    return root


def interrupted_refine(crf_data: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A refine-crf run that stops at its last image (its file is missing): images 1 and 2 are in .partial."""
    import shutil

    images = tmp_path / "imgs"
    shutil.copytree(crf_data / "images", images)
    last = json.loads((crf_data / "in.json").read_text())["images"][-1]["file_name"]
    held = tmp_path / "held"
    (images / last).rename(held)
    src = tmp_path / "in.json"
    shutil.copy(crf_data / "in.json", src)
    out = tmp_path / "o.json"
    r = wsis("refine-crf", src, "-i", images, "-o", out, "-q")
    assert r.returncode == 3 and "image file not found" in r.stderr
    assert len((tmp_path / "o.json.partial").read_text().splitlines()) == 3  # header + 2 images
    held.rename(images / last)
    return src, images, out


def fresh_refine(crf_data: Path, tmp_path: Path) -> bytes:
    out = tmp_path / "fresh.json"
    r = wsis("refine-crf", crf_data / "in.json", "-i", crf_data / "images", "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


def test_resume_refuses_an_input_rewritten_in_place(crf_data: Path, tmp_path: Path) -> None:
    src, images, out = interrupted_refine(crf_data, tmp_path)
    src.write_bytes((crf_data / "other.json").read_bytes())  # same path, other annotations
    r = wsis("refine-crf", src, "-i", images, "-o", out, "--resume")
    assert r.returncode == 3
    line = one_error_line(r)
    assert str(src) in line and "changed since the interrupted run" in line
    assert not out.exists()


def test_resume_with_a_torn_last_line_appends_and_matches_a_fresh_run(crf_data: Path, tmp_path: Path) -> None:
    src, images, out = interrupted_refine(crf_data, tmp_path)
    partial = tmp_path / "o.json.partial"
    finished = partial.read_bytes()
    with open(partial, "ab") as fh:
        fh.write(b'{"image_id": 3, "recor')  # a crash in the middle of a line
    os.utime(src)  # touched, content unchanged: still the same input
    inode = partial.stat().st_ino
    r = wsis("refine-crf", src, "-i", images, "-o", out, "--resume", "-q")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == fresh_refine(crf_data, tmp_path)
    assert not partial.exists() and inode  # consumed
    assert finished.count(b"\n") == 3


@pytest.mark.parametrize("content", [b"", b'{"stage": "refi'])
def test_resume_from_an_empty_or_torn_header_starts_afresh(crf_data: Path, tmp_path: Path, content: bytes) -> None:
    out = tmp_path / "o.json"
    (tmp_path / "o.json.partial").write_bytes(content)  # what a full disk leaves
    r = wsis("refine-crf", crf_data / "in.json", "-i", crf_data / "images", "-o", out, "--resume", "-q")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == fresh_refine(crf_data, tmp_path)


def test_resume_names_a_damaged_progress_line(crf_data: Path, tmp_path: Path) -> None:
    src, images, out = interrupted_refine(crf_data, tmp_path)
    partial = tmp_path / "o.json.partial"
    lines = partial.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    partial.write_bytes(b"\n".join(lines))
    r = wsis("refine-crf", src, "-i", images, "-o", out, "--resume")
    assert r.returncode == 3
    assert f"{partial}: line 2: is damaged" in one_error_line(r)


# ---------------------------------------------------------------------------- 3. merge refuses overlapping shards


@pytest.mark.parametrize("renumber", [True, False])
def test_merge_refuses_overlapping_shards(tmp_path: Path, renumber: bool) -> None:
    gt = dataset(tmp_path / "gt.json", [1, 2, 3, 4])
    s0 = dataset(tmp_path / "s0.json", [1, 2])
    s1 = dataset(tmp_path / "s1.json", [3], [5])
    s1copy = dataset(tmp_path / "s1copy.json", [3], [5])
    s2 = dataset(tmp_path / "s2.json", [4], [6])
    out = tmp_path / "m.json"
    r = wsis("merge", s0, s1, s1copy, s2, "-o", out, "--expect-images", gt, *(["--renumber"] if renumber else []))
    assert r.returncode == 3
    line = one_error_line(r)
    assert str(s1copy) in line and str(s1) in line and "overlap" in line and "--renumber" not in line
    assert not out.exists()


def test_merge_renumber_still_joins_disjoint_shards_with_colliding_ids(tmp_path: Path) -> None:
    a = dataset(tmp_path / "a.json", [1, 2], [1, 2])
    b = dataset(tmp_path / "b.json", [3, 4], [1, 2])
    out = tmp_path / "m.json"
    assert "--renumber" in one_error_line(wsis("merge", a, b, "-o", out))
    r = wsis("merge", a, b, "-o", out, "--renumber")
    assert r.returncode == 0, r.stderr
    assert [x["id"] for x in json.loads(out.read_text())["annotations"]] == [1, 2, 3, 4]


# ------------------------------------------------------------------- 5. deep nesting and huge RLE are bad input


def test_deeply_nested_json_is_bad_input(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    gt = dataset(tmp_path / "gt.json", [1])
    r = wsis("eval", deep, "--gt", gt)
    assert r.returncode == 3
    assert f"{deep}: JSON nested too deeply" in one_error_line(r)


def test_rle_beyond_2_32_pixels_is_bad_input(tmp_path: Path) -> None:
    big = {"id": 1, "file_name": "big.png", "width": 70_000, "height": 70_000}
    seg = {"size": [70_000, 70_000], "counts": [70_000 * 70_000 - 5, 5]}
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [big], "categories": CATS, "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg, "area": 5.0, "bbox": [0, 0, 1, 1]}]}))
    r = wsis("eval", gt, "--gt", gt)
    assert r.returncode == 3
    line = one_error_line(r)
    assert str(gt) in line and "annotations[0] (id 1)" in line and "2^32" in line


# ---------------------------------------------------------------- 6. wrong outputs: exit 3, one line, the right flag


def test_cam_output_that_is_a_folder_is_bad_input(tmp_path: Path) -> None:
    labels = dataset(tmp_path / "labels.json", [1, 2])
    r = wsis("cam", labels, "-i", tmp_path, "-o", tmp_path)
    assert r.returncode == 3
    assert "output path is a folder" in one_error_line(r)


def test_train_student_output_that_is_a_file_names_out_not_run(tmp_path: Path) -> None:
    labels = dataset(tmp_path / "labels.json", [1, 2])
    existing = tmp_path / "model.json"
    existing.write_text("{}")
    r = wsis("train-student", labels, "-i", tmp_path, "-o", existing)
    assert r.returncode == 3
    line = one_error_line(r)
    assert str(existing) in line and "--run" not in line


# ------------------------------------------------------------------------- 7. cam takes a results-list label file


def test_cam_accepts_a_results_list_of_labels(tmp_path: Path) -> None:
    from wsis_cli.io.h5 import H5Reader
    from wsis_cli.stages.synth import stage as synth

    root = tmp_path / "d"
    synth.run(synth.SynthSettings(num_images=4, height=48, width=48, classes=2, min_instances=1, max_instances=2,
                                  seed=4), synth.SynthJob(root))
    labels = json.loads((root / "labels.json").read_text())
    folder_id = {im["id"]: n for n, im in enumerate(sorted(labels["images"], key=lambda im: im["file_name"]), 1)}
    results = [{"image_id": folder_id[a["image_id"]], "category_id": a["category_id"]}
               for a in labels["annotations"]]
    (tmp_path / "labels.json").write_text(json.dumps(results))
    out = tmp_path / "cams.h5"
    r = wsis("cam", tmp_path / "labels.json", "-i", root / "images", "-o", out, "--arch", "resnet18",
             "--weights", "none", "--epochs", "1", "--batch-size", "4", "--scales", "1", "--crop", "48",
             "--device", "cpu", "-q", timeout=300)
    assert r.returncode == 0, r.stderr
    with H5Reader(out, "cam") as h5:
        assert len(h5) == 4
    results.append({"image_id": 99, "category_id": 1})
    (tmp_path / "labels.json").write_text(json.dumps(results))
    r = wsis("cam", tmp_path / "labels.json", "-i", root / "images", "-o", tmp_path / "c2.h5", "--weights", "none")
    assert r.returncode == 3
    assert f"results[{len(results) - 1}]: image_id 99 is not one of the 4 images" in one_error_line(r)


# --------------------------------------------------------------------------------- 8. paths outside --images


def test_file_names_outside_images_are_refused_unless_allowed(crf_data: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "root"
    shutil.copytree(crf_data / "images", root)
    ds = json.loads((crf_data / "in.json").read_text())
    name = ds["images"][0]["file_name"]
    (root / name).unlink()
    outside = crf_data / "images" / name
    ds["images"][0]["file_name"] = os.path.relpath(outside, root)  # "../../...": a file above the root
    assert ds["images"][0]["file_name"].startswith("..")
    src = tmp_path / "in.json"
    src.write_text(json.dumps(ds))
    out = tmp_path / "o.json"
    r = wsis("refine-crf", src, "-i", root, "-o", out)
    assert r.returncode == 3
    line = one_error_line(r)
    assert str(src) in line and "image id" in line and "leads outside --images" in line
    ds["images"][0]["file_name"] = str(outside.resolve())  # absolute
    src.write_text(json.dumps(ds))
    assert "leads outside" in one_error_line(wsis("refine-crf", src, "-i", root, "-o", out))
    env = {**os.environ, "WSIS_ALLOW_OUTSIDE_IMAGES": "1"}
    r = subprocess.run([sys.executable, "-m", "wsis_cli", "refine-crf", str(src), "-i", str(root),
                        "-o", str(out), "-q"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr


def test_symlinks_inside_images_stay_fine(crf_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(crf_data / "images", target_is_directory=True)
    ds = json.loads((crf_data / "in.json").read_text())
    for im in ds["images"]:
        im["file_name"] = f"linked/{im['file_name']}"
    (root / "loop.png").symlink_to(root / "loop.png")
    src = tmp_path / "in.json"
    src.write_text(json.dumps(ds))
    r = wsis("refine-crf", src, "-i", root, "-o", tmp_path / "o.json", "-q")
    assert r.returncode == 0, r.stderr
    ds["images"][0]["file_name"] = "loop.png"  # 12: a link loop is not "not found"
    src.write_text(json.dumps(ds))
    r = wsis("refine-crf", src, "-i", root, "-o", tmp_path / "o2.json")
    assert r.returncode == 3 and "symbolic link" in one_error_line(r)


# ---------------------------------------------------------------------------------------------- 12. minor


def test_closed_stdout_is_one_clear_line(tmp_path: Path) -> None:
    gt = dataset(tmp_path / "gt.json", [1, 2])
    r = subprocess.run([sys.executable, "-m", "wsis_cli", "merge", str(gt), "-o", "-"], capture_output=False,
                       stdout=None, stderr=subprocess.PIPE, text=True, timeout=120, close_fds=True,
                       preexec_fn=lambda: os.close(1))
    assert r.returncode == 1
    line = one_error_line(r)
    assert "standard output is closed" in line and "AttributeError" not in line


# ---------------------------------------------------- 10 and 12. train-student: stops, empty labels, bad checkpoints


@pytest.fixture(scope="module")
def student_data(tmp_path_factory) -> Path:
    from wsis_cli.stages.synth import stage as synth

    root = tmp_path_factory.mktemp("faults-student") / "d"
    synth.run(synth.SynthSettings(num_images=2, height=48, width=48, classes=1, min_instances=1, max_instances=2,
                                  seed=6), synth.SynthJob(root))
    return root


TINY_STUDENT = ["--arch", "resnet18-fpn", "--weights", "none", "--min-size", "48", "--max-size", "48",
                "--rois-per-image", "8", "--mask-head-channels", "8", "--fpn-channels", "16", "--box-head-dim", "16",
                "--batch-size", "1", "--workers", "0", "--device", "cpu"]


def test_sigusr1_stop_is_reported_as_sigusr1_and_saved_once(student_data: Path, tmp_path: Path) -> None:
    import signal
    import time

    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "wsis_cli", "train-student", str(student_data / "gt.json"), "-i",
                          str(student_data / "images"), "-o", str(run), "--epochs", "1000", *TINY_STUDENT],
                         stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    seen = []
    for line in p.stderr:  # the set-up line comes just before the loop that handles SIGUSR1
        seen.append(line)
        if "train-student: resnet18-fpn" in line:
            break
    time.sleep(2)
    p.send_signal(signal.SIGUSR1)
    err = "".join(seen) + p.stderr.read()
    assert p.wait(120) == 143, err
    assert err.strip().splitlines()[-1].startswith("wsis: error: terminated (SIGUSR1); "), err
    assert err.count("checkpoint saved") == 1 and (run / "last.pt").exists()


def test_train_student_refuses_labels_without_instances(student_data: Path, tmp_path: Path) -> None:
    labels = json.loads((student_data / "gt.json").read_text())
    labels["annotations"] = []
    src = tmp_path / "empty.json"
    src.write_text(json.dumps(labels))
    run = tmp_path / "runs" / "student"
    r = wsis("train-student", src, "-i", student_data / "images", "-o", run, "--epochs", "1", *TINY_STUDENT)
    assert r.returncode == 3, r.stderr
    assert f"{src}: no instance to train on (0 annotation(s) on 2 image(s)" in one_error_line(r)
    assert not (tmp_path / "runs").exists(), "a run that failed on its input leaves no folder"


def test_a_learning_stage_failing_on_its_input_leaves_no_run_folder(student_data: Path, tmp_path: Path) -> None:
    labels = json.loads((student_data / "gt.json").read_text())
    for a in labels["annotations"]:
        del a["segmentation"]  # boxes only: the standard mask loss cannot learn from them
    src = tmp_path / "boxes.json"
    src.write_text(json.dumps(labels))
    run = tmp_path / "run"
    r = wsis("train-student", src, "-i", student_data / "images", "-o", run, "--epochs", "1", *TINY_STUDENT)
    assert r.returncode == 3 and "has no segmentation" in one_error_line(r)
    assert not run.exists()
    run.mkdir()
    (run / "notes.txt").write_text("mine")  # a folder the user made is left as it was
    r = wsis("train-student", src, "-i", student_data / "images", "-o", run, "--epochs", "1", *TINY_STUDENT)
    assert r.returncode == 3
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("content", ["truncated", "text", "pickle"])
def test_a_corrupt_checkpoint_is_one_line_without_torch_advice(student_data: Path, tmp_path: Path,
                                                               content: str) -> None:
    import pickle

    import torch

    bad = tmp_path / "model.pt"
    if content == "truncated":
        torch.save({"model": {"w": torch.zeros(1000)}}, bad)
        bad.write_bytes(bad.read_bytes()[:500])
    elif content == "text":
        bad.write_text("not a checkpoint\n")
    else:
        bad.write_bytes(pickle.dumps({"model": 1}, protocol=4))
    r = wsis("train-student", student_data / "gt.json", "-i", student_data / "images", "--checkpoint", bad,
             "-o", tmp_path / "preds.json")
    assert r.returncode == 3
    line = one_error_line(r)
    assert line.startswith(f"wsis: error: {bad}: ")
    assert "weights_only" not in line and "trust" not in line
    want = "is damaged or incomplete" if content == "truncated" else "is not a PyTorch checkpoint file"
    assert want in line


# ------------------------------------------------------------- HDF5 outputs: --resume checks its inputs too


def _score_maps(crf_data: Path, path: Path, seed: int) -> Path:
    import numpy as np

    from wsis_cli.io.h5 import H5Writer

    ds = json.loads((crf_data / "in.json").read_text())
    with H5Writer(path, "cam", {}, {}) as w:
        for im in ds["images"]:
            cams = np.random.default_rng([seed, im["id"]]).random((2, 12, 16)).astype(np.float32)
            w.put(im["id"], {"cams": cams}, attrs={"height": im["height"], "width": im["width"],
                                                   "file_name": im["file_name"]},
                  dataset_attrs={"cams": {"stride": 4, "category_ids": [1, 2]}})
    return path


def test_hdf5_resume_refuses_an_input_rewritten_in_place(crf_data: Path, tmp_path: Path) -> None:
    import shutil
    import time

    images = tmp_path / "imgs"
    shutil.copytree(crf_data / "images", images)
    maps = _score_maps(crf_data, tmp_path / "cams.h5", 0)
    last = json.loads((crf_data / "in.json").read_text())["images"][-1]["file_name"]
    (images / last).rename(tmp_path / "held")
    out = tmp_path / "ref.h5"
    r = wsis("refine-crf", maps, "-i", images, "-o", out, "-q", "--device", "cpu")
    assert r.returncode == 3 and (tmp_path / "ref.h5.partial").exists(), r.stderr
    (tmp_path / "held").rename(images / last)
    time.sleep(0.01)
    _score_maps(crf_data, maps, 1)  # same path, other maps
    r = wsis("refine-crf", maps, "-i", images, "-o", out, "--resume", "--device", "cpu")
    assert r.returncode == 3
    line = one_error_line(r)
    assert str(maps) in line and "changed since the interrupted run" in line
    assert not out.exists()
