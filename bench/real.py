"""Every labelling path wsis has, on a folder of real, human-annotated images, against classical floors
measured in the same run: one table of mean best-match mask IoU, mask AP, AP50 and wall seconds per row.

    uv run python bench/real.py --set ../shared/data/dsb2018-dev --paths boxes,nolabels --json /tmp/dsb.json
    uv run python bench/real.py --set ../shared/data/coco128seg-dev --limit 8      # a quick look

The set is a folder with ``images/``, ``gt.json`` (instance masks), ``boxes.json`` and ``labels.json`` (the
layout of ``../shared/data/*``); a missing set prints one line and exits 0, so scripts can run this anywhere.
Paths (``--paths``; each runs what the set's supervision allows):

- ``boxes``: box-filled masks and GrabCut per box (floors), ``wsis mal-label`` with the CLI defaults (and
  with ``--mal-args``, e.g. the demo recipe, as a second row), and ``wsis refine-crf`` after each, once per
  ``--guards`` value;
- ``nolabels``: Otsu threshold + components and colour components (floors), ``wsis freemask`` (pretrained
  features, the CLI default) and ``wsis freemask --pretrain``, scored class-agnostically;
- ``few``: ``wsis freemask --labeled`` with the masks of every tenth image (10%), scored on all images;
- ``tags``: ``wsis cam`` → ``wsis irnet`` where the set has several classes (skipped otherwise), with the
  thresholded-CAM floor (IRNet's "CAM" row, at the threshold that scores best) from the same CAMs;
- ``students``: ``wsis train-student`` on the best box path's labels (mal-label + refine-crf) of the images
  with odd ids and on their ground truth, both scored on the even ids: retention = pseudo AP / GT AP.

Every ``wsis`` step runs as a subprocess of the real command line. Evaluation uses ``maxDets`` 1000 (nuclei
images hold up to 369 instances). Rows that fail say why in the note column and the run goes on.
``--limit N`` keeps the first N images (by id) for quick development runs; ``--work DIR`` keeps every file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PATHS = ("boxes", "nolabels", "few", "tags", "students")


@dataclass
class Row:
    path: str
    name: str
    miou: float | None = None
    ap: float | None = None
    ap50: float | None = None
    seconds: float | None = None
    note: str = ""


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        from wsis_cli.io import coco

        self.args = args
        self.work = work
        self.images = str(Path(args.set) / "images")
        self.rows: list[Row] = []
        self.outputs: dict[str, Path] = {}  # row name -> its labels file
        gt = coco.load_dataset(Path(args.set) / "gt.json")
        keep = sorted(im["id"] for im in gt.images)[: args.limit or None]
        self.gt = self._subset(gt, set(keep))
        self.files = {"gt": self._write("gt", self.gt)}
        for name in ("boxes", "labels"):
            src = Path(args.set) / f"{name}.json"
            if src.exists():
                self.files[name] = self._write(name, self._subset(coco.load_dataset(src), set(keep)))

    # -- data ----------------------------------------------------------------------------------------------
    @staticmethod
    def _subset(ds, ids: set[int]):
        from wsis_cli.io.coco import Dataset

        return Dataset([im for im in ds.images if im["id"] in ids],
                       [a for a in ds.annotations if a["image_id"] in ids], ds.categories, dict(ds.extra), ds.source)

    def _write(self, name: str, ds) -> Path:
        from wsis_cli.io import coco

        path = self.work / f"{name}.json"
        coco.write_dataset(ds, path)
        return path

    def read_image(self, record: dict[str, Any]):
        from wsis_cli.io.images import load_image_for

        return load_image_for(self.images, record, self.gt.source)

    # -- running and scoring -------------------------------------------------------------------------------
    def wsis(self, *argv: str) -> tuple[float, str]:
        """Run ``wsis ARGV`` (as ``python -m wsis_cli``); returns (wall seconds, '' or the failure's last line)."""
        cmd = [sys.executable, "-m", "wsis_cli", *argv, "-q"]
        if self.args.verbose:
            print("  $ wsis " + " ".join(shlex.quote(a) for a in argv), file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=self.args.timeout or None)
        except subprocess.TimeoutExpired:
            return time.perf_counter() - t0, f"timed out after {self.args.timeout} s"
        sec = time.perf_counter() - t0
        if p.returncode:
            lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
            return sec, f"exit {p.returncode}: {lines[-1][:160] if lines else ''}"
        return sec, ""

    def score(self, path: str, name: str, labels: Path | Any, seconds: float | None, note: str = "",
              agnostic: bool = False, gt=None) -> Row:
        from wsis_cli.io import coco
        from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate

        row = Row(path, name, seconds=seconds, note=note)
        if not note:
            ds = coco.load_dataset(labels) if isinstance(labels, Path) else labels
            gt = gt if gt is not None else self.gt
            keep = {im["id"] for im in gt.images}
            preds = [a for a in ds.annotations if a["image_id"] in keep and a.get("segmentation") is not None]
            if agnostic:  # one category on both sides: the prediction's category names nothing
                cat = gt.categories[0]["id"]
                preds = [{**a, "category_id": cat} for a in preds]
                gt = gt.with_annotations([{**a, "category_id": cat} for a in gt.annotations])
                gt = type(gt)(gt.images, gt.annotations, [gt.categories[0]], gt.extra, gt.source)
            rep = evaluate(gt, preds, EvalSettings(iou_type="segm", max_dets=1000))
            row.miou, row.ap, row.ap50 = rep.mean_iou, rep.mask_ap, rep.coco["segm"].stats["AP50"]
            if isinstance(labels, Path):
                self.outputs[name] = labels
        self.rows.append(row)
        self.print_row(row)
        return row

    def floor(self, path: str, name: str, make: Callable[[], Any], agnostic: bool = False) -> None:
        from wsis_cli.io import coco

        t0 = time.perf_counter()
        ds = make()
        sec = time.perf_counter() - t0
        out = self.work / f"{name.replace(' ', '_')}.json"
        coco.write_dataset(ds, out)
        self.score(path, name, out, sec, agnostic=agnostic)

    def refine(self, path: str, base: str, agnostic: bool = False) -> None:
        if base not in self.outputs:
            return
        for guard in self.args.guards.split(","):
            out = self.work / f"{base.replace(' ', '_')}.refined-{guard}.json"
            sec, note = self.wsis("refine-crf", str(self.outputs[base]), "-i", self.images, "-o", str(out),
                                  "--guard", guard)
            label = f"{base} + refine-crf" + ("" if guard == "contrast" else f" (guard {guard})")
            self.score(path, label, out, sec, note, agnostic=agnostic)

    @staticmethod
    def print_row(r: Row) -> None:
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        sec = "-" if r.seconds is None else f"{r.seconds:.0f}"
        print(f"{r.path:<9} {r.name:<44} {f(r.miou):>6} {f(r.ap):>6} {f(r.ap50):>6} {sec:>6}  {r.note}", flush=True)

    # -- the paths -----------------------------------------------------------------------------------------
    def boxes(self) -> None:
        from wsis_cli.io import coco
        from wsis_cli.stages.baselines.classical import grabcut_masks
        from wsis_cli.stages.baselines.floors import box_filled_masks

        if "boxes" not in self.files:
            self.rows.append(Row("boxes", "-", note="no boxes.json"))
            return
        boxes = coco.load_dataset(self.files["boxes"], need="bbox")
        self.floor("boxes", "box-filled (floor)", lambda: box_filled_masks(boxes))
        self.refine("boxes", "box-filled (floor)")
        self.floor("boxes", "GrabCut per box (floor)", lambda: grabcut_masks(boxes, self.read_image))
        self.refine("boxes", "GrabCut per box (floor)")
        variants = [("mal-label (CLI defaults)", [])]
        if self.args.mal_args:
            variants.append((f"mal-label {self.args.mal_label}", shlex.split(self.args.mal_args)))
        for k, (name, extra) in enumerate(variants):
            out = self.work / f"mal{k}.json"
            sec, note = self.wsis("mal-label", str(self.files["boxes"]), "-i", self.images, "-o", str(out),
                                  "--run", str(self.work / f"mal{k}-run"), *extra)
            self.score("boxes", name, out, sec, note)
            self.refine("boxes", name)
            for cand in (f"{name} + refine-crf", name):  # the students train on the best that ran
                if cand in self.outputs:
                    self.best_boxes = cand
                    break

    def nolabels(self) -> None:
        from wsis_cli.stages.baselines.classical import otsu_components
        from wsis_cli.stages.baselines.floors import colour_components

        imgs = self.gt.with_annotations([])
        self.floor("nolabels", "Otsu threshold + components (floor)",
                   lambda: otsu_components(imgs, self.read_image), agnostic=True)
        self.floor("nolabels", "colour components (floor)",
                   lambda: colour_components(imgs, self.read_image), agnostic=True)
        runs = [("freemask (pretrained features)", [], "fm"),
                ("freemask --pretrain", ["--pretrain", "--run", str(self.work / "fm-pre-run")], "fm-pre")]
        for name, extra, stem in runs:
            out = self.work / f"{stem}.json"
            sec, note = self.wsis("freemask", str(self.files["gt"]), "--images", self.images, "-o", str(out),
                                  *extra, *shlex.split(self.args.freemask_args))
            self.score("nolabels", name, out, sec, note, agnostic=True)

    def few(self) -> None:
        from wsis_cli.io.coco import Dataset

        ids = sorted(im["id"] for im in self.gt.images)[::10]  # every tenth image: 10% of them
        few = Dataset([im for im in self.gt.images if im["id"] in ids],
                      [a for a in self.gt.annotations if a["image_id"] in ids], self.gt.categories)
        few_path = self._write("few", few)
        out = self.work / "fm-few.json"
        sec, note = self.wsis("freemask", str(self.files["gt"]), "--images", self.images, "-o", str(out),
                              "--labeled", str(few_path), "--run", str(self.work / "fm-few-run"),
                              *shlex.split(self.args.freemask_args))
        self.score("few", f"freemask --labeled ({len(ids)} images' masks)", out, sec, note, agnostic=True)

    def tags(self) -> None:
        if "labels" not in self.files or len({a["category_id"] for a in self.gt.annotations}) < 2:
            self.rows.append(Row("tags", "cam -> irnet", note="skipped: one class (tags say nothing)"))
            self.print_row(self.rows[-1])
            return
        cams, out = self.work / "cams.h5", self.work / "irnet.json"
        t_cam, note = self.wsis("cam", str(self.files["labels"]), "-i", self.images, "-o", str(cams),
                                "--run", str(self.work / "cam-run"), *shlex.split(self.args.cam_args))
        t_irn = 0.0
        if not note:
            self.cam_floor(cams)
            t_irn, note = self.wsis("irnet", str(cams), "-i", self.images, "-o", str(out),
                                    "--run", str(self.work / "irnet-run"), *shlex.split(self.args.irnet_args))
        self.score("tags", "cam -> irnet", out, t_cam + t_irn, note)
        self.refine("tags", "cam -> irnet")

    def cam_floor(self, cams: Path) -> None:
        """IRNet's "CAM" row: each class's CAM thresholded into components, at the threshold (0.05..0.95) that
        scores best on the ground truth, so an oracle-tuned floor that cam -> irnet has to beat."""
        from wsis_cli.io.h5 import H5Reader
        from wsis_cli.stages.baselines.floors import cam_components
        from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate

        t0 = time.perf_counter()
        maps = {}
        with H5Reader(cams) as r:
            for i in r.ids():
                cats = [int(c) for c in r.dataset_attrs(i, "cams").get("category_ids", [])]
                maps[i] = (r.get(i)["cams"].astype("float32"), cats)

        def ap50(t: float):
            ds = cam_components(self.gt.images, maps, self.gt.categories, threshold=t)
            rep = evaluate(self.gt, ds.annotations, EvalSettings(iou_type="segm", max_dets=1000))
            return rep.coco["segm"].stats["AP50"] or 0.0, t, ds

        _, best_t, best = max((ap50(round(0.05 * k, 2)) for k in range(1, 20)), key=lambda x: x[:2])
        out = self._write("cam_components", best)
        self.score("tags", f"thresholded CAM (floor, best threshold {best_t})", out, time.perf_counter() - t0)

    def students(self) -> None:
        from wsis_cli.io import coco

        base = getattr(self, "best_boxes", None)
        if base is None or base not in self.outputs:
            self.rows.append(Row("students", "-", note="needs the boxes path's labels (run --paths boxes,...)"))
            self.print_row(self.rows[-1])
            return
        ids = sorted(im["id"] for im in self.gt.images)
        train, test = set(ids[1::2]), set(ids[0::2])
        test_gt = self._subset(self.gt, test)
        test_path = self._write("test-half", test_gt.with_annotations([]))
        scored: dict[str, Row] = {}
        for name, labels in (("ground truth", self.gt), (base, coco.load_dataset(self.outputs[base]))):
            stem = "gt" if name == "ground truth" else "pseudo"
            train_path = self._write(f"student-{stem}-train", self._subset(labels, train))
            run = self.work / f"student-{stem}"
            t_tr, note = self.wsis("train-student", str(train_path), "-i", self.images, "-o", str(run),
                                   *shlex.split(self.args.student_args))
            preds = self.work / f"student-{stem}-preds.json"
            t_pr = 0.0
            if not note:
                t_pr, note = self.wsis("train-student", str(test_path), "-i", self.images, "--checkpoint",
                                       str(run / "model.pt"), "-o", str(preds), "--max-dets", "1000")
            if not note:
                preds_ds = test_gt.with_annotations(json.loads(preds.read_text()))
                scored[name] = self.score("students", f"student <- {name} (other half)", preds_ds, t_tr + t_pr,
                                          gt=test_gt)
            else:
                scored[name] = self.score("students", f"student <- {name}", None, t_tr + t_pr, note)
        ref, got = scored["ground truth"].ap, scored[base].ap
        if ref is not None and ref < 0.01:  # a ratio of two near-zero APs says nothing
            scored[base].note = "no retention: the GT student's mask AP is under 0.01"
        elif ref and got is not None:
            scored[base].note = f"retention {got / ref:.1%} of the GT student's mask AP"
            print(f"students  retention: {got / ref:.1%}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", required=True, help="folder with images/, gt.json, boxes.json, labels.json")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    ap.add_argument("--limit", type=int, default=0, help="keep the first N images (0: all)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--work", help="keep every file here (default: a temporary folder)")
    ap.add_argument("--guards", default="contrast,none", help="refine-crf --guard values to run after each path")
    ap.add_argument("--timeout", type=float, default=0, help="seconds per wsis command (0: none)")
    ap.add_argument("--mal-args", default="", help="flags of a second mal-label row beside the CLI defaults' "
                    "(e.g. the demo recipe)")
    ap.add_argument("--mal-label", default="(demo recipe)", help="what the --mal-args row is called")
    ap.add_argument("--freemask-args", default="", help="extra freemask flags")
    ap.add_argument("--cam-args", default="")
    ap.add_argument("--irnet-args", default="")
    ap.add_argument("--student-args", default="", help="extra train-student flags")
    ap.add_argument("--verbose", action="store_true", help="print each wsis command")
    args = ap.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    if bad := [p for p in paths if p not in PATHS]:
        ap.error(f"unknown path(s) {bad}; choose from {', '.join(PATHS)}")
    if not (Path(args.set) / "gt.json").is_file():
        print(f"real.py: no data set at {args.set} (needs gt.json and images/): skipped", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench = Bench(args, work)
        n_img, n_ins = len(bench.gt.images), len(bench.gt.annotations)
        print(f"set {args.set}: {n_img} images, {n_ins} instances; mean best-match mask IoU, mask AP, AP50 "
              f"(maxDets 1000), wall seconds")
        print(f"{'path':<9} {'labels':<44} {'mIoU':>6} {'AP':>6} {'AP50':>6} {'s':>6}  note")
        for p in PATHS:
            if p in paths:
                getattr(bench, p)()
        if args.json:
            Path(args.json).write_text(json.dumps({
                "set": args.set, "images": n_img, "instances": n_ins, "limit": args.limit,
                "argv": sys.argv[1:], "rows": [asdict(r) for r in bench.rows]}, indent=1))


if __name__ == "__main__":
    main()
