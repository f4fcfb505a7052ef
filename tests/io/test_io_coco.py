"""wsis_cli.io.coco: datasets and results lists, and every bad-input case at the io level.

Each bad input must raise BadInputError (exit 3) whose text names the file and the record.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wsis_cli.io import coco, rle
from wsis_cli.runtime.errors import BadInputError, ExitCode


def make_dataset() -> dict[str, Any]:
    """Two images (4x5 and 6x8), two categories, three annotations (RLE, polygon, box-only)."""
    m = np.zeros((4, 5), dtype=np.uint8)
    m[1:3, 1:4] = 1
    return {
        "info": {"description": "test"},
        "licenses": [],
        "images": [
            {"id": 1, "file_name": "a.png", "width": 5, "height": 4},
            {"id": 7, "file_name": "sub/b.jpg", "width": 8, "height": 6, "extra_key": "kept"},
        ],
        "categories": [{"id": 1, "name": "disc"}, {"id": 3, "name": "box", "supercategory": "shape"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": rle.encode(m), "area": 6.0,
             "bbox": [1, 1, 3, 2], "iscrowd": 0},
            {"id": 11, "image_id": 7, "category_id": 3, "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]],
             "area": 9.0, "bbox": [1, 1, 3, 3], "iscrowd": 0},
            {"id": 12, "image_id": 7, "category_id": 1, "bbox": [0, 0, 8, 6]},
        ],
    }


def write(tmp_path: Path, obj: Any, name: str = "gt.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


def bad_dataset(tmp_path: Path, obj: Any, *, record: str | None, contains: str) -> BadInputError:
    """Load ``obj`` as a dataset file and check the error names the file, the record and the problem."""
    p = write(tmp_path, obj)
    with pytest.raises(BadInputError) as info:
        coco.load_coco(p)
    e = info.value
    assert e.exit_code == ExitCode.BAD_INPUT
    assert e.path == str(p) and str(e).startswith(f"{p}: ")
    assert e.record == record, str(e)
    assert contains in e.message, str(e)
    return e


def mutate(change: Any) -> dict[str, Any]:
    ds = make_dataset()
    change(ds)
    return ds


# -------------------------------------------------------------------------------------------- loading


def test_load_dataset_keeps_everything(tmp_path: Path) -> None:
    obj = make_dataset()
    ds = coco.load_dataset(write(tmp_path, obj))
    assert isinstance(ds, coco.Dataset)
    assert ds.source == str(tmp_path / "gt.json")
    assert ds.extra == {"info": {"description": "test"}, "licenses": []}
    assert ds.to_json() == obj  # unknown keys survive a round trip
    assert ds.category_ids == [1, 3]
    assert set(ds.image_index) == {1, 7} and ds.image_index[7]["extra_key"] == "kept"
    assert {k: [a["id"] for a in v] for k, v in ds.annotations_by_image().items()} == {1: [10], 7: [11, 12]}


def test_load_coco_returns_either_form(tmp_path: Path) -> None:
    assert isinstance(coco.load_coco(write(tmp_path, make_dataset())), coco.Dataset)
    results = [{"image_id": 1, "category_id": 2, "score": 0.5}]
    assert coco.load_coco(write(tmp_path, results, "r.json")) == results


def test_bare_label_records_are_a_results_list(tmp_path: Path) -> None:
    labels = [{"image_id": 1, "category_id": 2}, {"image_id": 1, "category_id": 5}, {"image_id": 4, "category_id": 2}]
    assert coco.load_coco(write(tmp_path, labels)) == labels
    assert coco.label_sets(labels) == {1: {2, 5}, 4: {2}}


def test_label_sets_from_dataset_include_unlabelled_images(tmp_path: Path) -> None:
    obj = make_dataset()
    obj["images"].append({"id": 9, "file_name": "c.png", "width": 2, "height": 2})
    ds = coco.load_dataset(write(tmp_path, obj))
    assert coco.label_sets(ds) == {1: {1}, 7: {1, 3}, 9: set()}


def test_empty_dataset_and_empty_results_are_fine(tmp_path: Path) -> None:
    ds = coco.load_dataset(write(tmp_path, {"images": [], "annotations": [], "categories": []}))
    assert ds.images == [] and ds.annotations == []
    assert coco.load_coco(write(tmp_path, [], "r.json")) == []


def test_load_dataset_refuses_a_results_list(tmp_path: Path) -> None:
    p = write(tmp_path, [{"image_id": 1, "category_id": 1}])
    with pytest.raises(BadInputError, match="is a results list") as info:
        coco.load_dataset(p)
    assert info.value.path == str(p)


def test_load_dataset_need(tmp_path: Path) -> None:
    p = write(tmp_path, make_dataset())
    assert len(coco.load_dataset(p, need="bbox").annotations) == 3
    with pytest.raises(BadInputError) as info:
        coco.load_dataset(p, need="segmentation")
    assert info.value.record == "annotations[2] (id 12)" and "'segmentation'" in info.value.message


def test_with_annotations(tmp_path: Path) -> None:
    ds = coco.load_dataset(write(tmp_path, make_dataset()))
    other = ds.with_annotations([], note="x")
    assert other.annotations == [] and other.images is ds.images and other.extra["note"] == "x"
    assert len(ds.annotations) == 3


# ---------------------------------------------------------------------------------- not COCO at all


@pytest.mark.parametrize("obj", [42, "text", None, True, {"foo": 1}, {"images": []}, {"annotations": []}])
def test_neither_dataset_nor_results(tmp_path: Path, obj: Any) -> None:
    bad_dataset(tmp_path, obj, record=None, contains="neither a COCO dataset")


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_sections_must_be_lists(tmp_path: Path, key: str) -> None:
    obj = make_dataset()
    obj[key] = {"1": {}}
    bad_dataset(tmp_path, obj, record=None, contains=f"'{key}' must be a list")


def test_categories_missing(tmp_path: Path) -> None:
    obj = make_dataset()
    del obj["categories"]
    bad_dataset(tmp_path, obj, record=None, contains="'categories' must be a list")


def test_malformed_json_is_reported_with_position(tmp_path: Path) -> None:
    p = tmp_path / "gt.json"
    p.write_text('{"images": [}')
    with pytest.raises(BadInputError) as info:
        coco.load_coco(p)
    assert info.value.record == "line 1 column 13" and info.value.path == str(p)


# --------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("change", "contains"),
    [
        ({"id": "1"}, "integer 'id'"),
        ({"id": True}, "integer 'id'"),
        ({"id": 1.0}, "integer 'id'"),
        ({"file_name": ""}, "'file_name'"),
        ({"file_name": None}, "'file_name'"),
        ({"width": 0}, "positive integer 'width'"),
        ({"height": -3}, "positive integer 'height'"),
        ({"height": 4.5}, "positive integer 'height'"),
    ],
)
def test_bad_image_records(tmp_path: Path, change: dict[str, Any], contains: str) -> None:
    obj = mutate(lambda d: d["images"][1].update(change))
    rid = obj["images"][1]["id"]
    bad_dataset(tmp_path, obj, record=f"images[1] (id {rid})" if rid is not None else "images[1]",
                contains=contains)


def test_image_record_not_an_object(tmp_path: Path) -> None:
    bad_dataset(tmp_path, mutate(lambda d: d["images"].append("c.png")), record="images[2]",
                contains="integer 'id'")


# ------------------------------------------------------------------------------------------ duplicates


def test_duplicate_image_ids(tmp_path: Path) -> None:
    obj = mutate(lambda d: d["images"].append({"id": 7, "file_name": "c.png", "width": 2, "height": 2}))
    bad_dataset(tmp_path, obj, record="images[2] (id 7)", contains="duplicate id (first at images[1])")


def test_duplicate_annotation_ids(tmp_path: Path) -> None:
    obj = mutate(lambda d: d["annotations"].append({**d["annotations"][2], "id": 10}))
    bad_dataset(tmp_path, obj, record="annotations[3] (id 10)", contains="duplicate id (first at annotations[0])")


def test_duplicate_category_ids(tmp_path: Path) -> None:
    obj = mutate(lambda d: d["categories"].append({"id": 1, "name": "again"}))
    bad_dataset(tmp_path, obj, record="categories[2] (id 1)", contains="duplicate id (first at categories[0])")


def test_bad_categories(tmp_path: Path) -> None:
    bad_dataset(tmp_path, mutate(lambda d: d["categories"][0].pop("id")), record="categories[0]",
                contains="integer 'id'")
    bad_dataset(tmp_path, mutate(lambda d: d["categories"][1].update(name=5)), record="categories[1] (id 3)",
                contains="'name' must be a string")


# ------------------------------------------------------------------------------------- annotations


def test_annotation_unknown_image(tmp_path: Path) -> None:
    obj = mutate(lambda d: d["annotations"][1].update(image_id=99))
    bad_dataset(tmp_path, obj, record="annotations[1] (id 11)", contains="image_id 99 is not a known image")


def test_annotation_unknown_category(tmp_path: Path) -> None:
    obj = mutate(lambda d: d["annotations"][2].update(category_id=2))
    bad_dataset(tmp_path, obj, record="annotations[2] (id 12)", contains="category_id 2 is not a known category")


@pytest.mark.parametrize(
    ("change", "contains"),
    [
        ({"id": None}, "integer 'id'"),
        ({"image_id": "1"}, "integer 'image_id'"),
        ({"category_id": None}, "integer 'category_id'"),
        ({"score": float("nan")}, "'score' must be a finite number"),
        ({"score": float("inf")}, "'score' must be a finite number"),
        ({"score": "0.9"}, "'score' must be a finite number"),
        ({"area": -1}, "'area' must be a non-negative number"),
        ({"area": float("nan")}, "'area' must be a non-negative number"),
    ],
)
def test_bad_annotation_fields(tmp_path: Path, change: dict[str, Any], contains: str) -> None:
    obj = mutate(lambda d: d["annotations"][0].update(change))
    rid = obj["annotations"][0]["id"]
    bad_dataset(tmp_path, obj, record="annotations[0]" + (f" (id {rid})" if rid is not None else ""),
                contains=contains)


def test_nan_written_as_json_literal_is_caught(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    p.write_text('[{"image_id": 1, "category_id": 1, "score": NaN}]')
    with pytest.raises(BadInputError, match="finite number") as info:
        coco.load_coco(p)
    assert info.value.record == "results[0]"


# ---------------------------------------------------------------------------------------------- boxes


@pytest.mark.parametrize(
    ("box", "contains"),
    [
        ([1, 1, -2, 2], "negative width or height"),
        ([1, 1, 2, -0.5], "negative width or height"),
        ([1, 1, 0, 2], "zero width or height"),
        ([1, 1, 2, 0], "zero width or height"),
        ([0, 0, 8, 7.5], "extends beyond the 8x6 image"),  # 1.5 px too tall
        ([-1.5, 0, 2, 2], "extends beyond"),
        ([7, 5, 2.01, 1], "extends beyond"),
        ([1, 1, 2], "[x, y, width, height]"),
        ([1, 1, 2, "3"], "[x, y, width, height]"),
        ("1 1 2 2", "[x, y, width, height]"),
        ([1, 1, 2, float("inf")], "[x, y, width, height]"),
    ],
)
def test_bad_boxes(tmp_path: Path, box: Any, contains: str) -> None:
    obj = mutate(lambda d: d["annotations"][2].update(bbox=box))
    bad_dataset(tmp_path, obj, record="annotations[2] (id 12)", contains=contains)


@pytest.mark.parametrize("box", [[0, 0, 9, 7], [-1, -1, 9, 7], [7.5, 5.5, 1.5, 1.5], [0.2, 0.3, 0.1, 0.1]])
def test_boxes_within_one_pixel_tolerance(tmp_path: Path, box: list[float]) -> None:
    obj = mutate(lambda d: d["annotations"][2].update(bbox=box))
    assert coco.load_dataset(write(tmp_path, obj)).annotations[2]["bbox"] == box


# ------------------------------------------------------------------------------------------- masks


def test_rle_size_disagrees_with_image(tmp_path: Path) -> None:
    obj = mutate(lambda d: d["annotations"][0].update(segmentation=rle.encode(np.zeros((5, 4), np.uint8))))
    e = bad_dataset(tmp_path, obj, record="annotations[0] (id 10)", contains="RLE size 5x4 (HxW)")
    assert "its image's 4x5" in e.message


@pytest.mark.parametrize(
    ("seg", "contains"),
    [
        ({"size": [4], "counts": "5220003"}, "RLE 'size' must be [height, width]"),
        ({"size": [4, -5], "counts": "5220003"}, "RLE 'size'"),
        ({"size": [4, 5], "counts": 5}, "'counts' must be a string or a list"),
        ({"size": [4, 5], "counts": [5, 2, 2]}, "do not add up to height*width"),
        ({"size": [4, 5], "counts": [5, -2, 17]}, "do not add up"),
        ({"size": [4, 5], "counts": "52200038"}, "RLE runs cover 30 pixels, but its size 4x5 (HxW) has 20"),
        ({"size": [4, 5], "counts": "522000"}, "cover 15 pixels"),
        ({"size": [4, 5], "counts": "522000g"}, "not a valid COCO RLE string"),
        ({"size": [4, 5], "counts": "52 20003"}, "not a valid COCO RLE string"),
        ("5220003", "RLE object or a list of polygons"),
    ],
)
def test_bad_rle(tmp_path: Path, seg: Any, contains: str) -> None:
    obj = mutate(lambda d: d["annotations"][0].update(segmentation=seg))
    bad_dataset(tmp_path, obj, record="annotations[0] (id 10)", contains=contains)


def test_uncompressed_rle_is_accepted(tmp_path: Path) -> None:
    seg = {"size": [4, 5], "counts": [5, 2, 2, 2, 2, 2, 5]}
    obj = mutate(lambda d: d["annotations"][0].update(segmentation=seg))
    ds = coco.load_dataset(write(tmp_path, obj))
    assert rle.area(ds.annotations[0]["segmentation"]) == 6


@pytest.mark.parametrize(
    "polys",
    [
        [[1, 1, 4, 1]],  # two points
        [[1, 1, 4, 1, 4]],  # odd number of coordinates
        [[1, 1, 4, 1, 4, "4"]],
        [[1, 1, 4, 1, 4, float("nan")]],
        [[1, 1, 4, 1, 4, 4], "x"],
        [[[1, 1], [4, 1], [4, 4]]],  # nested pairs are not COCO
    ],
)
def test_bad_polygons(tmp_path: Path, polys: Any) -> None:
    obj = mutate(lambda d: d["annotations"][1].update(segmentation=polys))
    bad_dataset(tmp_path, obj, record="annotations[1] (id 11)", contains="polygon must be a list of at least 3")


def test_many_valid_rles_pass(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    obj = make_dataset()
    for i in range(300):
        m = (rng.random((4, 5)) > 0.5).astype(np.uint8)
        obj["annotations"].append({"id": 100 + i, "image_id": 1, "category_id": 1, "segmentation": rle.encode(m)})
    assert len(coco.load_dataset(write(tmp_path, obj)).annotations) == 303


def test_valid_records_take_the_whole_list_pass() -> None:
    """Valid files are checked column-wise (fast); the per-record checks only run to name a bad record."""
    obj = make_dataset()
    sizes = {im["id"]: (im["height"], im["width"]) for im in obj["images"]}
    rles: list[Any] = []
    assert coco._images_pass(obj["images"])
    assert coco._records_pass("f", "annotations", obj["annotations"], sizes, {1, 3}, rles, with_ids=True)
    assert [r for r, _ in rles] == ["annotations[0] (id 10)"]


@pytest.mark.parametrize(
    "change",
    [
        {"bbox": [True, 0, 1, 1]},
        {"bbox": [0, 0, 1, 2**60]},
        {"area": 10**400},
        {"score": False},
        {"image_id": 1.0},
        {"bbox": (0, 0, 1, 1)},
    ],
)
def test_whole_list_pass_leaves_odd_values_to_the_per_record_checks(tmp_path: Path, change: dict[str, Any]) -> None:
    obj = mutate(lambda d: d["annotations"][2].update(change))
    sizes = {im["id"]: (im["height"], im["width"]) for im in obj["images"]}
    assert not coco._records_pass("f", "annotations", obj["annotations"], sizes, {1, 3}, [], with_ids=True)
    if "area" in change:  # legal (an int has no float overflow to fear), taken by the per-record checks
        assert coco.load_dataset(write(tmp_path, obj)).annotations[2]["area"] == 10**400
    elif "image_id" not in change and not isinstance(change.get("bbox"), tuple):  # those are not JSON
        bad_dataset(tmp_path, obj, record="annotations[2] (id 12)", contains="")


# --------------------------------------------------------------------------- results and predictions


def gt_dataset(tmp_path: Path) -> coco.Dataset:
    return coco.load_dataset(write(tmp_path, make_dataset(), "gt.json"))


def pred(image_id: int = 1, category_id: int = 1, shape: tuple[int, int] = (4, 5), **kw: Any) -> dict[str, Any]:
    m = np.zeros(shape, dtype=np.uint8)
    m[0, 0] = 1
    return {"image_id": image_id, "category_id": category_id, "segmentation": rle.encode(m), "score": 0.9, **kw}


def bad_predictions(tmp_path: Path, obj: Any, *, record: str | None, contains: str, **kw: Any) -> None:
    gt = gt_dataset(tmp_path)
    p = write(tmp_path, obj, "pred.json")
    with pytest.raises(BadInputError) as info:
        coco.load_predictions(p, gt, **kw)
    assert info.value.path == str(p), str(info.value)
    assert info.value.record == record, str(info.value)
    assert contains in info.value.message, str(info.value)


def test_results_list_alone_is_not_checked_against_anything(tmp_path: Path) -> None:
    results = [pred(image_id=999, category_id=42, shape=(100, 100))]
    assert coco.load_coco(write(tmp_path, results)) == results


def test_load_predictions_results_list(tmp_path: Path) -> None:
    results = [pred(), pred(image_id=7, category_id=3, shape=(6, 8)), {"image_id": 7, "category_id": 1,
                                                                      "bbox": [0, 0, 2, 2], "score": 0.1}]
    got = coco.load_predictions(write(tmp_path, results, "pred.json"), gt_dataset(tmp_path))
    assert got == results


def test_predictions_unknown_image(tmp_path: Path) -> None:
    bad_predictions(tmp_path, [pred(), pred(image_id=5)], record="results[1]", contains="image_id 5 is not a known image")


def test_predictions_unknown_category_unless_class_agnostic(tmp_path: Path) -> None:
    bad_predictions(tmp_path, [pred(category_id=2)], record="results[0]", contains="category_id 2 is not a known")
    got = coco.load_predictions(write(tmp_path, [pred(category_id=2)], "p.json"), gt_dataset(tmp_path),
                                class_agnostic=True)
    assert got[0]["category_id"] == 2


def test_predictions_mask_size_checked_against_gt_image(tmp_path: Path) -> None:
    bad_predictions(tmp_path, [pred(image_id=7, shape=(4, 5))], record="results[0]", contains="differs from its image's 6x8")


def test_predictions_box_checked_against_gt_image(tmp_path: Path) -> None:
    bad_predictions(tmp_path, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 4], "score": 1.0}],
                    record="results[0]", contains="extends beyond the 5x4 image")


def test_predictions_non_finite_score(tmp_path: Path) -> None:
    p = tmp_path / "pred.json"
    p.write_text('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": Infinity}]')
    with pytest.raises(BadInputError, match="finite number") as info:
        coco.load_predictions(p, gt_dataset(tmp_path))
    assert info.value.record == "results[0]" and info.value.path == str(p)


def test_predictions_record_not_an_object(tmp_path: Path) -> None:
    bad_predictions(tmp_path, [pred(), [1, 2]], record="results[1]", contains="must be a JSON object")


def test_predictions_neither_form(tmp_path: Path) -> None:
    bad_predictions(tmp_path, 3.5, record=None, contains="neither a COCO dataset")
    bad_predictions(tmp_path, {"results": []}, record=None, contains="neither a COCO dataset")


def test_load_predictions_from_a_dataset_file(tmp_path: Path) -> None:
    obj = make_dataset()
    for a in obj["annotations"]:
        a["score"] = 0.5
    got = coco.load_predictions(write(tmp_path, obj, "pred.json"), gt_dataset(tmp_path))
    assert [a["id"] for a in got] == [10, 11, 12]
    assert got[0] is not obj["annotations"][0]  # plain copies of the annotations


def test_dataset_predictions_with_a_foreign_category(tmp_path: Path) -> None:
    obj = make_dataset()
    obj["categories"].append({"id": 8, "name": "new"})
    bad_predictions(tmp_path, obj, record="categories[2] (id 8)", contains="category id not in the ground truth")
    assert len(coco.load_predictions(write(tmp_path, obj, "p.json"), gt_dataset(tmp_path), class_agnostic=True)) == 3


def test_dataset_predictions_checked_against_gt_images(tmp_path: Path) -> None:
    obj = make_dataset()
    obj["images"].append({"id": 50, "file_name": "z.png", "width": 5, "height": 4})
    obj["annotations"].append({**pred(image_id=50), "id": 99})
    bad_predictions(tmp_path, obj, record="annotations[3] (id 99)", contains="image_id 50 is not a known image")


def test_dataset_predictions_still_validated_as_a_dataset(tmp_path: Path) -> None:
    obj = make_dataset()
    obj["annotations"][1]["image_id"] = 3  # not among its own images
    bad_predictions(tmp_path, obj, record="annotations[1] (id 11)", contains="image_id 3 is not a known image")


# --------------------------------------------------------------------------------------------- writing


def test_annotation_builder() -> None:
    m = np.zeros((4, 5), dtype=np.uint8)
    m[1:3, 1:4] = 1
    a = coco.annotation(np.int64(5), np.int32(2), 3, rle.encode(m), score=np.float32(0.25), source="cam")
    assert a == {"id": 5, "image_id": 2, "category_id": 3, "segmentation": rle.encode(m), "area": 6.0,
                 "bbox": [1.0, 1.0, 3.0, 2.0], "iscrowd": 0, "score": 0.25, "source": "cam"}
    assert all(type(a[k]) is int for k in ("id", "image_id", "category_id"))
    json.dumps(a)  # plain JSON types only
    given = coco.annotation(1, 1, 1, rle.encode(m), bbox=[0.0, 0.0, 5.0, 4.0])
    assert given["bbox"] == [0.0, 0.0, 5.0, 4.0] and "score" not in given


def test_write_dataset_round_trip_and_validity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = coco.load_dataset(write(tmp_path, make_dataset()))
    out = tmp_path / "out.json"
    coco.write_dataset(ds, out)
    assert json.loads(out.read_text()) == make_dataset()
    assert coco.load_dataset(out).to_json() == ds.to_json()
    coco.write_dataset(ds, "-")
    assert json.loads(capsys.readouterr().out) == make_dataset()


def test_written_annotations_validate(tmp_path: Path) -> None:
    """What `annotation` builds is accepted by the validator (a labelling stage's output contract)."""
    obj = make_dataset()
    m = np.zeros((6, 8), dtype=np.uint8)
    m[2:5, 3:7] = 1
    obj["annotations"] = [coco.annotation(1, 7, 3, rle.encode(m), score=0.7)]
    ds = coco.load_dataset(write(tmp_path, obj), need="segmentation")
    a = ds.annotations[0]
    assert math.isclose(a["area"], 12) and a["bbox"] == [3.0, 2.0, 4.0, 3.0]


def test_validation_does_not_modify_input(tmp_path: Path) -> None:
    obj = make_dataset()
    before = copy.deepcopy(obj)
    coco.validate_dataset(obj, "mem")
    assert obj == before
