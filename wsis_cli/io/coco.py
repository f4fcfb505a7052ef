"""COCO JSON: load and validate datasets and results lists, write datasets.

Two forms are accepted everywhere (see design.md, "Data contracts"):

* a *dataset*: ``{"images": [...], "annotations": [...], "categories": [...]}``;
* a *results list*: ``[{"image_id", "category_id", "segmentation"?, "bbox"?, "score"?}, ...]``
  (a file of bare ``{image_id, category_id}`` records is a valid image-level label file).

Every problem is reported as one :class:`BadInputError` line naming the file and the record.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any

import numpy as np

from wsis_cli.io import rle as rle_utils
from wsis_cli.io.stdio import display_name, gc_paused, read_json, write_json
from wsis_cli.runtime.errors import BadInputError

# Boxes may overshoot the image by this many pixels (float rounding in other tools) before we refuse them.
BOX_TOLERANCE_PX = 1.0
RLE_MAX_PIXELS = 2**32


@dataclass
class Dataset:
    """A validated COCO dataset. Records stay plain dicts so that unknown keys survive a round trip."""

    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)  # info, licenses, anything else at top level
    source: str = "<memory>"

    # Lookups cached per list: stages read ``image_index`` once or more per image, and rebuilding an
    # index of 118k images on every read made their loops quadratic. A cache entry stays valid while
    # ``images``/``categories`` are the same list objects of the same length (so assigning a new list,
    # appending or removing rebuilds); replacing a record in place needs :meth:`invalidate_indices`.
    _image_index: tuple[list[Any], int, dict[int, dict[str, Any]]] | None = field(
        default=None, init=False, repr=False, compare=False)
    _category_ids: tuple[list[Any], int, list[int]] | None = field(
        default=None, init=False, repr=False, compare=False)
    index_builds: int = field(default=0, init=False, repr=False, compare=False)  # for linearity tests

    @property
    def image_index(self) -> dict[int, dict[str, Any]]:
        """``{image id: image record}``, built once per ``images`` list (treat it as read-only)."""
        c = self._image_index
        if c is None or c[0] is not self.images or c[1] != len(self.images):
            self.index_builds += 1
            c = self._image_index = (self.images, len(self.images), {im["id"]: im for im in self.images})
        return c[2]

    @property
    def category_ids(self) -> list[int]:
        """Category ids in file order, built once per ``categories`` list (treat it as read-only)."""
        c = self._category_ids
        if c is None or c[0] is not self.categories or c[1] != len(self.categories):
            self.index_builds += 1
            c = self._category_ids = (self.categories, len(self.categories), [x["id"] for x in self.categories])
        return c[2]

    def invalidate_indices(self) -> None:
        """Forget the cached lookups (needed only after replacing records in place: ``ds.images[i] = ...``)."""
        self._image_index = self._category_ids = None

    def annotations_by_image(self) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in self.images}
        for a in self.annotations:
            out[a["image_id"]].append(a)
        return out

    def to_json(self) -> dict[str, Any]:
        return {**self.extra, "images": self.images, "annotations": self.annotations,
                "categories": self.categories}

    def with_annotations(self, annotations: list[dict[str, Any]], **extra: Any) -> Dataset:
        """A copy with other annotations (same images and categories)."""
        return Dataset(self.images, annotations, self.categories, {**self.extra, **extra}, self.source)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    # an int is always finite (math.isfinite would overflow on one past float range)
    return isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and math.isfinite(v)


def _rec(section: str, i: int, r: Any) -> str:
    rid = r.get("id") if isinstance(r, Mapping) else None
    return f"{section}[{i}]" + (f" (id {rid})" if rid is not None else "")


# ----------------------------------------------------------------------------------------------- loading


def load_coco(path: str | os.PathLike) -> Dataset | list[dict[str, Any]]:
    """Load either form; the results list is validated on its own (no ground truth to check against)."""
    obj = read_json(path)
    name = display_name(path)
    if isinstance(obj, list):
        return validate_results(obj, name)
    return validate_dataset(obj, name)


def load_dataset(path: str | os.PathLike, *, need: str | None = None) -> Dataset:
    """Load a dataset; ``need`` = ``"segmentation"`` or ``"bbox"`` requires it on every annotation."""
    obj = read_json(path)
    name = display_name(path)
    if isinstance(obj, list):
        raise BadInputError(name, None, "is a results list, expected a COCO dataset with images/annotations/categories")
    ds = validate_dataset(obj, name)
    if need:
        for i, a in enumerate(ds.annotations):
            if a.get(need) is None:
                raise BadInputError(name, _rec("annotations", i, a), f"has no '{need}'")
    return ds


def load_predictions(path: str | os.PathLike, gt: Dataset, *, class_agnostic: bool = False) -> list[dict[str, Any]]:
    """Load predictions as a results list checked against ``gt`` (a dataset's annotations also work)."""
    obj = read_json(path)
    name = display_name(path)
    if isinstance(obj, Mapping):
        ds = validate_dataset(obj, name)
        if not class_agnostic:
            known = set(gt.category_ids)
            for i, c in enumerate(ds.categories):
                if c["id"] not in known:
                    raise BadInputError(name, _rec("categories", i, c), "category id not in the ground truth")
        obj = [dict(a) for a in ds.annotations]
        sizes = {im["id"]: (im["height"], im["width"]) for im in ds.images}
        section = "annotations"
    else:
        sizes = None
        section = "results"
    return validate_results(obj, name, gt=gt, class_agnostic=class_agnostic, section=section, sizes=sizes)


def label_sets(records: Dataset | Iterable[Mapping[str, Any]]) -> dict[int, set[int]]:
    """Image-level labels: every annotation contributes its category to its image's label set."""
    out: dict[int, set[int]] = {}
    if isinstance(records, Dataset):
        out = {im["id"]: set() for im in records.images}
        records = records.annotations
    for r in records:
        out.setdefault(r["image_id"], set()).add(r["category_id"])
    return out


# -------------------------------------------------------------------------------------------- validation


def validate_dataset(obj: Any, name: str) -> Dataset:
    with gc_paused():  # the checks build a few containers per record (see gc_paused)
        return _validate_dataset(obj, name)


def _validate_dataset(obj: Any, name: str) -> Dataset:
    if not isinstance(obj, Mapping) or not {"images", "annotations"} <= obj.keys():
        raise BadInputError(name, None, "neither a COCO dataset (images/annotations/categories) nor a results list")
    for key in ("images", "annotations", "categories"):
        if not isinstance(obj.get(key), list):
            raise BadInputError(name, None, f"'{key}' must be a list")
    images = obj["images"]
    if not _images_pass(images):  # the per-record checks below name the first bad record
        images = [_check_image(name, i, im) for i, im in enumerate(images)]
        _unique(name, "images", images)
    categories = obj["categories"]
    for i, c in enumerate(categories):
        if not isinstance(c, Mapping) or not is_int(c.get("id")):
            raise BadInputError(name, _rec("categories", i, c), "category needs an integer 'id'")
        if not isinstance(c.get("name", ""), str):
            raise BadInputError(name, _rec("categories", i, c), "'name' must be a string")
    _unique(name, "categories", categories)
    sizes = {im["id"]: (im["height"], im["width"]) for im in images}
    cats = {c["id"] for c in categories}
    anns = obj["annotations"]
    rles: list[tuple[str, Mapping[str, Any]]] = []
    if _records_pass(name, "annotations", anns, sizes, cats, rles, with_ids=True):
        _check_rle_counts(name, rles)
    else:  # one record at a time, in file order: the first failing check is the one reported
        rles.clear()
        for i, a in enumerate(anns):
            rec = _rec("annotations", i, a)
            if not isinstance(a, Mapping) or not is_int(a.get("id")):
                raise BadInputError(name, rec, "annotation needs an integer 'id'")
            _check_record(name, rec, a, sizes, cats, rles)
        _check_rle_counts(name, rles)
        _unique(name, "annotations", anns)
    extra = {k: v for k, v in obj.items() if k not in ("images", "annotations", "categories")}
    return Dataset(list(images), list(anns), list(categories), extra, name)


def validate_results(
    obj: Any,
    name: str,
    *,
    gt: Dataset | None = None,
    class_agnostic: bool = False,
    section: str = "results",
    sizes: dict[int, tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """Check a results list; with ``gt``, image ids, category ids and mask sizes are checked against it."""
    if not isinstance(obj, list):
        raise BadInputError(name, None, "neither a COCO dataset nor a results list")
    if gt is not None:
        sizes = {im["id"]: (im["height"], im["width"]) for im in gt.images}
    cats = None if gt is None or class_agnostic else set(gt.category_ids)
    rles: list[tuple[str, Mapping[str, Any]]] = []
    with gc_paused():
        passed = _records_pass(name, section, obj, sizes, cats, rles)
    if not passed:
        rles.clear()
        for i, r in enumerate(obj):
            rec = _rec(section, i, r)
            if not isinstance(r, Mapping):
                raise BadInputError(name, rec, "record must be a JSON object")
            _check_record(name, rec, r, sizes, cats, rles)
    _check_rle_counts(name, rles)
    return obj


def _check_image(name: str, i: int, im: Any) -> dict[str, Any]:
    rec = _rec("images", i, im)
    if not isinstance(im, Mapping) or not is_int(im.get("id")):
        raise BadInputError(name, rec, "image needs an integer 'id'")
    if not isinstance(im.get("file_name"), str) or not im["file_name"]:
        raise BadInputError(name, rec, "image needs a 'file_name'")
    for k in ("width", "height"):
        if not is_int(im.get(k)) or im[k] <= 0:
            raise BadInputError(name, rec, f"image needs a positive integer '{k}'")
    return im


def _unique(name: str, section: str, records: list[Mapping[str, Any]]) -> None:
    seen: dict[int, int] = {}
    for i, r in enumerate(records):
        if r["id"] in seen:
            raise BadInputError(name, _rec(section, i, r), f"duplicate id (first at {section}[{seen[r['id']]}])")
        seen[r["id"]] = i


# Whole-list passes. Checking 860k annotations one field at a time took longer than parsing the file, so
# every check of _check_image / _check_record (+ the id checks) is first made over whole columns: the
# types of all values at once (``set(map(type, ...))``), numbers as arrays. JSON gives plain dicts, lists,
# ints and floats, and anything else (a bool, a subclass, an int past 2^53, a missing key) makes the pass
# answer False without raising; the caller then runs the per-record checks, which report the first bad
# record with its own message. So a pass accepts only what the per-record checks accept.

_EXACT_INT = 2**53  # float64 holds every integer below this, so array sums and comparisons equal Python's


def _types(values: Iterable[Any]) -> set[type]:
    return set(map(type, values))


def _images_pass(images: list[Any]) -> bool:
    """True when every image record passes :func:`_check_image` and the ids are unique."""
    if not images:
        return True
    if _types(images) != {dict}:
        return False
    ids = [im.get("id") for im in images]
    names = [im.get("file_name") for im in images]
    dims = [im.get(k) for im in images for k in ("width", "height")]
    return (_types(ids) == {int} and _types(names) == {str} and "" not in names and _types(dims) == {int}
            and min(dims) > 0 and len(set(ids)) == len(ids))


_ABSENT = object()


def _column(recs: list[dict[str, Any]], key: str, *, absent: bool = False) -> list[Any]:
    """``r.get(key)`` of every record, looped in C; with ``absent``, only the records that have the key."""
    if not absent:
        return list(map(dict.get, recs, repeat(key)))
    vals = list(map(dict.get, recs, repeat(key), repeat(_ABSENT)))
    missing = vals.count(_ABSENT)
    if missing == len(vals):
        return []
    return [v for v in vals if v is not _ABSENT] if missing else vals


def _numbers_pass(values: list[Any]) -> np.ndarray | None:
    """``values`` as float64 when every one passes :func:`_is_num` exactly as Python compares it, else None."""
    if not _types(values) <= {int, float}:
        return None
    try:
        arr = np.array(values, dtype=np.float64)
    except OverflowError:  # an int beyond float range
        return None
    if not np.isfinite(arr).all() or (arr.size and np.abs(arr).max() >= _EXACT_INT):
        return None
    return arr


def _records_pass(
    name: str,
    section: str,
    recs: list[Any],
    sizes: dict[int, tuple[int, int]] | None,
    cats: set[int] | None,
    rles: list[tuple[str, Mapping[str, Any]]],
    *,
    with_ids: bool = False,
) -> bool:
    """True when every record passes :func:`_check_record` (and, ``with_ids``, has a unique integer id).

    Compressed RLE masks go to ``rles`` as the per-record checks would put them there.
    """
    if not recs:
        return True
    if _types(recs) != {dict}:
        return False
    if with_ids:
        ids = _column(recs, "id")
        if _types(ids) != {int} or len(set(ids)) != len(ids):
            return False
    image_ids, cat_ids = _column(recs, "image_id"), _column(recs, "category_id")
    if _types(image_ids) != {int} or _types(cat_ids) != {int}:
        return False
    if sizes is not None and not all(map(sizes.__contains__, image_ids)):
        return False
    if cats is not None and not all(map(cats.__contains__, cat_ids)):
        return False
    for key in ("score", "area"):
        arr = _numbers_pass(_column(recs, key, absent=True))
        if arr is None or (key == "area" and (arr < 0).any()):
            return False
    boxes = _column(recs, "bbox")
    if None in boxes:
        keep = [i for i, b in enumerate(boxes) if b is not None]
        boxes = [boxes[i] for i in keep]
        box_images = [image_ids[i] for i in keep]
    else:
        box_images = image_ids
    if boxes and not _boxes_pass(boxes, box_images, sizes):
        return False
    segs = _column(recs, "segmentation")
    if segs.count(None) < len(segs):
        for i, seg in enumerate(segs):
            if seg is None:
                continue
            rec = _rec(section, i, recs[i])
            try:
                _check_segmentation(name, rec, seg, None if sizes is None else sizes[image_ids[i]])
            except BadInputError:
                return False
            if isinstance(seg, Mapping) and isinstance(seg["counts"], str):
                rles.append((rec, seg))
    return True


def _boxes_pass(boxes: list[Any], image_ids: list[int], sizes: dict[int, tuple[int, int]] | None) -> bool:
    """True when every box passes :func:`_check_bbox` against its image's size."""
    if _types(boxes) != {list} or set(map(len, boxes)) != {4}:
        return False
    flat = _numbers_pass(list(chain.from_iterable(boxes)))
    if flat is None:
        return False
    x, y, w, h = flat.reshape(-1, 4).T
    if not ((w > 0) & (h > 0)).all():
        return False
    if sizes is None:
        return True
    row = dict(zip(sizes, range(len(sizes)), strict=True))
    hw = np.array(list(sizes.values()), dtype=np.float64).reshape(-1, 2)[
        np.fromiter(map(row.__getitem__, image_ids), np.int64, len(image_ids))]
    tol = BOX_TOLERANCE_PX
    return not ((x < -tol) | (y < -tol) | (x + w > hw[:, 1] + tol) | (y + h > hw[:, 0] + tol)).any()


def _check_record(
    name: str,
    rec: str,
    a: Mapping[str, Any],
    sizes: dict[int, tuple[int, int]] | None,
    cats: set[int] | None,
    rles: list[tuple[str, Mapping[str, Any]]],
) -> None:
    """Shared checks for annotations and results: ids, box, mask, score, area.

    Compressed RLE masks are collected in ``rles`` and their run lengths checked for the whole file
    at once by :func:`_check_rle_counts`.
    """
    if not is_int(a.get("image_id")):
        raise BadInputError(name, rec, "needs an integer 'image_id'")
    if not is_int(a.get("category_id")):
        raise BadInputError(name, rec, "needs an integer 'category_id'")
    hw = None
    if sizes is not None:
        if a["image_id"] not in sizes:
            raise BadInputError(name, rec, f"image_id {a['image_id']} is not a known image")
        hw = sizes[a["image_id"]]
    if cats is not None and a["category_id"] not in cats:
        raise BadInputError(name, rec, f"category_id {a['category_id']} is not a known category")
    if a.get("bbox") is not None:
        _check_bbox(name, rec, a["bbox"], hw)
    if a.get("segmentation") is not None:
        _check_segmentation(name, rec, a["segmentation"], hw)
        if isinstance(a["segmentation"], Mapping) and isinstance(a["segmentation"]["counts"], str):
            rles.append((rec, a["segmentation"]))
    if "score" in a and not _is_num(a["score"]):
        raise BadInputError(name, rec, f"'score' must be a finite number, got {a['score']!r}")
    if "area" in a and (not _is_num(a["area"]) or a["area"] < 0):
        raise BadInputError(name, rec, f"'area' must be a non-negative number, got {a['area']!r}")


def _check_bbox(name: str, rec: str, box: Any, hw: tuple[int, int] | None) -> None:
    if not isinstance(box, list) or len(box) != 4 or not all(_is_num(v) for v in box):
        raise BadInputError(name, rec, f"'bbox' must be [x, y, width, height] numbers, got {box!r}")
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise BadInputError(name, rec, f"bbox {box} has {'negative' if min(w, h) < 0 else 'zero'} width or height")
    if hw is not None:
        H, W = hw
        tol = BOX_TOLERANCE_PX
        if x < -tol or y < -tol or x + w > W + tol or y + h > H + tol:
            raise BadInputError(name, rec, f"bbox {box} extends beyond the {W}x{H} image")


def _check_segmentation(name: str, rec: str, seg: Any, hw: tuple[int, int] | None) -> None:
    if isinstance(seg, Mapping):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) and v >= 0 for v in size)):
            raise BadInputError(name, rec, f"RLE 'size' must be [height, width], got {size!r}")
        if size[0] * size[1] >= RLE_MAX_PIXELS:  # pycocotools counts in uint32 and overflows past it
            raise BadInputError(name, rec, f"RLE size {size[0]}x{size[1]} (HxW) exceeds the 2^32 pixels a COCO RLE "
                                "can hold")
        if isinstance(counts, list):
            if not all(is_int(v) and v >= 0 for v in counts) or sum(counts) != size[0] * size[1]:
                raise BadInputError(name, rec, "uncompressed RLE counts do not add up to height*width")
        elif not isinstance(counts, str):
            raise BadInputError(name, rec, "RLE 'counts' must be a string or a list of integers")
        if hw is not None and tuple(size) != tuple(hw):
            raise BadInputError(
                name, rec, f"RLE size {size[0]}x{size[1]} (HxW) differs from its image's {hw[0]}x{hw[1]}"
            )
    elif isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or not all(_is_num(v) for v in poly):
                raise BadInputError(name, rec, "polygon must be a list of at least 3 x,y number pairs")
    else:
        raise BadInputError(name, rec, "'segmentation' must be an RLE object or a list of polygons")


def _check_rle_counts(name: str, rles: list[tuple[str, Mapping[str, Any]]]) -> None:
    """Compressed masks whose runs do not cover exactly height*width pixels are corrupt."""
    if not rles:
        return
    totals = rle_utils.counts_totals([seg for _, seg in rles])
    for (rec, seg), total in zip(rles, totals.tolist(), strict=True):
        h, w = seg["size"]
        if total < 0:
            raise BadInputError(name, rec, "RLE 'counts' is not a valid COCO RLE string")
        if total != h * w:
            raise BadInputError(name, rec, f"RLE runs cover {total} pixels, but its size {h}x{w} (HxW) has {h * w}")


# --------------------------------------------------------------------------------------------- writing


def write_dataset(ds: Dataset, path: str | os.PathLike) -> None:
    """Write atomically (or to stdout for ``-``)."""
    write_json(ds.to_json(), path)


def annotation(
    ann_id: int,
    image_id: int,
    category_id: int,
    rle: dict[str, Any],
    *,
    score: float | None = None,
    bbox: list[float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A dataset annotation for a mask: ``area`` is the mask area, ``bbox`` its tight XYWH box unless given."""
    ann = {
        "id": int(ann_id),
        "image_id": int(image_id),
        "category_id": int(category_id),
        "segmentation": rle,
        "area": float(rle_utils.area(rle)),
        "bbox": bbox if bbox is not None else rle_utils.to_bbox(rle),
        "iscrowd": 0,
    }
    if score is not None:
        ann["score"] = float(score)
    ann.update(extra)
    return ann
