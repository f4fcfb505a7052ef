"""``wsis eval``: COCO mask/box AP and AR plus mean instance mask IoU, as a pure function.

The COCO numbers are pycocotools' ``COCOeval`` numbers, from one of three backends: ``chunked`` (the
default: :mod:`.chunked` reproduces evaluate + accumulate a chunk of images at a time, in bounded memory,
with pycocotools' own IoUs), ``pycocotools`` itself, or faster-coco-eval's drop-in C++ port. The latter two
run on COCO objects built in memory; their stdout chatter is captured and sent to the debug log, so a
caller can keep stdout for JSON. pycocotools' ``-1`` ("no ground truth in this size range") becomes ``None``.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from wsis_cli.io import rle as rle_utils
from wsis_cli.io.coco import Dataset, validate_results
from wsis_cli.runtime.errors import BadInputError, UsageError
from wsis_cli.runtime.log import get_logger
from wsis_cli.runtime.progress import NullProgress, Progress
from wsis_cli.stages.evaluate.chunked import evaluate_chunked
from wsis_cli.stages.evaluate.mean_iou import CategoryIoU, MeanIoU, mean_instance_iou
from wsis_cli.stages.evaluate.settings import EvalJob, EvalSettings

FAST_EVAL_HINT = "--backend faster needs faster-coco-eval: install it with `pip install 'wsis[fast-eval]'`"
AGNOSTIC_CATEGORY = {"id": 1, "name": "object"}

log = get_logger("eval")


def stat_names(max_dets: int) -> tuple[str, ...]:
    """Names of COCOeval's 12 summary statistics, in its order."""
    return ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", f"AR{max_dets}", "ARs", "ARm", "ARl")


@dataclass(frozen=True)
class CocoStats:
    """One iou type's 12 COCO statistics (None: no ground truth in that size range) and per-category AP."""

    iou_type: str
    stats: dict[str, float | None]
    per_category: tuple[dict[str, Any], ...]  # {"id", "name", "AP", "AP50"} in the ground truth's order

    @property
    def ap(self) -> float | None:
        return self.stats["AP"]

    def to_json(self) -> dict[str, Any]:
        return {"stats": dict(self.stats), "per_category": [dict(c) for c in self.per_category]}


@dataclass(frozen=True)
class EvalReport:
    """Everything ``wsis eval`` measured; ``to_json()`` is the machine-readable report."""

    settings: EvalSettings
    coco: dict[str, CocoStats]  # "segm" and/or "bbox"
    mean_iou: float | None  # None when masks were not evaluated or the GT has no instance
    mean_iou_per_category: tuple[CategoryIoU, ...]
    counts: dict[str, int]
    timings: dict[str, float]  # seconds per part ("segm", "bbox", "mean_iou")
    sources: dict[str, str] = field(default_factory=dict)  # filled by the CLI: where GT and PRED came from

    @property
    def iou_types(self) -> tuple[str, ...]:
        return tuple(self.coco)

    @property
    def mask_ap(self) -> float | None:
        return self.coco["segm"].ap if "segm" in self.coco else None

    @property
    def box_ap(self) -> float | None:
        return self.coco["bbox"].ap if "bbox" in self.coco else None

    @property
    def retention_iou_type(self) -> str:
        """Retention compares mask AP where masks were evaluated, box AP otherwise."""
        return "segm" if "segm" in self.coco else "bbox"

    @property
    def retention(self) -> float | None:
        """AP / reference AP, as a fraction (MAL reports e.g. 94% of the fully supervised AP)."""
        ref = self.settings.reference_fraction
        ap = self.coco[self.retention_iou_type].ap if self.coco else None
        return None if ref is None or ap is None else ap / ref

    def to_json(self) -> dict[str, Any]:
        from wsis_cli import __version__

        ref = self.settings.reference_fraction
        return {
            "wsis_version": __version__,
            "settings": asdict(self.settings),
            "backend": self.settings.backend,
            "sources": dict(self.sources),
            "iou_types": list(self.iou_types),
            **{t: s.to_json() for t, s in self.coco.items()},
            "mean_iou": self.mean_iou,
            "mean_iou_per_category": [c.to_json() for c in self.mean_iou_per_category],
            "retention": None if ref is None else {
                "reference_ap": ref,
                "iou_type": self.retention_iou_type,
                "ap": self.coco[self.retention_iou_type].ap if self.coco else None,
                "rate": self.retention,
            },
            "counts": dict(self.counts),
            "timings_s": dict(self.timings),
        }


# ------------------------------------------------------------------------------------------- the stage


def evaluate(gt: Dataset, predictions: Sequence[Mapping[str, Any]], settings: EvalSettings) -> EvalReport:
    """Evaluate ``predictions`` (a COCO results list) against ``gt``.

    Pure: reads no file, prints nothing, leaves ``gt`` and ``predictions`` untouched (COCOeval mutates
    the records it is given, so it only ever sees copies). Predictions without ``score`` count as 1.0.
    Raises :class:`BadInputError` when the requested iou type cannot be evaluated on these records and
    :class:`UsageError` when ``backend="faster"`` is not installed.
    """
    if settings.backend == "faster":
        require_faster()
    validate_results(list(predictions), "<predictions>", gt=gt, class_agnostic=settings.class_agnostic)
    pred_name = "predictions"
    chunked = settings.backend == "chunked"
    if chunked:  # reads the records as they are: no copy of every record, as COCOeval needs
        gt_json = None
        gt_has_masks = all(_has(a, "segmentation") for a in gt.annotations)
        pred_has_masks = _check_predictions(predictions, pred_name)
        preds: Sequence[Mapping[str, Any]] = predictions
        categories = [dict(AGNOSTIC_CATEGORY)] if settings.class_agnostic else gt.categories
    else:
        gt_json, gt_has_masks = _prepare_gt(gt, settings.class_agnostic)
        preds, pred_has_masks = _prepare_predictions(predictions, gt, settings.class_agnostic, pred_name)
        categories = gt_json["categories"]

    iou_types = _resolve_iou_types(settings.iou_type, gt, gt_has_masks, predictions, pred_has_masks, pred_name)
    cat_names = {c["id"]: str(c.get("name", c["id"])) for c in categories}
    coco: dict[str, CocoStats] = {}
    timings: dict[str, float] = {}
    chunked_miou: MeanIoU | None = None
    for iou_type in iou_types:
        t0 = time.perf_counter()
        if chunked:
            acc = evaluate_chunked(gt, predictions, iou_type, settings.max_dets,
                                   class_agnostic=settings.class_agnostic)
            stats, per_cat = _stats_from_arrays(acc.precision, acc.recall, acc.iou_thrs, list(acc.area_labels),
                                                acc.cat_ids, categories)
            if acc.mean_iou is not None:
                chunked_miou = acc.mean_iou
        else:
            assert gt_json is not None
            stats, per_cat = _cocoeval(gt_json, preds, iou_type, settings.max_dets, settings.backend)
        timings[iou_type] = time.perf_counter() - t0
        names = stat_names(settings.max_dets)
        coco[iou_type] = CocoStats(
            iou_type=iou_type,
            stats={n: _none_if_missing(v) for n, v in zip(names, stats, strict=True)},
            per_category=tuple({"id": cid, "name": cat_names[cid], **v} for cid, v in per_cat.items()),
        )
        log.debug("%s AP %.4f (%.2fs)", iou_type, stats[0], timings[iou_type])

    mean_iou: float | None = None
    per_cat_iou: tuple[CategoryIoU, ...] = ()
    if chunked_miou is not None:  # computed within the segm pass, from its IoU matrices
        mean_iou, per_cat_iou = chunked_miou.mean_iou, chunked_miou.per_category
    elif "segm" in coco:
        t0 = time.perf_counter()
        m = mean_instance_iou(gt, preds, class_agnostic=settings.class_agnostic)
        timings["mean_iou"] = time.perf_counter() - t0
        mean_iou, per_cat_iou = m.mean_iou, m.per_category

    crowd = sum(1 for a in gt.annotations if a.get("iscrowd", 0))
    counts = {
        "images": len(gt.images),
        "categories": len(gt.categories),
        "gt_instances": len(gt.annotations) - crowd,
        "gt_crowd": crowd,
        "predictions": len(preds),
        "images_with_predictions": len({p["image_id"] for p in preds}),
    }
    return EvalReport(settings, coco, mean_iou, per_cat_iou, counts, timings)


def run(settings: EvalSettings, job: EvalJob, progress: Progress | None = None) -> EvalReport:
    """The stage convention's entry point: load the job's ground truth and predictions, :func:`evaluate`
    them (the report's ``sources`` name the two files) and, with ``job.report_dir``, draw the worst images
    as ``wsis show``'s report beside the ground truth."""
    from wsis_cli.io import stdio
    from wsis_cli.io.coco import load_dataset, load_predictions

    if job.gt == stdio.STDIO and job.predictions == stdio.STDIO:
        raise UsageError("PRED and --gt cannot both read stdin")
    gt = load_dataset(job.gt)
    predictions = load_predictions(job.predictions, gt, class_agnostic=settings.class_agnostic)
    report = evaluate(gt, predictions, settings)
    report.sources.update(gt=stdio.display_name(job.gt), predictions=stdio.display_name(job.predictions))
    if job.report_dir is not None:
        from wsis_cli.stages.show import ShowJob, ShowSettings
        from wsis_cli.stages.show.stage import run_against_gt

        title = f"wsis eval: the worst images of {stdio.display_name(job.predictions)}"
        run_against_gt(ShowSettings(sort="worst", limit=job.report_limit, class_agnostic=settings.class_agnostic,
                                    title=title),
                       ShowJob(labels=job.predictions, out=str(job.report_dir),
                               images=str(job.images) if job.images else None, gt=job.gt),
                       gt, predictions, progress or NullProgress())
    return report


def require_faster() -> None:
    """Raise :class:`UsageError` (exit 2) with the install hint when faster-coco-eval is missing."""
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        raise UsageError(FAST_EVAL_HINT) from None


# ----------------------------------------------------------------------------------------- preparation


def _has(rec: Mapping[str, Any], key: str) -> bool:
    return rec.get(key) is not None


def _prepare_gt(gt: Dataset, class_agnostic: bool) -> tuple[dict[str, Any], bool]:
    """Copies of the GT records, completed with what COCOeval needs (area, bbox, iscrowd)."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt.images}
    anns = []
    for i, a in enumerate(gt.annotations):
        a = dict(a)
        if not _has(a, "segmentation") and not _has(a, "bbox"):
            raise BadInputError(gt.source, f"annotations[{i}] (id {a['id']})", "has neither segmentation nor bbox")
        if _has(a, "segmentation") and (not _has(a, "bbox") or "area" not in a):
            mask = rle_utils.to_compressed(a["segmentation"], *sizes[a["image_id"]])
            a.setdefault("area", float(rle_utils.area(mask)))
            if not _has(a, "bbox"):
                a["bbox"] = rle_utils.to_bbox(mask)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
        a.setdefault("iscrowd", 0)
        if class_agnostic:
            a["category_id"] = AGNOSTIC_CATEGORY["id"]
        anns.append(a)
    cats = [dict(AGNOSTIC_CATEGORY)] if class_agnostic else [dict(c) for c in gt.categories]
    images = [dict(im) for im in gt.images]
    has_masks = all(_has(a, "segmentation") for a in anns)
    return {"images": images, "annotations": anns, "categories": cats}, has_masks


def _check_predictions(predictions: Sequence[Mapping[str, Any]], name: str) -> bool:
    """What :func:`_prepare_predictions` checks, without the copies; True when every record has a mask."""
    masks = True
    for i, p in enumerate(predictions):
        has_mask = _has(p, "segmentation")
        if not has_mask and not _has(p, "bbox"):
            raise BadInputError(name, f"{name}[{i}]", "has neither segmentation nor bbox")
        masks = masks and has_mask
    return masks


def _prepare_predictions(
    predictions: Sequence[Mapping[str, Any]], gt: Dataset, class_agnostic: bool, name: str
) -> tuple[list[dict[str, Any]], bool]:
    """Copies with a score, compressed-RLE masks and (where any record has one) a box on every record.

    loadRes decides the form of ALL records from the first one: if it has a bbox (or some record has no
    mask, so the box form must be used) every record needs a box.
    """
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt.images}
    need_box = bool(predictions) and (
        _has(predictions[0], "bbox") or not all(_has(p, "segmentation") for p in predictions)
    )
    out = []
    for i, p in enumerate(predictions):
        q = {k: v for k, v in p.items() if k not in ("id", "area")}  # loadRes sets both itself
        q.setdefault("score", 1.0)
        if not _has(q, "segmentation") and not _has(q, "bbox"):
            raise BadInputError(name, f"{name}[{i}]", "has neither segmentation nor bbox")
        if _has(q, "segmentation"):
            seg = q["segmentation"]
            if not (isinstance(seg, Mapping) and isinstance(seg.get("counts"), str)):
                # polygons, uncompressed or bytes RLE: loadRes only takes compressed RLE
                q["segmentation"] = rle_utils.to_compressed(seg, *sizes[q["image_id"]])
            if need_box and not _has(q, "bbox"):
                q["bbox"] = rle_utils.to_bbox(q["segmentation"])
        else:
            q.pop("segmentation", None)
        if class_agnostic:
            q["category_id"] = AGNOSTIC_CATEGORY["id"]
        out.append(q)
    return out, all(_has(q, "segmentation") for q in out)


def _resolve_iou_types(
    wanted: str,
    gt: Dataset,
    gt_has_masks: bool,
    predictions: Sequence[Mapping[str, Any]],
    pred_has_masks: bool,
    name: str,
) -> tuple[str, ...]:
    if wanted == "bbox":
        return ("bbox",)
    if gt_has_masks and pred_has_masks:
        return ("segm", "bbox") if wanted == "both" else ("segm",)
    if wanted == "both":
        why = "the ground truth" if not gt_has_masks else "the predictions"
        log.info("%s have no masks everywhere: evaluating boxes only", why)
        return ("bbox",)
    if not gt_has_masks:
        i = next(i for i, a in enumerate(gt.annotations) if not _has(a, "segmentation"))
        raise BadInputError(gt.source, f"annotations[{i}] (id {gt.annotations[i]['id']})",
                            "has no segmentation, needed for --iou-type segm")
    i = next(i for i, p in enumerate(predictions) if not _has(p, "segmentation"))
    raise BadInputError(name, f"{name}[{i}]", "has no segmentation, needed for --iou-type segm")


# ---------------------------------------------------------------------------------------------- COCOeval


def _none_if_missing(v: float) -> float | None:
    # pycocotools uses -1 for "nothing to measure" (no GT in this size range or category)
    return None if v < 0 else float(v)


def _cocoeval(
    gt_json: dict[str, Any], preds: list[dict[str, Any]], iou_type: str, max_dets: int, backend: str
) -> tuple[list[float], dict[int, dict[str, float | None]]]:
    """Run COCOeval; returns the 12 summary stats and per-category AP / AP50 at max_dets, all areas."""
    if backend == "faster":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

    # Both libraries mutate the dicts they get (ignore flags, ids, areas): give them fresh shallow copies.
    dataset = {k: [dict(r) for r in v] for k, v in gt_json.items()}
    results = [dict(r) for r in preds]
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # pycocotools' loadRes cannot take an empty list; an empty result set is still evaluable
            coco_dt = COCO()
            coco_dt.dataset = {"images": dataset["images"], "categories": dataset["categories"],
                               "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    if chatter.getvalue():
        log.debug("%s", chatter.getvalue().rstrip())

    return _stats_from_arrays(np.asarray(ev.eval["precision"]), np.asarray(ev.eval["recall"]),
                              np.asarray(ev.params.iouThrs), list(ev.params.areaRngLbl), list(ev.params.catIds),
                              gt_json["categories"])


def _stats_from_arrays(
    precision: np.ndarray, recall: np.ndarray, iou_thrs: np.ndarray, area_labels: list[str],
    cat_ids: list[int], categories: list[dict[str, Any]],
) -> tuple[list[float], dict[int, dict[str, float | None]]]:
    """The 12 stats and per-category AP / AP50 from COCOeval's ``precision`` [iou thr, recall thr, category,
    area range, max dets] and ``recall`` [iou thr, category, area range, max dets] arrays."""
    stats = _summary(precision, recall, iou_thrs, area_labels)
    i50 = _thr_index(iou_thrs, 0.5)
    per_cat: dict[int, dict[str, float | None]] = {}
    for k, cid in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]
        per_cat[int(cid)] = {
            "AP": float(p[p > -1].mean()) if (p > -1).any() else None,
            "AP50": float(p[i50][p[i50] > -1].mean()) if (p[i50] > -1).any() else None,
        }
    # keep the ground truth's category order
    order = [c["id"] for c in categories]
    per_cat = {cid: per_cat[cid] for cid in order if cid in per_cat}
    return stats, per_cat


def _thr_index(thresholds: Any, thr: float) -> int:
    return int(np.flatnonzero(np.isclose(np.asarray(thresholds), thr))[0])


def _summary(precision: np.ndarray, recall: np.ndarray, iou_thrs: np.ndarray, areas: list[str]) -> list[float]:
    """COCOeval.summarize()'s 12 numbers, computed from the accumulated arrays.

    Why not call summarize(): pycocotools (2.0.11) computes the headline AP at a hard-coded maxDets=100,
    so with maxDets [1, 10, N], N != 100, it returns -1. Here every AP and AR@N use N (the last maxDets
    slot), as faster-coco-eval does; for N = 100 the numbers are exactly pycocotools'.
    """

    def mean(s: np.ndarray) -> float:
        valid = s[s > -1]
        return float(np.mean(valid)) if valid.size else -1.0

    def ap(thr: float | None = None, area: str = "all") -> float:
        s = precision[..., areas.index(area), -1]
        return mean(s if thr is None else s[_thr_index(iou_thrs, thr)])

    def ar(slot: int, area: str = "all") -> float:
        return mean(recall[:, :, areas.index(area), slot])

    return [
        ap(), ap(0.5), ap(0.75), ap(area="small"), ap(area="medium"), ap(area="large"),
        ar(0), ar(1), ar(2), ar(2, "small"), ar(2, "medium"), ar(2, "large"),
    ]
