"""HDF5 stores: round trip, provenance, all-or-nothing images, --resume, validation, lazy fork-safe reading."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from wsis_cli import __version__
from wsis_cli.io.h5 import H5Reader, H5Writer, chunk_shape, diff_settings
from wsis_cli.runtime.errors import BadInputError

SETTINGS = {"lr": 0.1, "out": Path("cams.h5"), "scales": (1.0, 0.5), "workers": 2, "resume": False}
INPUTS = {"labels": "train.json", "images": "imgs/"}


def _arrays(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {"cam": rng.random((3, 20, 24), dtype=np.float32) * 5, "mask": rng.random((20, 24)) > 0.5}


def _write(path: Path, ids: list[int], stage: str = "cam", settings: dict | None = None, **kw) -> None:
    with H5Writer(path, stage, settings or SETTINGS, INPUTS, **kw) as w:
        for i in ids:
            w.put(i, _arrays(i), attrs={"height": 20, "width": 24})


def test_round_trip_dtypes_attrs_storage_and_provenance(tmp_path: Path) -> None:
    path = tmp_path / "cams.h5"
    rng = np.random.default_rng(0)
    arrays = {
        "cam": rng.random((3, 40, 50), dtype=np.float32),
        "field": rng.normal(size=(2, 40, 50)),
        "labels": rng.integers(-5, 5, (40, 50), dtype=np.int32),
        "small": np.arange(6, dtype=np.uint8).reshape(2, 3),
        "mask": rng.random((40, 50)) > 0.5,
        "score": np.float32(0.75),
        "none": np.zeros((0, 4), np.float32),
    }
    with H5Writer(path, "cam", SETTINGS, INPUTS) as w:
        assert w.partial.exists() and not path.exists()
        w.put(7, arrays, attrs={"height": 40, "width": 50, "file_name": "a.png", "names": ["a", "b"]},
              dataset_attrs={"cam": {"stride": 4, "category_ids": [1, 5, 9]}}, dtypes={"cam": np.float16})
        w.put(np.int64(3), {"cam": arrays["cam"][:1]})
    assert path.exists() and not (tmp_path / "cams.h5.partial").exists()

    r = H5Reader(path, expect_stage="cam")
    assert r.ids() == [3, 7] and len(r) == 2 and 7 in r and 8 not in r and "x" not in r
    assert r.stage == "cam" and r.version == __version__
    assert r.settings == {"lr": 0.1, "out": "cams.h5", "scales": [1.0, 0.5], "workers": 2, "resume": False}
    assert r.inputs == INPUTS
    got = r.get(7)
    assert set(got) == set(arrays)
    assert got["cam"].dtype == np.float16
    np.testing.assert_allclose(got["cam"], arrays["cam"], atol=1e-3)
    for name in ("field", "labels", "small", "mask", "score", "none"):
        assert got[name].dtype == arrays[name].dtype, name
        np.testing.assert_array_equal(got[name], arrays[name])
    assert r.get(7, ["cam"], dtype=np.float32)["cam"].dtype == np.float32
    assert r.attrs(7) == {"height": 40, "width": 50, "file_name": "a.png", "names": ["a", "b"]}
    assert r.dataset_attrs(7, "cam") == {"stride": 4, "category_ids": [1, 5, 9]}
    r.close()

    with h5py.File(path, "r") as f:  # the storage choices, seen by any HDF5 tool
        assert f.attrs["stage"] == "cam" and bool(f.attrs["complete"])
        cam = f["images/7/cam"]
        assert cam.chunks == (3, 40, 50) and cam.compression == "gzip" and cam.shuffle
        assert f["images/7/mask"].compression == "gzip" and not f["images/7/mask"].shuffle
        assert "_incomplete" not in f


def test_chunks_split_leading_axes_first() -> None:
    assert chunk_shape((80, 512, 512), 2) == (2, 512, 512)
    assert chunk_shape((4096, 4096), 4) == (64, 4096)
    assert chunk_shape((3, 20, 24), 4) == (3, 20, 24)
    assert chunk_shape((2, 2048, 2048), 4) == (1, 128, 2048)


def test_bad_arrays_and_double_writes_are_refused(tmp_path: Path) -> None:
    with H5Writer(tmp_path / "a.h5", "cam", SETTINGS) as w:
        with pytest.raises(ValueError, match="range of float16"):
            w.put(1, {"cam": np.array([1e6], np.float32)}, dtypes={"cam": np.float16})
        w.put(1, {"cam": np.ones(3)})
        with pytest.raises(ValueError, match="already written"):
            w.put(1, {"cam": np.ones(3)})
        with pytest.raises(TypeError, match="attribute 'bad'"):
            w.put(2, {"cam": np.ones(3)}, attrs={"bad": {"a": 1}})
        assert w.done_ids == {1}
    assert H5Reader(tmp_path / "a.h5").ids() == [1]


def test_crash_leaves_partial_and_resume_continues(tmp_path: Path) -> None:
    path = tmp_path / "cams.h5"
    partial = tmp_path / "cams.h5.partial"
    with pytest.raises(RuntimeError, match="preempted"), H5Writer(path, "cam", SETTINGS, INPUTS) as w:
        for i in (1, 2, 3):
            w.put(i, _arrays(i))
        # an image whose writing fails half way (second array cannot be stored) leaves no group
        with pytest.raises(TypeError):
            w.put(4, {"cam": np.ones(3), "bad": np.array([object()])})
        raise RuntimeError("preempted")
    assert partial.exists() and not path.exists()
    with pytest.raises(BadInputError, match="unfinished"):
        H5Reader(partial)
    with h5py.File(partial, "r+") as f:  # as if killed while writing image 99
        f.create_group("_incomplete/99").create_dataset("cam", data=np.ones(3))

    with H5Writer(path, "cam", {**SETTINGS, "workers": 8, "resume": True}, INPUTS, resume=True) as w:
        assert w.done_ids == {1, 2, 3} and w.resumed == 3
        assert w.has(2) and not w.has(4) and not w.has(99)
        for i in (1, 2, 3, 4, 5):
            if not w.has(i):
                w.put(i, _arrays(i))
    assert path.exists() and not partial.exists()
    r = H5Reader(path, "cam")
    assert r.ids() == [1, 2, 3, 4, 5]
    for i in r.ids():
        np.testing.assert_array_equal(r.get(i)["cam"], _arrays(i)["cam"])
    with h5py.File(path, "r") as f:
        assert "_incomplete" not in f


def test_resume_after_sigkill(tmp_path: Path) -> None:
    """A writer killed outright (SLURM preemption) leaves a partial that --resume can reopen."""
    path = tmp_path / "cams.h5"
    code = textwrap.dedent(f"""
        import os, signal, numpy as np
        from wsis_cli.io.h5 import H5Writer
        w = H5Writer({str(path)!r}, "cam", {{"lr": 0.1}})
        w.open()
        for i in (1, 2, 3):
            w.put(i, {{"cam": np.full((4, 64, 64), i, np.float32)}})
        w._file.create_group("_incomplete/4").create_dataset("cam", data=np.ones((4, 640, 640)))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == -9, res.stderr
    with H5Writer(path, "cam", {"lr": 0.1}, resume=True) as w:
        assert w.done_ids == {1, 2, 3}
        w.put(4, {"cam": np.full((4, 64, 64), 4, np.float32)})
    r = H5Reader(path, "cam")
    assert [float(r.get(i)["cam"].mean()) for i in r.ids()] == [1.0, 2.0, 3.0, 4.0]


def test_resume_refuses_other_settings_inputs_or_stage(tmp_path: Path) -> None:
    path = tmp_path / "cams.h5"
    with pytest.raises(KeyboardInterrupt), H5Writer(path, "cam", SETTINGS, INPUTS) as w:
        w.put(1, _arrays(1))
        raise KeyboardInterrupt
    with pytest.raises(BadInputError, match=r"--resume needs the same settings.*lr: 0\.1 vs 0\.2") as e:
        H5Writer(path, "cam", {**SETTINGS, "lr": 0.2}, INPUTS, resume=True).open()
    assert "cams.h5.partial" in str(e.value)
    with pytest.raises(BadInputError, match="same inputs"):
        H5Writer(path, "cam", SETTINGS, {"labels": "other.json"}, resume=True).open()
    with pytest.raises(BadInputError, match="written by stage 'cam', expected 'irnet'"):
        H5Writer(path, "irnet", SETTINGS, INPUTS, resume=True).open()
    assert (tmp_path / "cams.h5.partial").exists()  # refusing to resume destroys nothing
    # without --resume the partial is replaced
    with H5Writer(path, "cam", {**SETTINGS, "lr": 0.2}, INPUTS) as w:
        assert w.done_ids == set()
        w.put(9, _arrays(9))
    assert H5Reader(path).ids() == [9]


def test_resume_without_partial_or_with_damaged_partial_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "cams.h5"
    _write(path, [1], resume=True)
    assert H5Reader(path).ids() == [1]
    (tmp_path / "cams.h5.partial").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)  # truncated by a crash
    _write(path, [2], resume=True)
    assert H5Reader(path).ids() == [2]


def test_reader_validation(tmp_path: Path) -> None:
    _write(tmp_path / "cams.h5", [1, 2])
    with pytest.raises(BadInputError, match=r"cams\.h5: written by stage 'cam', expected 'freemask'"):
        H5Reader(tmp_path / "cams.h5", expect_stage="freemask")
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(BadInputError, match=r"notes\.h5: not an HDF5 file"):
        H5Reader(text)
    with pytest.raises(BadInputError, match="file not found"):
        H5Reader(tmp_path / "missing.h5")
    with pytest.raises(BadInputError, match="not a file"):
        H5Reader(tmp_path)
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = np.ones(3)
    with pytest.raises(BadInputError, match="not written by wsis"):
        H5Reader(tmp_path / "foreign.h5")
    r = H5Reader(tmp_path / "cams.h5")
    with pytest.raises(BadInputError, match=r"image 5: not in this store"):
        r.get(5)
    with pytest.raises(BadInputError, match="has no dataset 'nope'"):
        r.get(1, ["nope"])


def test_diff_settings() -> None:
    assert diff_settings({"a": 1, "w": 2}, {"a": 1, "w": 3}, ignore={"w"}) == []
    assert diff_settings({"a": 1}, {"a": 2, "b": "x"}) == ['a: 1 vs 2', 'b: "<unset>" vs "x"']


class _Frames(torch.utils.data.Dataset):
    def __init__(self, reader: H5Reader) -> None:
        self.reader = reader
        self.ids = reader.ids()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor]:
        i = self.ids[k]
        return i, torch.from_numpy(self.reader.get(i)["cam"])


def test_lazy_reading_in_forked_dataloader_workers(tmp_path: Path) -> None:
    path = tmp_path / "cams.h5"
    ids = list(range(1, 13))
    _write(path, ids)
    reader = H5Reader(path, "cam")
    reader.get(1)  # the parent holds an open handle when the workers fork
    loader = torch.utils.data.DataLoader(_Frames(reader), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    seen = {}
    for i, cam in loader:
        seen[int(i)] = cam.numpy()
    assert sorted(seen) == ids
    for i in ids:
        np.testing.assert_array_equal(seen[i], _arrays(i)["cam"])
    np.testing.assert_array_equal(reader.get(5)["cam"], _arrays(5)["cam"])  # parent handle still fine
    reader.close()


def test_reader_pickles_without_its_handle(tmp_path: Path) -> None:
    _write(tmp_path / "cams.h5", [1, 2])
    reader = H5Reader(tmp_path / "cams.h5", "cam")
    reader.get(1)
    blob = pickle.dumps(reader)
    assert b"h5py" not in blob
    clone = pickle.loads(blob)
    assert clone.ids() == [1, 2] and clone.stage == "cam" and clone.settings == reader.settings
    np.testing.assert_array_equal(clone.get(2)["mask"], _arrays(2)["mask"])
    clone.close()
    reader.close()
