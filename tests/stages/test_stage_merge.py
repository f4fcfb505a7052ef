"""Merge stage: sharded outputs joined equal the unsharded output; every inconsistency is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wsis_cli.io.h5 import H5Reader, H5Writer
from wsis_cli.runtime.errors import BadInputError, UsageError
from wsis_cli.runtime.sharding import Shard, shard_ids, with_shard_suffix
from wsis_cli.stages.merge.settings import MergeJob, MergeSettings
from wsis_cli.stages.merge.stage import run
from wsis_cli.stages.synth.stage import SynthJob, SynthSettings
from wsis_cli.stages.synth.stage import run as synth


@pytest.fixture(scope="module")
def gt_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    synth(SynthSettings(num_images=15, height=48, width=48, seed=3), SynthJob(out))
    return out / "gt.json"


def _split(gt: dict[str, Any], count: int, folder: Path, *, all_images: bool = False) -> list[Path]:
    """What a sharded labelling stage writes: its images (or all of them) and the annotations of its images."""
    paths = []
    for i in range(count):
        mine = set(shard_ids([im["id"] for im in gt["images"]], Shard(i, count)))
        part = {**gt, "images": gt["images"] if all_images else [im for im in gt["images"] if im["id"] in mine],
                "annotations": [a for a in gt["annotations"] if a["image_id"] in mine]}
        p = with_shard_suffix(folder / "pseudo.json", Shard(i, count))
        p.write_text(json.dumps(part))
        paths.append(p)
    return paths


def test_json_shards_merge_to_the_unsharded_dataset(gt_path: Path, tmp_path: Path) -> None:
    gt = json.loads(gt_path.read_text())
    assert [a["id"] for a in gt["annotations"]] == sorted(a["id"] for a in gt["annotations"])
    shards = _split(gt, 4, tmp_path)
    out = tmp_path / "merged.json"
    summary = run(MergeSettings(), MergeJob(tuple(reversed(shards)), str(out), expect_images=gt_path))
    assert json.loads(out.read_text()) == gt
    assert (summary.kind, summary.shards, summary.images, summary.annotations) == (
        "dataset", 4, len(gt["images"]), len(gt["annotations"]))
    # shards that each list every image (a common way to write them) merge the same
    shards = _split(gt, 3, tmp_path / "", all_images=True)
    run(MergeSettings(expect_count=len(gt["images"])), MergeJob(tuple(shards), str(out)))
    assert json.loads(out.read_text()) == gt


def test_renumber_reassigns_colliding_ids(gt_path: Path, tmp_path: Path) -> None:
    gt = json.loads(gt_path.read_text())
    shards = _split(gt, 3, tmp_path)
    for p in shards:  # each shard numbered its annotations from 1
        d = json.loads(p.read_text())
        for n, a in enumerate(d["annotations"], start=1):
            a["id"] = n
        p.write_text(json.dumps(d))
    with pytest.raises(BadInputError, match="annotation id 1 is also used in .*--renumber") as e:
        run(MergeSettings(), MergeJob(tuple(shards), str(tmp_path / "m.json")))
    assert str(shards[1]) in str(e.value) and str(shards[0]) in str(e.value)
    assert not (tmp_path / "m.json").exists()
    run(MergeSettings(renumber=True), MergeJob(tuple(shards), str(tmp_path / "m.json")))
    assert json.loads((tmp_path / "m.json").read_text()) == gt


def test_conflicting_records_are_refused(gt_path: Path, tmp_path: Path) -> None:
    gt = json.loads(gt_path.read_text())
    a, b = _split(gt, 2, tmp_path, all_images=True)
    d = json.loads(b.read_text())
    d["images"][2]["width"] = 50
    b.write_text(json.dumps(d))
    with pytest.raises(BadInputError, match=r"images\[2\] \(id 3\): differs from the record"):
        run(MergeSettings(), MergeJob((a, b), str(tmp_path / "m.json")))
    d["images"][2]["width"] = 48
    d["categories"][0]["name"] = "moon"
    b.write_text(json.dumps(d))
    with pytest.raises(BadInputError, match="categories differ .*category id 1: .*moon"):
        run(MergeSettings(), MergeJob((a, b), str(tmp_path / "m.json")))


def test_missing_and_unknown_images(gt_path: Path, tmp_path: Path) -> None:
    gt = json.loads(gt_path.read_text())
    shards = _split(gt, 4, tmp_path)
    with pytest.raises(BadInputError, match=r"gt\.json: 4 of its 15 images are missing .*: 2, 6, 10, 14;"):
        run(MergeSettings(), MergeJob((shards[0], shards[2], shards[3]), str(tmp_path / "m.json"), expect_images=gt_path))
    with pytest.raises(BadInputError, match="hold 11 images, expected 15"):
        run(MergeSettings(expect_count=15), MergeJob((shards[0], shards[2], shards[3]), str(tmp_path / "m.json")))
    small = {**gt, "images": gt["images"][:5], "annotations": [a for a in gt["annotations"] if a["image_id"] <= 5]}
    (tmp_path / "small.json").write_text(json.dumps(small))
    with pytest.raises(BadInputError, match=r"image 6: is not in .*small\.json"):
        run(MergeSettings(), MergeJob(tuple(shards), str(tmp_path / "m.json"), expect_images=tmp_path / "small.json"))
    assert not (tmp_path / "m.json").exists()


def test_results_lists(gt_path: Path, tmp_path: Path) -> None:
    gt = json.loads(gt_path.read_text())
    results = [{k: a[k] for k in ("image_id", "category_id", "segmentation")} | {"score": 0.5}
               for a in gt["annotations"]]
    paths = []
    for i in range(2):
        mine = set(shard_ids([im["id"] for im in gt["images"]], Shard(i, 2)))
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps([r for r in results if r["image_id"] in mine]))
    summary = run(MergeSettings(), MergeJob(tuple(paths), str(tmp_path / "m.json"), expect_images=gt_path))
    assert json.loads((tmp_path / "m.json").read_text()) == results
    assert summary.kind == "results" and summary.annotations == len(results)
    with pytest.raises(BadInputError, match="is a results list but .* is a COCO dataset"):
        run(MergeSettings(), MergeJob((paths[0], gt_path), str(tmp_path / "m.json")))


def _h5_shards(tmp_path: Path, count: int, stage: str = "cam", overlap: bool = False) -> list[Path]:
    paths = []
    for i in range(count):
        shard = Shard(i, count)
        path = with_shard_suffix(tmp_path / "cams.h5", shard)
        settings = {"lr": 0.1, "shard": str(shard), "output": str(path), "workers": i}
        with H5Writer(path, stage, settings, {"labels": "labels.json"}) as w:
            for image_id in shard_ids(range(1, 16), shard) + ([1] if overlap and i else []):
                if not w.has(image_id):
                    w.put(image_id, {"cam": np.full((2, 6, 6), image_id, np.float16)}, attrs={"height": 6},
                          dataset_attrs={"cam": {"category_ids": [1, 3]}})
        paths.append(path)
    return paths


def test_h5_shards_merge(gt_path: Path, tmp_path: Path) -> None:
    shards = _h5_shards(tmp_path, 3)
    out = tmp_path / "cams.h5"
    summary = run(MergeSettings(), MergeJob(tuple(shards), str(out), expect_images=gt_path))
    assert (summary.kind, summary.images, summary.stage) == ("h5", 15, "cam")
    r = H5Reader(out, "cam")
    assert r.ids() == list(range(1, 16))
    assert r.settings["shard"] is None and r.settings["lr"] == 0.1 and r.settings["output"] == str(out)
    assert r.inputs == {"labels": "labels.json", "merged_from": [str(p) for p in shards]}
    for i in r.ids():
        assert r.get(i)["cam"].dtype == np.float16 and float(r.get(i)["cam"].mean()) == i
        assert r.attrs(i) == {"height": 6} and r.dataset_attrs(i, "cam") == {"category_ids": [1, 3]}
    r.close()
    with pytest.raises(BadInputError, match=r"gt\.json: 5 of its 15 images are missing"):
        run(MergeSettings(), MergeJob(tuple(shards[:2]), str(tmp_path / "x.h5"), expect_images=gt_path))
    assert not list(tmp_path.glob("x.h5*"))


def test_h5_inconsistent_shards(tmp_path: Path) -> None:
    shards = _h5_shards(tmp_path, 2, overlap=True)
    with pytest.raises(BadInputError, match=r"image 1: is also in .*cams\.shard-0-of-2\.h5: shards overlap"):
        run(MergeSettings(), MergeJob(tuple(shards), str(tmp_path / "m.h5")))
    other = _h5_shards(tmp_path / "", 1, stage="freemask")[0]
    with pytest.raises(BadInputError, match="written by stage 'freemask' but .* by stage 'cam'"):
        run(MergeSettings(), MergeJob((shards[0], other), str(tmp_path / "m.h5")))
    with pytest.raises(BadInputError, match="is an HDF5 store but .* is COCO JSON"):
        (tmp_path / "a.json").write_text("[]")
        run(MergeSettings(), MergeJob((shards[0], tmp_path / "a.json"), str(tmp_path / "m.h5")))
    with pytest.raises(UsageError, match="stdout"):
        run(MergeSettings(), MergeJob((shards[0],), "-"))
    assert not list(tmp_path.glob("m.h5*"))


def test_h5_settings_must_agree(tmp_path: Path) -> None:
    a = _h5_shards(tmp_path / "", 1)[0]
    b = tmp_path / "b.h5"
    with H5Writer(b, "cam", {"lr": 0.2, "shard": "1/2"}) as w:
        w.put(99, {"cam": np.zeros(2)})
    with pytest.raises(BadInputError, match=r"settings differ .*lr: 0\.2 vs 0\.1"):
        run(MergeSettings(), MergeJob((a, b), str(tmp_path / "m.h5")))


def test_unusable_shard_paths_and_options(tmp_path: Path) -> None:
    shard = _h5_shards(tmp_path, 1)[0]
    with pytest.raises(BadInputError, match="file not found"):
        run(MergeSettings(), MergeJob((shard, tmp_path / "gone.json"), str(tmp_path / "m.h5")))
    partial = tmp_path / "x.h5.partial"
    partial.write_text("")
    with pytest.raises(BadInputError, match="unfinished shard output"):
        run(MergeSettings(), MergeJob((shard, partial), str(tmp_path / "m.h5")))
    with pytest.raises(BadInputError, match="does not exist"):
        run(MergeSettings(), MergeJob((shard,), str(tmp_path / "no" / "m.h5")))
    with pytest.raises(UsageError, match="given twice"):
        run(MergeSettings(), MergeJob((shard, shard), str(tmp_path / "m.h5")))
    with pytest.raises(UsageError, match="one of the shards"):
        run(MergeSettings(), MergeJob((shard,), str(shard)))
    with pytest.raises(UsageError, match="mutually exclusive"):
        run(MergeSettings(expect_count=3), MergeJob((shard,), str(tmp_path / "m.h5"), expect_images=shard))
    with pytest.raises(UsageError, match="--renumber"):
        run(MergeSettings(renumber=True), MergeJob((shard,), str(tmp_path / "m.h5")))
