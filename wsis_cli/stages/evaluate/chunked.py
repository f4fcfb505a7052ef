"""COCO AP/AR in bounded memory: pycocotools' ``COCOeval`` (evaluate + accumulate), chunk by chunk.

pycocotools keeps a dict per ground truth and detection, an IoU matrix per (image, category) and an
``evalImgs`` entry per (category, area range, image): 11.5 GB for COCO train's 118k images. Here images
are taken a chunk at a time and only a compact record per kept detection survives the chunk: its
category, image, rank within its (image, category) and score, and two bit sets over (area range, IoU
threshold) — matched-and-counted (true positive) and unmatched-and-counted (false positive) — plus the
count of non-ignored ground truths per (category, area range). Accumulation sorts those records exactly as
pycocotools does and yields the same ``precision``/``recall`` arrays, bit for bit:

* per (image, category), detections sorted by score with a stable sort, ties in input order, the first
  ``maxDets[-1]`` kept; ground truths in input order, ignored ones (crowd or outside the area range) last;
* greedy matching per detection and IoU threshold: among still unmatched (or crowd) ground truths with
  IoU ≥ t, the non-ignored one of largest IoU (the last of equals), else the ignored one of largest IoU;
  a match with a ground truth whose id is 0 counts as no match, as in pycocotools (``dtMatches == 0``);
* unmatched detections outside the area range are ignored;
* accumulation per (category, area range, maxDets): detections of all images sorted by score (stable,
  images in id order), cumulative TP/FP, recall = TP / #non-ignored GT, precision made monotone from the
  right, sampled at 101 recall thresholds with ``searchsorted(side="left")``.

IoUs are pycocotools' own (``maskUtils.iou``, one call per image). The matching runs vectorised over every
(image, category) group of a chunk at once: one step per detection rank, over (area range, threshold, pair).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsis_cli.io import rle as rle_utils
from wsis_cli.io.coco import Dataset
from wsis_cli.runtime.errors import BadInputError
from wsis_cli.stages.evaluate.mean_iou import MeanIoU, mean_iou_from_best

# pycocotools' Params.setDetParams, verbatim values
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RNG = np.array([[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
AREA_LABELS = ("all", "small", "medium", "large")
CHUNK_IMAGES = 2048


@dataclass(frozen=True)
class Accumulated:
    """pycocotools' ``eval["precision"]`` (T, R, K, A, M) and ``eval["recall"]`` (T, K, A, M), -1 = undefined."""

    precision: np.ndarray
    recall: np.ndarray
    cat_ids: list[int]
    iou_thrs: np.ndarray
    area_labels: tuple[str, ...]
    mean_iou: MeanIoU | None = None  # segm only: mean instance mask IoU from the same IoU matrices


@dataclass
class _Records:
    """What survives a chunk: one entry per kept detection, bits over (area range, threshold)."""

    cat: np.ndarray  # int32 category index
    img: np.ndarray  # int64 image index (images sorted by id)
    rank: np.ndarray  # int32 rank within its (image, category) by score
    score: np.ndarray  # float64
    tp: np.ndarray  # uint8 (D, ceil(A*T/8)) packed bits
    fp: np.ndarray


def _has(rec: Mapping[str, Any], key: str) -> bool:
    return rec.get(key) is not None


def evaluate_chunked(
    gt: Dataset,
    predictions: Sequence[Mapping[str, Any]],
    iou_type: str,
    max_dets: int,
    *,
    class_agnostic: bool = False,
    chunk_images: int = CHUNK_IMAGES,
) -> Accumulated:
    """COCOeval's precision/recall for ``iou_type`` ("segm" or "bbox") with ``maxDets = [1, 10, max_dets]``.

    ``predictions`` is a validated results list (records without ``score`` count 1.0); nothing is copied
    or mutated. Memory beyond the inputs: O(#detections) small records and one chunk's geometry. For
    "segm" the mean instance mask IoU (:func:`.mean_iou.mean_instance_iou`, every prediction, no maxDets
    cut) comes from the same per-image IoU matrices, for one float per ground truth more.
    """
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be segm or bbox, got {iou_type!r}")
    image_ids = sorted(im["id"] for im in gt.images)
    img_of = {iid: k for k, iid in enumerate(image_ids)}
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt.images}
    cat_ids = [1] if class_agnostic else sorted(gt.category_ids)
    cat_of = {c: k for k, c in enumerate(cat_ids)}
    K, A, T = len(cat_ids), len(AREA_RNG), len(IOU_THRS)
    # loadRes decides from the first record: with a bbox there, every detection's area is its box's area
    box_form = bool(predictions) and (_has(predictions[0], "bbox")
                                      or not all(_has(p, "segmentation") for p in predictions))

    g_img = np.fromiter((img_of[a["image_id"]] for a in gt.annotations), np.int64, len(gt.annotations))
    d_img = np.fromiter((img_of[p["image_id"]] for p in predictions), np.int64, len(predictions))
    g_order, d_order = np.argsort(g_img, kind="stable"), np.argsort(d_img, kind="stable")
    g_sorted, d_sorted = g_img[g_order], d_img[d_order]

    npig = np.zeros((K, A), dtype=np.int64)
    parts: list[_Records] = []
    best = np.zeros(len(gt.annotations)) if iou_type == "segm" else None  # best IoU per GT, 0: nothing overlaps
    for i0 in range(0, len(image_ids), chunk_images):
        i1 = min(i0 + chunk_images, len(image_ids))
        gs, ge = np.searchsorted(g_sorted, [i0, i1])
        ds, de = np.searchsorted(d_sorted, [i0, i1])
        gts = [gt.annotations[i] for i in g_order[gs:ge].tolist()]
        dts = [predictions[i] for i in d_order[ds:de].tolist()]
        rec, counts = _chunk(gt.source, gts, g_order[gs:ge], dts, image_ids, img_of, sizes, cat_of,
                             class_agnostic, iou_type, box_form, max_dets, best)
        npig += counts
        parts.append(rec)
    if parts:
        records = _Records(*(np.concatenate([getattr(p, f) for p in parts])
                             for f in ("cat", "img", "rank", "score", "tp", "fp")))
    else:  # a ground truth without images
        nbytes = (A * T + 7) // 8
        records = _Records(np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0),
                           np.zeros((0, nbytes), np.uint8), np.zeros((0, nbytes), np.uint8))
    precision, recall = _accumulate(records, npig, [1, 10, max_dets], K)
    mean_iou = None if best is None else mean_iou_from_best(gt, best)
    return Accumulated(precision, recall, cat_ids, IOU_THRS.copy(), AREA_LABELS, mean_iou)


# ---------------------------------------------------------------------------------------------- a chunk


def _chunk(
    source: str,
    gts: list[Mapping[str, Any]],
    g_index: np.ndarray,
    dts: list[Mapping[str, Any]],
    image_ids: list[int],
    img_of: dict[int, int],
    sizes: dict[int, tuple[int, int]],
    cat_of: dict[int, int],
    class_agnostic: bool,
    iou_type: str,
    box_form: bool,
    max_dets: int,
    best: np.ndarray | None = None,
) -> tuple[_Records, np.ndarray]:
    K, A, T = len(cat_of), len(AREA_RNG), len(IOU_THRS)
    segm = iou_type == "segm"

    # ground truths: (image, category, input order); area and iscrowd as _prepare_gt completes them
    g_cat = np.array([0 if class_agnostic else cat_of[a["category_id"]] for a in gts], dtype=np.int64)
    g_imgs = np.array([img_of[a["image_id"]] for a in gts], dtype=np.int64)
    g_sort = np.lexsort((np.arange(len(gts)), g_cat, g_imgs))
    gts = [gts[i] for i in g_sort.tolist()]
    g_cat, g_imgs = g_cat[g_sort], g_imgs[g_sort]
    g_geom: list[Any] = []
    g_area = np.empty(len(gts))
    for j, a in enumerate(gts):
        if not _has(a, "segmentation") and not _has(a, "bbox"):
            raise BadInputError(source, f"annotations[{int(g_index[g_sort[j]])}] (id {a['id']})",
                                "has neither segmentation nor bbox")
        mask = None
        if _has(a, "segmentation") and (segm or "area" not in a or not _has(a, "bbox")):
            mask = rle_utils.to_compressed(a["segmentation"], *sizes[a["image_id"]])
        if "area" in a:
            g_area[j] = a["area"]
        elif mask is not None:
            g_area[j] = rle_utils.area(mask)
        else:
            g_area[j] = a["bbox"][2] * a["bbox"][3]
        if segm:
            g_geom.append(mask)
        else:
            g_geom.append(a["bbox"] if _has(a, "bbox") else rle_utils.to_bbox(mask))  # type: ignore[arg-type]
    g_crowd = np.array([int(a.get("iscrowd", 0)) for a in gts], dtype=np.int64)
    g_zero_id = np.array([a["id"] == 0 for a in gts], dtype=bool)
    # ignored per area range: crowd, or area outside the range (bounds inclusive)
    out_g = (g_area[None, :] < AREA_RNG[:, :1]) | (g_area[None, :] > AREA_RNG[:, 1:])
    g_ig = out_g | (g_crowd != 0)[None, :]  # (A, G)
    counts = np.zeros((K, A), dtype=np.int64)
    for a_i in range(A):
        counts[:, a_i] = np.bincount(g_cat[~g_ig[a_i]], minlength=K)

    # detections: (image, category, score descending, input order), first max_dets of each group
    d_cat = np.array([0 if class_agnostic else cat_of[p["category_id"]] for p in dts], dtype=np.int64)
    d_imgs = np.array([img_of[p["image_id"]] for p in dts], dtype=np.int64)
    d_score = np.array([p.get("score", 1.0) for p in dts], dtype=np.float64)
    d_sort = np.lexsort((np.arange(len(dts)), -d_score, d_cat, d_imgs))
    d_cat, d_imgs, d_score = d_cat[d_sort], d_imgs[d_sort], d_score[d_sort]
    group = d_imgs * K + d_cat
    first = np.r_[True, group[1:] != group[:-1]] if len(dts) else np.zeros(0, bool)
    starts = np.flatnonzero(first)
    rank = np.arange(len(dts)) - np.repeat(starts, np.diff(np.r_[starts, len(dts)]))
    keep = rank < max_dets
    if best is not None and not keep.all():  # mean IoU reads every detection: geometry for all, matching on kept
        all_geom, _ = _detections([dts[i] for i in d_sort.tolist()], sizes, segm, box_form)
        all_cat, all_bounds = d_cat, np.searchsorted(d_imgs, np.arange(len(image_ids) + 1))
    else:
        all_geom = all_cat = all_bounds = None
    d_sort, d_cat, d_imgs, d_score, rank = d_sort[keep], d_cat[keep], d_imgs[keep], d_score[keep], rank[keep]
    dts = [dts[i] for i in d_sort.tolist()]
    d_geom, d_area = _detections(dts, sizes, segm, box_form)
    out_d = (d_area[None, :] < AREA_RNG[:, :1]) | (d_area[None, :] > AREA_RNG[:, 1:])  # (A, D)
    g_orig = g_index[g_sort]  # each sorted ground truth's index in gt.annotations

    # same-category (detection, ground truth) pairs with their IoU, one pycocotools call per image
    g_bounds = np.searchsorted(g_imgs, np.arange(len(image_ids) + 1))
    d_bounds = np.searchsorted(d_imgs, np.arange(len(image_ids) + 1))
    present = np.intersect1d(d_imgs, g_imgs)  # images with both detections and ground truths
    p_det, p_gt, p_iou = [], [], []
    for k in present.tolist():
        g0, g1, d0, d1 = int(g_bounds[k]), int(g_bounds[k + 1]), int(d_bounds[k]), int(d_bounds[k + 1])
        crowd = g_crowd[g0:g1].tolist()
        if segm:
            ious = rle_utils.iou(d_geom[d0:d1], g_geom[g0:g1], crowd)
        else:
            ious = rle_utils.box_iou(d_geom[d0:d1], np.asarray(g_geom[g0:g1], np.float64), crowd)
        same = d_cat[d0:d1, None] == g_cat[None, g0:g1]
        if best is not None:  # crowd columns (IoU over the detection's area) are never read
            if all_geom is None:
                best_ious, best_same = ious, same
            else:
                a0, a1 = int(all_bounds[k]), int(all_bounds[k + 1])
                best_ious = rle_utils.iou(all_geom[a0:a1], g_geom[g0:g1], crowd)
                best_same = all_cat[a0:a1, None] == g_cat[None, g0:g1]
            # as mean_iou.best_ious: NaN to 0, other classes 0 (class agnostic: one class), max over detections
            best[g_orig[g0:g1]] = np.where(best_same, np.nan_to_num(best_ious), 0.0).max(axis=0)
        dr, gc = np.nonzero(same)
        p_det.append(dr + d0)
        p_gt.append(gc + g0)
        p_iou.append(ious[dr, gc])
    dtm, dig = _match(p_det, p_gt, p_iou, rank, g_crowd != 0, g_ig, g_zero_id, len(dts))
    dig |= ~dtm & out_d[:, None, :]
    tp = (dtm & ~dig).reshape(A * T, -1).T
    fp = (~dtm & ~dig).reshape(A * T, -1).T
    rec = _Records(d_cat.astype(np.int32), d_imgs, rank.astype(np.int32), d_score,
                   np.packbits(tp, axis=1), np.packbits(fp, axis=1))
    return rec, counts


def _detections(dts: list[Mapping[str, Any]], sizes: dict[int, tuple[int, int]], segm: bool,
                box_form: bool) -> tuple[Any, np.ndarray]:
    """Geometry (RLE list or (D, 4) boxes) and area of each detection, as loadRes derives them."""
    need_masks = segm or not box_form or any(not _has(p, "bbox") for p in dts)
    masks = []
    if need_masks:
        for p in dts:
            seg = p.get("segmentation")
            if seg is None:
                masks.append(None)
            elif isinstance(seg, Mapping) and isinstance(seg.get("counts"), str):
                masks.append(seg)
            else:
                masks.append(rle_utils.to_compressed(seg, *sizes[p["image_id"]]))
    if box_form or not segm:
        boxes = np.zeros((len(dts), 4), dtype=np.float64)
        missing = []
        for j, p in enumerate(dts):
            if _has(p, "bbox"):
                boxes[j] = p["bbox"]
            else:
                missing.append(j)
        if missing:
            boxes[missing] = rle_utils.to_bboxes([masks[j] for j in missing])
    area = boxes[:, 2] * boxes[:, 3] if box_form else rle_utils.areas(masks)
    return (masks if segm else boxes), area


def _match(p_det: list[np.ndarray], p_gt: list[np.ndarray], p_iou: list[np.ndarray], rank: np.ndarray,
           crowd: np.ndarray, g_ig: np.ndarray, g_zero_id: np.ndarray, n_det: int) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.evaluateImg's greedy matching for every group of a chunk: ``(dtMatches != 0, dtIgnore)``,
    both bool (A, T, D). One vectorised step per detection rank; a step's segments are the groups."""
    A, T = g_ig.shape[0], len(IOU_THRS)
    dtm = np.zeros((A, T, n_det), dtype=bool)
    dig = np.zeros((A, T, n_det), dtype=bool)
    if not p_det:
        return dtm, dig
    det, gti, iou = np.concatenate(p_det), np.concatenate(p_gt), np.concatenate(p_iou)
    r = rank[det]
    order = np.lexsort((gti, det, r))  # by rank, then group (one detection per group and rank), then GT
    det, gti, iou, r = det[order], gti[order], iou[order], r[order]
    taken = np.zeros((A, T, len(crowd)), dtype=bool)
    thr = np.minimum(IOU_THRS, 1 - 1e-10)[None, :, None]
    bounds = np.searchsorted(r, np.arange(int(r[-1]) + 2))
    for s0, s1 in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if s0 == s1:
            continue
        d, g, v = det[s0:s1], gti[s0:s1], iou[s0:s1]
        seg = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        lens = np.diff(np.r_[seg, len(d)])
        ok = (~taken[:, :, g] | crowd[g]) & (v >= thr)  # (A, T, P)
        ig = g_ig[:, g][:, None, :]
        c0, c1 = ok & ~ig, ok & ig
        m0 = np.maximum.reduceat(np.where(c0, v, -1.0), seg, axis=2)
        m1 = np.maximum.reduceat(np.where(c1, v, -1.0), seg, axis=2)
        use0 = m0 >= 0
        best = np.where(use0, m0, m1)
        best_p = np.repeat(best, lens, axis=2)
        cand = np.where(np.repeat(use0, lens, axis=2), c0, c1) & (v == best_p) & (best_p >= 0)
        pos = np.maximum.reduceat(np.where(cand, np.arange(len(d)), -1), seg, axis=2)  # last of equals
        a_i, t_i, s_i = np.nonzero(pos >= 0)
        gsel = g[pos[a_i, t_i, s_i]]
        taken[a_i, t_i, gsel] = True
        dsel = d[seg[s_i]]
        dtm[a_i, t_i, dsel] = ~g_zero_id[gsel]
        dig[a_i, t_i, dsel] = g_ig[a_i, gsel]
    return dtm, dig


# ------------------------------------------------------------------------------------------- accumulate


def _accumulate(rec: _Records, npig: np.ndarray, max_dets: list[int], K: int) -> tuple[np.ndarray, np.ndarray]:
    A, T, R, M = len(AREA_RNG), len(IOU_THRS), len(REC_THRS), len(max_dets)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    # pycocotools concatenates per-image lists in image-id order, each in rank order, then sorts by
    # score with a stable sort: (score desc, image, rank) is that order
    order = np.lexsort((rec.rank, rec.img, -rec.score, rec.cat))
    cat = rec.cat[order]
    bounds = np.searchsorted(cat, np.arange(K + 1))
    for k in range(K):
        sel = order[bounds[k]:bounds[k + 1]]
        rank = rec.rank[sel]
        tp_all = np.unpackbits(rec.tp[sel], axis=1, count=A * T).reshape(-1, A, T).astype(bool)
        fp_all = np.unpackbits(rec.fp[sel], axis=1, count=A * T).reshape(-1, A, T).astype(bool)
        for m, max_det in enumerate(max_dets):
            keep = rank < max_det
            tps, fps = tp_all[keep], fp_all[keep]
            nd = tps.shape[0]
            for a in range(A):
                n_pos = int(npig[k, a])
                if n_pos == 0:
                    continue
                tp_sum = np.cumsum(tps[:, a, :].T, axis=1).astype(dtype=float)
                fp_sum = np.cumsum(fps[:, a, :].T, axis=1).astype(dtype=float)
                rc = tp_sum / n_pos
                pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
                recall[:, k, a, m] = rc[:, -1] if nd else 0
                q = np.zeros((T, R))
                if nd:
                    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                    for t in range(T):
                        inds = np.searchsorted(rc[t], REC_THRS, side="left")
                        valid = inds < nd
                        q[t, valid] = pr[t, inds[valid]]
                precision[:, :, k, a, m] = q
    return precision, recall
