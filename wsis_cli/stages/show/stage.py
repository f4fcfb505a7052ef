"""``wsis show``: render label sets over their images as PNGs and a static HTML report.

One to three panels per image: the labels, optionally a second label set (``--compare``) and the ground
truth (``--gt``). With a reference (the ground truth, else the other label set) every instance carries its
best IoU against it, matched instances share a colour across panels, reference instances nothing found get
a dashed box, and images can be sorted worst first by their mean IoU.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsis_cli.io import coco
from wsis_cli.io import rle as rle_utils
from wsis_cli.io.images import folder_images, load_image_for
from wsis_cli.io.report import report_dir
from wsis_cli.io.stdio import display_name
from wsis_cli.runtime.errors import UsageError
from wsis_cli.runtime.log import get_logger
from wsis_cli.runtime.progress import NullProgress, Progress
from wsis_cli.runtime.sharding import resolve_shard, shard_ids
from wsis_cli.stages.show import html
from wsis_cli.stages.show.match import agreement, instance_rle, match, mean_iou_vs_reference
from wsis_cli.stages.show.render import Instance, display_size, hex_colour, palette, render, thumb_size
from wsis_cli.stages.show.settings import ShowJob, ShowSettings

log = get_logger("show")


@dataclass(frozen=True)
class ShowSummary:
    """What :func:`run` wrote."""

    out: str
    images: int  # images in the report
    pages: int  # index pages
    panels: tuple[str, ...]  # "labels", "compare", "gt" in display order
    sort: str
    mean_iou: float | None  # mean best IoU of the reference instances over the shown images
    files: int
    bytes: int
    seconds: float


@dataclass
class _LabelSet:
    key: str  # file-name tag of the panel: labels, compare, gt
    role: str  # what the panel is called on the pages
    source: str
    by_image: dict[int, list[dict[str, Any]]]


@dataclass
class _Scored:
    """One image's instances (as RLE) and how they match; computed before any pixel is read."""

    image: dict[str, Any]
    rles: dict[str, list[rle_utils.Rle]]
    best: dict[str, np.ndarray]  # per panel: each instance's best IoU against its reference
    matched_to: dict[str, np.ndarray]  # per panel: index of the best reference instance, -1 for none
    score: float | None
    ref_best: np.ndarray | None  # the ground truth's non-crowd instances' best IoUs (None without --gt)


def _by_image(records: Sequence[Mapping[str, Any]], image_ids: set[int], threshold: float
              ) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in image_ids}
    for k, r in enumerate(records):
        if r.get("score", 1.0) < threshold:
            continue
        rec = dict(r)
        rec.setdefault("id", k + 1)  # results lists have no ids: their position names them
        out.setdefault(rec["image_id"], []).append(rec)
    return out


def _load(settings: ShowSettings, job: ShowJob) -> tuple[coco.Dataset, list[_LabelSet]]:
    """The image records, categories and label sets (labels, compare, gt), validated against each other."""
    agnostic = settings.class_agnostic
    if job.gt is not None:
        base = coco.load_dataset(job.gt)
        labels = coco.load_predictions(job.labels, base, class_agnostic=agnostic)
    else:
        loaded = coco.load_coco(job.labels)
        if isinstance(loaded, coco.Dataset):
            base, labels = loaded, loaded.annotations
        else:
            if job.images is None:
                raise UsageError(f"{display_name(job.labels)} is a results list, which has no image records: "
                                 "give --gt GT.json or -i IMAGES (a folder; ids 1..N from sorted file names)")
            images = folder_images(job.images)
            cats = sorted({r["category_id"] for r in loaded})
            base = coco.Dataset(images, [], [{"id": c, "name": f"class {c}"} for c in cats], {},
                                display_name(job.images))
            labels = coco.validate_results(loaded, display_name(job.labels),
                                           sizes={im["id"]: (im["height"], im["width"]) for im in images})
    ids = {im["id"] for im in base.images}
    t = settings.score_threshold
    sets = [_LabelSet("labels", "labels", display_name(job.labels), _by_image(labels, ids, t))]
    if job.compare is not None:
        known = set(base.category_ids)
        other = coco.load_predictions(job.compare, base, class_agnostic=agnostic or not known)
        sets.append(_LabelSet("compare", "compare", display_name(job.compare), _by_image(other, ids, t)))
    if job.gt is not None:
        sets.append(_LabelSet("gt", "ground truth", display_name(job.gt), _by_image(base.annotations, ids, 0.0)))
    return base, sets


def _select(settings: ShowSettings, job: ShowJob, base: coco.Dataset) -> list[dict[str, Any]]:
    shard = resolve_shard(job.shard)
    ids = shard_ids([im["id"] for im in base.images], shard)
    if settings.ids is not None:
        known = {im["id"] for im in base.images}
        missing = [i for i in settings.ids if i not in known]
        if missing:
            raise UsageError(f"--ids: image id {missing[0]} is not in {base.source}"
                             + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
        keep = set(settings.ids)
        ids = [i for i in ids if i in keep]
    index = base.image_index
    return [index[i] for i in ids]


def _reference(sets: Sequence[_LabelSet]) -> dict[str, str]:
    """Which panel each panel is measured against: the ground truth when there is one, else each of two
    compared sets against the other."""
    keys = [s.key for s in sets]
    if "gt" in keys:
        return {k: "gt" for k in keys if k != "gt"} | {"gt": "labels"}
    if "compare" in keys:
        return {"labels": "compare", "compare": "labels"}
    return {}


def _score(image: dict[str, Any], sets: Sequence[_LabelSet], ref: Mapping[str, str], agnostic: bool) -> _Scored:
    h, w = image["height"], image["width"]
    anns = {s.key: s.by_image.get(image["id"], []) for s in sets}
    rles = {k: [instance_rle(a, h, w) for a in v] for k, v in anns.items()}
    cats = {k: [a["category_id"] for a in v] for k, v in anns.items()}
    best: dict[str, np.ndarray] = {}
    matched: dict[str, np.ndarray] = {}
    for k, r in ref.items():
        m = match(rles[k], cats[k], rles[r], cats[r], class_agnostic=agnostic)
        best[k], matched[k] = m.a, m.a_to_b
    score: float | None = None
    ref_best: np.ndarray | None = None
    if "gt" in anns:
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns["gt"]], dtype=bool)
        ref_best = best["gt"][~crowd] if crowd.size else best["gt"]
        score = mean_iou_vs_reference(len(anns["labels"]), ref_best)
    elif "compare" in anns:
        score = agreement(match(rles["labels"], cats["labels"], rles["compare"], cats["compare"],
                                class_agnostic=agnostic))
    return _Scored(image, rles, best, matched, score, ref_best)


def _order(scored: list[_Scored], sort: str) -> list[_Scored]:
    if sort == "id":
        return sorted(scored, key=lambda s: s.image["id"])
    if sort == "file":
        return sorted(scored, key=lambda s: (s.image["file_name"], s.image["id"]))
    if sort == "instances":
        return sorted(scored, key=lambda s: (-len(s.rles["labels"]), s.image["id"]))
    if any(s.score is None for s in scored):
        raise UsageError(f"--sort {sort} needs something to measure against: give --gt or --compare")
    sign = 1.0 if sort == "worst" else -1.0
    return sorted(scored, key=lambda s: (sign * float(s.score or 0.0), s.image["id"]))


def _colours(s: _Scored, sets: Sequence[_LabelSet], ref: Mapping[str, str], match_iou: float
             ) -> dict[str, list[tuple[int, int, int]]]:
    """A colour per instance; an instance that matches its reference (IoU >= ``match_iou``) takes the
    reference instance's colour, so one object has one colour in every panel."""
    keys = [x.key for x in sets]
    anchor = "gt" if "gt" in keys else "labels"
    n = {k: len(s.rles[k]) for k in keys}
    pal = palette(sum(n.values()))
    out = {anchor: pal[: n[anchor]]}
    offset = n[anchor]
    for k in keys:
        if k == anchor:
            continue
        cols = []
        for i in range(n[k]):
            j = int(s.matched_to[k][i]) if k in s.matched_to else -1
            if ref.get(k) == anchor and j >= 0 and s.best[k][i] >= match_iou:
                cols.append(out[anchor][j])
            else:
                cols.append(pal[offset + i])
        offset += n[k]
        out[k] = cols
    return out


def _fmt(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def run(settings: ShowSettings, job: ShowJob, progress: Progress | None = None) -> ShowSummary:
    """Write the report folder ``job.out`` (whole or not at all) and return what it holds."""
    t0 = time.perf_counter()
    base, sets = _load(settings, job)
    return _write(settings, job, base, sets, progress, t0)


def run_against_gt(settings: ShowSettings, job: ShowJob, gt: coco.Dataset, labels: Sequence[Mapping[str, Any]],
                   progress: Progress | None = None) -> ShowSummary:
    """:func:`run` on label records already loaded and checked against ``gt`` (``wsis eval --report``: PRED
    is read once, even from stdin). ``job.labels`` and ``job.gt`` only name the two sets on the pages."""
    t0 = time.perf_counter()
    ids = {im["id"] for im in gt.images}
    sets = [_LabelSet("labels", "labels", display_name(job.labels), _by_image(labels, ids, settings.score_threshold)),
            _LabelSet("gt", "ground truth", display_name(job.gt or gt.source), _by_image(gt.annotations, ids, 0.0))]
    return _write(settings, job, gt, sets, progress, t0)


def _write(settings: ShowSettings, job: ShowJob, base: coco.Dataset, sets: list[_LabelSet],
           progress: Progress | None, t0: float) -> ShowSummary:
    progress = progress or NullProgress()
    ref = _reference(sets)
    sort = settings.resolved_sort(bool(ref))
    images = _select(settings, job, base)
    scored = _order([_score(im, sets, ref, settings.class_agnostic) for im in images], sort)
    if settings.limit is not None:
        scored = scored[: settings.limit]
    names = {c["id"]: str(c.get("name", c["id"])) for c in base.categories}
    title = settings.title or f"wsis show: {sets[0].source}"
    legend = _legend(sets, ref, settings.match_iou)

    pooled = np.concatenate([s.ref_best for s in scored if s.ref_best is not None] or [np.zeros(0)])
    mean_iou = float(pooled.mean()) if pooled.size else None

    entries: list[html.Entry] = []
    per_image: list[dict[str, Any]] = []
    with report_dir(job.out, force=job.force) as writer:
        progress.start(len(scored), "show")
        for s in scored:
            entry, record = _draw(s, sets, ref, names, settings, job, writer)
            entries.append(entry)
            per_image.append(record)
            progress.advance(1)
        progress.finish()
        pages = max(1, -(-len(entries) // settings.page_size))
        summary = _summary_lines(sets, len(entries), len(base.images), sort, mean_iou, pooled.size)
        for p in range(1, pages + 1):
            chunk = entries[(p - 1) * settings.page_size : p * settings.page_size]
            writer.text(html.index_name(p), html.index_page(title, summary, legend, chunk, p, pages))
        for k, e in enumerate(entries):
            prev_id = entries[k - 1].image_id if k > 0 else None
            next_id = entries[k + 1].image_id if k + 1 < len(entries) else None
            page = html.index_name(k // settings.page_size + 1)
            writer.text(html.view_name(e.image_id),
                        html.view_page(title, e, k + 1, len(entries), page, prev_id, next_id, legend))
        writer.text(html.STYLE_NAME, html.STYLE)
        from wsis_cli import __version__

        writer.json("report.json", {
            "wsis_version": __version__, "settings": settings.to_json(), "sort": sort,
            "sources": {x.key: x.source for x in sets}, "mean_iou": mean_iou, "images": per_image,
        })
        files, nbytes = writer.files, writer.bytes
    seconds = time.perf_counter() - t0
    log.info("show: %d images, %d index pages, %d files (%.1f MB) in %.1fs: open %s", len(entries), pages,
             files, nbytes / 1e6, seconds, Path(job.out) / html.index_name(1))
    return ShowSummary(str(job.out), len(entries), pages, tuple(x.key for x in sets), sort, mean_iou, files,
                       nbytes, seconds)


def _legend(sets: Sequence[_LabelSet], ref: Mapping[str, str], match_iou: float) -> str:
    if not ref:
        return "One colour per instance; labels give the class and the score."
    if "gt" in [s.key for s in sets]:
        return (f"IoU: each instance's best mask IoU against the other side (same class). A prediction with "
                f"IoU >= {match_iou:g} takes the colour of its ground-truth instance; a dashed box marks a "
                "ground-truth instance nothing found. Images are scored by the mean IoU of their "
                "ground-truth instances.")
    return (f"IoU: each instance's best mask IoU against the other label set (same class); instances with "
            f"IoU >= {match_iou:g} share a colour. Images are scored by the mean best IoU over the instances "
            "of both sets.")


def _summary_lines(sets: Sequence[_LabelSet], shown: int, total: int, sort: str, mean_iou: float | None,
                   instances: int) -> list[str]:
    lines = [f"{shown} of {total} images, sorted by {sort}" + (" first" if sort in ("worst", "best") else "")]
    lines.append(" | ".join(f"{s.role}: {s.source}" for s in sets))
    if mean_iou is not None:
        lines.append(f"mean instance IoU {mean_iou:.3f} over the {instances} ground-truth instances shown")
    return lines


def _draw(s: _Scored, sets: Sequence[_LabelSet], ref: Mapping[str, str], names: Mapping[int, str],
          settings: ShowSettings, job: ShowJob, writer: Any) -> tuple[html.Entry, dict[str, Any]]:
    """Render every panel of one image (full view and thumbnail) and describe it for the pages."""
    im = s.image
    h, w = im["height"], im["width"]
    source = sets[-1].source if sets[-1].key == "gt" else sets[0].source  # the file the image records are from
    pixels = load_image_for(job.images, im, source)
    colours = _colours(s, sets, ref, settings.match_iou)
    view_hw = display_size(h, w, settings.min_side, settings.max_side)
    thumb_hw = thumb_size(h, w, settings.thumb_side)
    panels: list[html.Panel] = []
    record: dict[str, Any] = {"id": im["id"], "file_name": im["file_name"], "score": s.score, "panels": {}}
    for x in sets:
        anns = x.by_image.get(im["id"], [])
        best = s.best.get(x.key)
        instances, rows = [], []
        for i, a in enumerate(anns):
            mask = rle_utils.decode(s.rles[x.key][i]) if a.get("segmentation") is not None else None
            bbox = a.get("bbox") or (rle_utils.to_bbox(s.rles[x.key][i]) if mask is not None else None)
            cat = names.get(a["category_id"], f"class {a['category_id']}")
            crowd = bool(a.get("iscrowd", 0))
            iou = None if best is None or crowd else float(best[i])
            score = a.get("score") if x.key != "gt" else None
            parts = [cat + (" (crowd)" if crowd else "")]
            if score is not None:
                parts.append(f"{score:.2f}")
            if iou is not None:
                parts.append(f"IoU {iou:.2f}")
            missed = x.key == "gt" and iou is not None and iou < settings.match_iou
            instances.append(Instance(mask, bbox, colours[x.key][i], " ".join(parts), dashed=missed))
            area = a.get("area")
            if area is None:
                area = rle_utils.area(s.rles[x.key][i])
            rows.append(html.Row(hex_colour(colours[x.key][i]), str(a["id"]), cat, _fmt(score), _fmt(iou),
                                 f"{float(area):g}"))
        view = render(pixels, instances, view_hw, alpha=settings.alpha, boxes=settings.boxes,
                      labels=settings.labels and len(instances) <= settings.max_tags)
        thumb = render(pixels, instances, thumb_hw, alpha=settings.alpha, boxes=False, labels=False)
        img_rel = f"img/{im['id']}.{x.key}.{settings.view_suffix(im['file_name'])}"
        thumb_rel = f"thumb/{im['id']}.{x.key}.png"
        writer.image(img_rel, view)
        writer.png(thumb_rel, thumb)
        valid = [v for v, a in zip(best, anns, strict=True) if not a.get("iscrowd", 0)] if best is not None else []
        mean = float(np.mean(valid)) if len(valid) else None
        caption = f"{len(anns)} instance{'s' if len(anns) != 1 else ''}"
        if mean is not None:
            caption += f", mean IoU {mean:.2f}"
        panels.append(html.Panel(f"{x.role}: {x.source}", img_rel, thumb_rel, view_hw, thumb_hw, caption,
                                 tuple(rows)))
        record["panels"][x.key] = {"instances": len(anns), "mean_iou": mean}
    score_text = "" if s.score is None else (
        f"mean IoU {s.score:.3f}" if "gt" in record["panels"] else f"agreement {s.score:.3f}")
    entry = html.Entry(im["id"], im["file_name"], w, h, score_text, tuple(panels))
    return entry, record
