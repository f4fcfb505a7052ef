"""wsis_cli.io.rle: COCO RLE with ASCII counts; values checked by hand on tiny masks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsis_cli.io import rle


def tiny() -> np.ndarray:
    """4x5 mask with a 2x3 block at rows 1-2, columns 1-3."""
    m = np.zeros((4, 5), dtype=np.uint8)
    m[1:3, 1:4] = 1
    return m


def test_encode_is_json_ready_and_column_major() -> None:
    r = rle.encode(tiny())
    assert r == {"size": [4, 5], "counts": "5220003"}  # runs 5,2,2,2,2,2,5 read down the columns
    assert json.loads(json.dumps(r)) == r
    assert isinstance(r["counts"], str) and isinstance(r["size"][0], int)


@pytest.mark.parametrize("dtype", [np.uint8, bool, np.int64, np.float32])
def test_round_trip_any_dtype(dtype: type) -> None:
    rng = np.random.default_rng(0)
    m = rng.random((17, 23)) > 0.6
    r = rle.encode(m.astype(dtype))
    out = rle.decode(r)
    assert out.dtype == np.uint8 and out.shape == (17, 23)
    np.testing.assert_array_equal(out, m.astype(np.uint8))


def test_round_trip_non_contiguous_view() -> None:
    base = np.zeros((10, 12), dtype=np.uint8)
    base[2:5, 3:9] = 1
    view = base[::2, ::3]
    np.testing.assert_array_equal(rle.decode(rle.encode(view)), view)


def test_empty_and_full_masks() -> None:
    empty = rle.encode(np.zeros((3, 4), dtype=np.uint8))
    full = rle.encode(np.ones((3, 4), dtype=np.uint8))
    assert rle.area(empty) == 0 and rle.to_bbox(empty) == [0.0, 0.0, 0.0, 0.0]
    assert rle.area(full) == 12 and rle.to_bbox(full) == [0.0, 0.0, 4.0, 3.0]


def test_encode_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        rle.encode(np.zeros((2, 3, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        rle.encode_many(np.zeros((2, 3), dtype=np.uint8))


def test_encode_many_matches_encode() -> None:
    rng = np.random.default_rng(1)
    stack = rng.random((5, 9, 7)) > 0.5
    many = rle.encode_many(stack)
    assert many == [rle.encode(m) for m in stack]
    assert rle.encode_many(np.zeros((0, 9, 7), dtype=np.uint8)) == []


def test_area_and_bbox_by_hand() -> None:
    r = rle.encode(tiny())
    assert rle.area(r) == 6
    assert rle.to_bbox(r) == [1.0, 1.0, 3.0, 2.0]  # x, y, w, h
    single = np.zeros((6, 8), dtype=np.uint8)
    single[5, 7] = 1
    assert rle.to_bbox(rle.encode(single)) == [7.0, 5.0, 1.0, 1.0]


def test_iou_by_hand() -> None:
    a = np.zeros((4, 4), dtype=np.uint8)
    a[:, :2] = 1  # 8 pixels
    b = np.zeros((4, 4), dtype=np.uint8)
    b[:, 1:3] = 1  # 8 pixels, 4 shared
    c = np.zeros((4, 4), dtype=np.uint8)
    c[0, 3] = 1  # disjoint from a
    ra, rb, rc = rle.encode(a), rle.encode(b), rle.encode(c)
    m = rle.iou([ra, rc], [rb, ra])
    assert m.shape == (2, 2) and m.dtype == np.float64
    np.testing.assert_allclose(m, [[4 / 12, 1.0], [0.0, 0.0]])
    # crowd ground truth: intersection over the detection's area only
    np.testing.assert_allclose(rle.iou([ra], [rb], iscrowd=[1]), [[4 / 8]])


def test_iou_with_nothing_on_one_side() -> None:
    r = rle.encode(tiny())
    assert rle.iou([], [r]).shape == (0, 1)
    assert rle.iou([r, r], []).shape == (2, 0)


def test_to_compressed_from_polygon() -> None:
    # the square with corners (1,1) and (3,3) in pixel coordinates
    poly = [[1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0]]
    r = rle.to_compressed(poly, 5, 6)
    assert r["size"] == [5, 6] and isinstance(r["counts"], str)
    assert rle.area(r) == 4 and rle.to_bbox(r) == [1.0, 1.0, 2.0, 2.0]


def test_to_compressed_merges_several_polygons() -> None:
    polys = [[0, 0, 2, 0, 2, 2, 0, 2], [4, 4, 6, 4, 6, 6, 4, 6]]
    r = rle.to_compressed(polys, 8, 8)
    assert rle.area(r) == 8
    assert rle.to_bbox(r) == [0.0, 0.0, 6.0, 6.0]


def test_to_compressed_no_polygons_is_an_empty_mask() -> None:
    r = rle.to_compressed([], 3, 4)
    assert r["size"] == [3, 4] and rle.area(r) == 0


def test_to_compressed_from_uncompressed_rle() -> None:
    m = tiny()
    runs = [5, 2, 2, 2, 2, 2, 5]
    r = rle.to_compressed({"size": [4, 5], "counts": runs}, 4, 5)
    assert r == rle.encode(m)
    # the uncompressed form also works directly everywhere
    assert rle.area({"size": [4, 5], "counts": runs}) == 6
    np.testing.assert_array_equal(rle.decode({"size": [4, 5], "counts": runs}), m)


def test_to_compressed_keeps_compressed_rle() -> None:
    r = rle.encode(tiny())
    assert rle.to_compressed(r, 4, 5) == r
    assert rle.to_compressed({"size": [4, 5], "counts": r["counts"].encode()}, 4, 5) == r


def test_box_mask_covers_touched_pixels() -> None:
    m = rle.box_mask([1, 1, 2, 3], 6, 5)
    assert m.dtype == np.uint8 and m.shape == (6, 5)
    assert m.sum() == 6 and m[1:4, 1:3].all()
    frac = rle.box_mask([0.5, 0.5, 1.0, 1.0], 4, 4)  # touches 2x2 pixels
    assert frac.sum() == 4 and frac[0:2, 0:2].all()


def test_box_mask_clips_to_the_image() -> None:
    m = rle.box_mask([-3, -2, 10, 10], 4, 5)
    assert m.all()
    assert rle.box_mask([10, 10, 2, 2], 4, 5).sum() == 0


# ------------------------------------------------------------------------------------- counts_totals


def test_counts_totals_of_valid_masks() -> None:
    rng = np.random.default_rng(2)
    rles = []
    for i in range(600):  # more than pycocotools handles in one area() call under numpy 2
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if i % 5 == 0:
            m[:] = i % 2
        rles.append(rle.encode(m))
    totals = rle.counts_totals(rles)
    assert totals.dtype == np.int64
    assert totals.tolist() == [r["size"][0] * r["size"][1] for r in rles]
    assert rle.counts_totals([]).shape == (0,)


def test_counts_totals_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Masks are checked a batch at a time (bounded memory); corrupt ones in between keep their place."""
    good = {"size": [4, 5], "counts": "5220003"}
    rles = [good if i % 3 else {"size": [4, 5], "counts": "522000g"} for i in range(23)]
    whole = rle.counts_totals(rles).tolist()
    monkeypatch.setattr(rle, "COUNTS_BATCH", 4)
    assert rle.counts_totals(rles).tolist() == whole == [20 if i % 3 else -1 for i in range(23)]


def test_counts_totals_flags_corrupt_strings() -> None:
    s = [4, 5]
    cases = {
        "5220003": 20,  # valid
        "522000": 15,  # a run short
        "52200038": 30,  # runs beyond the image
        "0oo0oo0": None,  # overshoots far: any total but 20
        "5220003 ": -1,  # a character outside the alphabet
        "52200\u00e9": -1,  # not ASCII
        "522000g": -1,  # last run unfinished (0x20 set)
        "": 0,
    }
    got = rle.counts_totals([{"size": s, "counts": c} for c in cases]).tolist()
    for (counts, want), total in zip(cases.items(), got, strict=True):
        if want is None:
            assert total != 20, counts
        else:
            assert total == want, counts
