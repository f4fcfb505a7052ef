"""Join the shard outputs of one stage (``wsis merge``): COCO JSON datasets, results lists, or HDF5 stores.

Shards come from ``--shard I/N`` runs (see :mod:`wsis_cli.runtime.sharding`); merging checks what a
silent concatenation would get wrong:

* every shard must be finished (a ``.partial`` or a missing file is refused) and of one kind;
* COCO datasets: the same image id must carry the same record in every shard, categories must agree,
  the annotations (or results) of an image must all come from one shard — overlapping shards are
  refused, with or without ``renumber`` — and annotation ids must be unique across shards (or
  reassigned 1..N with ``renumber``);
* HDF5 stores: same stage and same settings (apart from shard and output name), disjoint image ids;
* with ``expect_images`` (the dataset that was sharded) every one of its images must be in the union
  and no other; with ``expect_count`` the union must have exactly that many images.

The output is ordered deterministically — images by id, annotations by id (or, renumbered, by image
id then shard order) — so merging the shards of a run equals running it unsharded whatever order the
shards are given in. Written atomically: a failed merge leaves nothing behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

from wsis_cli.io.atomic import check_output_path
from wsis_cli.io.coco import Dataset, load_coco, load_dataset, write_dataset
from wsis_cli.io.h5 import MERGE_IGNORED, H5Reader, H5Writer, diff_settings, is_h5_file
from wsis_cli.io.stdio import STDIO, gc_paused, write_json
from wsis_cli.runtime.errors import BadInputError, UsageError
from wsis_cli.runtime.log import get_logger
from wsis_cli.runtime.progress import NullProgress, Progress, track
from wsis_cli.stages.merge.settings import MergeJob, MergeSettings, MergeSummary

log = get_logger("merge")

SHOW_MISSING = 10  # ids listed in a "missing images" error


def run(settings: MergeSettings, job: MergeJob, progress: Progress | None = None) -> MergeSummary:
    """Check the shards, merge them and write ``job.output``; raise on any inconsistency."""
    progress = progress or NullProgress()
    shards = [Path(p) for p in job.shards]
    _check_settings(settings, job, shards)
    for p in shards:
        _check_shard(p)
    h5 = [is_h5_file(p) for p in shards]
    if any(h5) and not all(h5):
        j5, jj = h5.index(True), h5.index(False)
        raise BadInputError(shards[j5], None, f"is an HDF5 store but {shards[jj]} is COCO JSON: "
                            "shards of one output must be of one kind")
    if all(h5):
        if job.output == STDIO:
            raise UsageError("-o -: HDF5 cannot be written to stdout; give a file name")
        if settings.renumber:
            raise UsageError("--renumber applies to COCO JSON shards only")
        return _merge_h5(settings, job, shards, progress)
    return _merge_json(settings, job, shards, progress)


def _check_settings(settings: MergeSettings, job: MergeJob, shards: list[Path]) -> None:
    if not shards:
        raise UsageError("give at least one shard to merge")
    if job.expect_images is not None and settings.expect_count is not None:
        raise UsageError("--expect-images and --expect-count are mutually exclusive")
    if settings.expect_count is not None and settings.expect_count < 0:
        raise UsageError("--expect-count must be >= 0")
    seen: dict[Path, Path] = {}
    for p in shards:
        key = p.resolve()
        if key in seen:
            raise UsageError(f"shard {p} is given twice")
        seen[key] = p
    if job.output != STDIO:
        out = Path(job.output).resolve()
        if out in seen:
            raise UsageError(f"-o {job.output} is one of the shards; write the merge elsewhere")
        check_output_path(job.output)  # fail before reading anything


def _check_shard(p: Path) -> None:
    if p.name.endswith(".partial"):
        raise BadInputError(p, None, "an unfinished shard output (.partial); finish that shard "
                            "(rerun it with --resume) before merging")
    if not p.exists():
        raise BadInputError(p, None, "file not found")
    if not p.is_file():
        raise BadInputError(p, None, "not a file")


def _names(paths: Sequence[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _check_expected(settings: MergeSettings, job: MergeJob, shards: list[Path], union: dict[int, Path],
                    results: bool = False) -> None:
    """Compare the union of image ids (id → first shard holding it) with what was sharded."""
    if job.expect_images is not None:
        gt = load_dataset(job.expect_images)
        expected = {im["id"] for im in gt.images}
        for image_id, src in sorted(union.items()):
            if image_id not in expected:
                raise BadInputError(src, f"image {image_id}", f"is not in {job.expect_images}; "
                                    "were these shards made from another dataset?")
        if results:
            log.warning("results lists do not list their images: only checked that every image_id is in %s; "
                        "images without results cannot be told from missing ones", job.expect_images)
            return
        missing = sorted(expected - union.keys())
        if missing:
            shown = ", ".join(str(i) for i in missing[:SHOW_MISSING]) + (", ..." if len(missing) > SHOW_MISSING
                                                                         else "")
            raise BadInputError(job.expect_images, None,
                                f"{len(missing)} of its {len(expected)} images are missing from the shards "
                                f"({_names(shards)}): {shown}; is a shard missing or unfinished?")
    elif settings.expect_count is not None:
        if results:
            raise UsageError("--expect-count needs COCO datasets or HDF5 shards: results lists do not list "
                             "their images (use --expect-images to check their image ids)")
        if len(union) != settings.expect_count:
            raise BadInputError(_names(shards), None, f"the shards hold {len(union)} images, expected "
                                f"{settings.expect_count} (--expect-count)")


# ------------------------------------------------------------------------------------------------ JSON


def _merge_json(settings: MergeSettings, job: MergeJob, shards: list[Path], progress: Progress) -> MergeSummary:
    with gc_paused():  # millions of records are read, checked and joined (see gc_paused)
        return _merge_json_records(settings, job, shards, progress)


def _merge_json_records(settings: MergeSettings, job: MergeJob, shards: list[Path], progress: Progress) -> MergeSummary:
    loaded: list[Dataset | list[dict[str, Any]]] = [
        load_coco(p) for p in track(shards, description="merge: reading", progress=progress, unit="shards")
    ]
    is_list = [isinstance(x, list) for x in loaded]
    if any(is_list) and not all(is_list):
        jl, jd = is_list.index(True), is_list.index(False)
        raise BadInputError(shards[jl], None, f"is a results list but {shards[jd]} is a COCO dataset: "
                            "shards of one output must be of one kind")
    if all(is_list):
        return _merge_results(settings, job, shards, loaded)  # type: ignore[arg-type]
    return _merge_datasets(settings, job, shards, loaded)  # type: ignore[arg-type]


def _merge_datasets(settings: MergeSettings, job: MergeJob, shards: list[Path],
                    parts: list[Dataset]) -> MergeSummary:
    first = parts[0]
    categories = {c["id"]: c for c in first.categories}
    images: dict[int, dict[str, Any]] = {}
    image_src: dict[int, Path] = {}
    for path, ds in zip(shards, parts, strict=True):
        other = {c["id"]: c for c in ds.categories}
        if other != categories:
            cid = min(k for k in categories.keys() | other.keys() if categories.get(k) != other.get(k))
            raise BadInputError(path, None, f"categories differ from those of {shards[0]} (category id {cid}: "
                                f"{other.get(cid)} vs {categories.get(cid)})")
        for i, im in enumerate(ds.images):
            seen = images.get(im["id"])
            if seen is None:
                images[im["id"]] = im
                image_src[im["id"]] = path
            elif seen != im:
                raise BadInputError(path, f"images[{i}] (id {im['id']})", "differs from the record of the same "
                                    f"image in {image_src[im['id']]}")
    anns = _join_records(shards, [ds.annotations for ds in parts], "annotations", settings.renumber)
    _check_expected(settings, job, shards, image_src)
    merged = Dataset(sorted(images.values(), key=lambda im: im["id"]), anns, list(first.categories),
                     dict(first.extra), "merge")
    write_dataset(merged, job.output)
    return MergeSummary("dataset", len(shards), len(images), len(anns), job.output)


def _merge_results(settings: MergeSettings, job: MergeJob, shards: list[Path],
                   parts: list[list[dict[str, Any]]]) -> MergeSummary:
    # Results need no ids; where every record has one they are checked (or renumbered) like annotations.
    with_ids = all("id" in r for part in parts for r in part)
    if with_ids or settings.renumber:
        records = _join_records(shards, parts, "results", settings.renumber)
    else:
        _check_disjoint(shards, parts, "results")
        tagged = [(r["image_id"], j, i, r) for j, part in enumerate(parts) for i, r in enumerate(part)]
        records = [t[3] for t in sorted(tagged, key=lambda t: t[:3])]
    union: dict[int, Path] = {}
    for path, part in zip(shards, parts, strict=True):
        for r in part:
            union.setdefault(r["image_id"], path)
    _check_expected(settings, job, shards, union, results=True)
    write_json(records, job.output)
    return MergeSummary("results", len(shards), len(union), len(records), job.output)


def _check_disjoint(shards: list[Path], parts: Sequence[list[dict[str, Any]]], section: str) -> None:
    """Refuse shards that both hold records of one image: an overlap that renumbering would duplicate."""
    seen: set[int] = set()
    for part in parts:  # one set per shard; the record-by-record walk below only names an overlap
        ids = set(map(itemgetter("image_id"), part))
        if not seen.isdisjoint(ids):
            break
        seen |= ids
    else:
        return
    owner: dict[int, int] = {}
    for j, part in enumerate(parts):
        for i, r in enumerate(part):
            k = owner.setdefault(r["image_id"], j)
            if k != j:
                raise BadInputError(shards[j], f"{section}[{i}] (image {r['image_id']})",
                                    f"image {r['image_id']} also has {section} in {shards[k]}: the shards overlap "
                                    "(one given twice, or from two different --shard splits)")


def _join_records(shards: list[Path], parts: Sequence[list[dict[str, Any]]], section: str,
                  renumber: bool) -> list[dict[str, Any]]:
    """Concatenate annotation-like records: unique ids across shards, or new ids 1..N (``renumber``).

    Shards must hold the records of disjoint images (see :func:`_check_disjoint`).
    """
    _check_disjoint(shards, parts, section)
    if renumber:
        tagged = [(r["image_id"], j, i, r) for j, part in enumerate(parts) for i, r in enumerate(part)]
        tagged.sort(key=lambda t: t[:3])
        return [{**r, "id": n} for n, (*_, r) in enumerate(tagged, start=1)]
    out = list(chain.from_iterable(parts))
    if len(set(map(itemgetter("id"), out))) == len(out):  # ids unique: nothing to name (all have one here)
        return sorted(out, key=itemgetter("id"))
    owner: dict[Any, Path] = {}
    out = []
    for path, part in zip(shards, parts, strict=True):
        for i, r in enumerate(part):
            if r.get("id") in owner:
                raise BadInputError(path, f"{section}[{i}] (id {r['id']})", f"annotation id {r['id']} is also used "
                                    f"in {owner[r['id']]}; pass --renumber to reassign ids 1..N")
            owner[r.get("id")] = path
            out.append(r)
    return sorted(out, key=lambda r: r["id"])


# ------------------------------------------------------------------------------------------------ HDF5


def _merge_h5(settings: MergeSettings, job: MergeJob, shards: list[Path], progress: Progress) -> MergeSummary:
    readers: list[H5Reader] = []
    try:
        owner = _scan_h5(shards, readers)
        first = readers[0]
        _check_expected(settings, job, shards, {i: r.path for i, r in owner.items()})
        merged_settings = dict(first.settings)
        if "shard" in merged_settings:
            merged_settings["shard"] = None
        if "output" in merged_settings:
            merged_settings["output"] = str(job.output)
        inputs = {**first.inputs, "merged_from": [str(p) for p in shards]}
        with H5Writer(job.output, first.stage, merged_settings, inputs, keep_partial=False) as writer:
            progress.start(len(owner), "merge")
            try:
                for r in readers:
                    for image_id in r.ids():
                        writer.copy_from(r, image_id)
                        progress.advance()
                    r.close()
            finally:
                progress.finish()
    finally:
        for r in readers:
            r.close()
    return MergeSummary("h5", len(shards), len(owner), 0, os.fspath(job.output), first.stage)


def _scan_h5(shards: list[Path], readers: list[H5Reader]) -> dict[int, H5Reader]:
    """Open and check every shard (appending to ``readers``); map each image id to its shard.

    Each shard is closed after its visit (a reader reopens lazily when copying), so merging a
    thousand array-job shards never holds a thousand files open.
    """
    owner: dict[int, H5Reader] = {}
    for p in shards:
        r = H5Reader(p)
        readers.append(r)
        first = readers[0]
        if r.stage != first.stage:
            raise BadInputError(r.path, None, f"written by stage '{r.stage}' but {first.path} by stage "
                                f"'{first.stage}': shards of one output must come from one stage")
        diffs = diff_settings(r.settings, first.settings, MERGE_IGNORED)
        if diffs:
            raise BadInputError(r.path, None, f"settings differ from those of {first.path}: "
                                f"{'; '.join(diffs)} (this shard vs that)")
        for image_id in r.ids():
            if image_id in owner:
                raise BadInputError(r.path, f"image {image_id}", f"is also in {owner[image_id].path}: "
                                    "shards overlap")
            owner[image_id] = r
        r.close()
    return owner
