"""``wsis demo``: the whole product on an embedded default, in one command.

Makes a synthetic dataset and runs every labelling path on it, each from the supervision it needs:

- boxes: the box-filled-mask floor, and ``mal-label`` (MAL trained on the boxes);
- image-level tags: ``cam`` then ``irnet``;
- nothing: ``freemask`` (class-agnostic, so scored class-agnostically);

then ``refine-crf`` on each path's labels, and scores every result against the ground truth. Then (unless
``students`` is off) it trains a small ``train-student`` Mask R-CNN on each path's refined labels and on the
ground truth (the fully supervised upper bound) and reports each student's retention of that bound.
Every stage runs with a CPU-sized configuration from its own module (``demo_*`` entry points);
:data:`FULL` is a bigger, longer set-up (``wsis demo --full``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsis_cli.io.stdio import write_json
from wsis_cli.runtime.log import get_logger
from wsis_cli.stages.demo.jobs import Job, JobPool, JobTime, timed
from wsis_cli.stages.demo.settings import (
    FULL_EPOCHS_FACTOR,
    DemoJob,
    DemoRow,
    DemoSettings,
    DemoSummary,
)

if TYPE_CHECKING:  # the stages themselves are imported when they run: `wsis demo --help` reads this module
    from wsis_cli.io import coco
    from wsis_cli.stages.evaluate.stage import EvalReport

log = get_logger("demo")


@dataclass(frozen=True)
class DemoData:
    """Where the demo's synthetic dataset lives."""

    root: Path
    images: Path
    gt: coco.Dataset
    boxes: coco.Dataset
    labels: coco.Dataset


@dataclass(frozen=True)
class Method:
    """One labelling path of the demo: a name, what it is given, and how it labels the data."""

    key: str
    name: str
    supervision: str
    label: Callable[[DemoData, Path], coco.Dataset]  # (data, work folder) -> labelled dataset
    class_agnostic: bool = False  # labels carry no class: score them class-agnostically
    refine: bool = True  # worth a refine-crf row


def _box_filled(data: DemoData, work: Path) -> coco.Dataset:
    from wsis_cli.stages.baselines import floors as baselines

    return baselines.box_filled_masks(data.boxes)


def _mal(data: DemoData, work: Path) -> coco.Dataset:
    from wsis_cli.stages.mal.stage import demo_mal

    return demo_mal(data.images, data.boxes, work / "mal-label")


def _irnet(data: DemoData, work: Path) -> coco.Dataset:
    from wsis_cli.stages.cam.stage import demo_cams
    from wsis_cli.stages.irnet.stage import demo_irnet

    cams = demo_cams(data.images, data.labels, work / "cam")
    return demo_irnet(data.images, cams, work / "irnet")


def _freemask(data: DemoData, work: Path) -> coco.Dataset:
    from wsis_cli.stages.freemask.stage import demo_freemask

    return demo_freemask(data.images, work / "freemask", data.labels)


METHODS: tuple[Method, ...] = (
    Method("box-filled", "box-filled masks (floor)", "boxes", _box_filled, refine=False),
    Method("mal", "mal-label", "boxes", _mal),
    Method("irnet", "cam → irnet", "image tags", _irnet),
    Method("freemask", "freemask (class-agnostic)", "nothing", _freemask, class_agnostic=True),
)


def _refine(labelled: coco.Dataset, data: DemoData, path: Path, out: Path) -> coco.Dataset:
    from wsis_cli.io import coco
    from wsis_cli.stages.refine import stage as refine_crf

    refine_crf.run(refine_crf.RefineSettings(), refine_crf.RefineJob(str(path), str(data.images), str(out)))
    return coco.load_dataset(out)


def _student_epochs(settings: DemoSettings) -> int:
    from wsis_cli.stages.student.demo import DEMO_EPOCHS

    if settings.student_epochs is not None:
        return settings.student_epochs
    return DEMO_EPOCHS * (FULL_EPOCHS_FACTOR if settings.full else 1)


def train_student_job(images: Path, labels: coco.Dataset, work: Path, epochs: int, mask_loss: str) -> list[dict]:
    """One demo student (a :class:`~wsis_cli.stages.demo.jobs.JobPool` job): its COCO results."""
    from wsis_cli.stages.student.stage import demo_student

    return demo_student(images, labels, work, epochs=epochs, mask_loss=mask_loss)


class _Clock:
    """Per-phase wall and CPU seconds of the demo (its own process; pool jobs report their own)."""

    def __init__(self) -> None:
        self.phases: list[dict[str, object]] = []
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def add(self, name: str, t: JobTime, where: str = "main") -> None:
        self.phases.append({"phase": name, "wall_s": round(t.wall, 2), "cpu_s": round(t.cpu, 2), "process": where})
        log.info("demo: %s took %.1f s (%.1f s CPU, %s)", name, t.wall, t.cpu, where)

    def run(self, name: str, fn: Callable[..., object], *args: object) -> Any:
        result, t = timed(fn, *args)
        self.add(name, t)
        return result

    def summary(self) -> dict[str, object]:
        cpu_main = time.process_time() - self.c0
        cpu_jobs = sum(float(p["cpu_s"]) for p in self.phases if p["process"] != "main")  # type: ignore[arg-type]
        return {"wall_s": round(time.perf_counter() - self.t0, 2), "cpu_main_s": round(cpu_main, 2),
                "cpu_jobs_s": round(cpu_jobs, 2), "cpu_total_s": round(cpu_main + cpu_jobs, 2),
                "phases": self.phases}


def _score(data: DemoData, preds: list[dict], agnostic: bool, reference_ap: float | None = None,
           sources: dict | None = None) -> EvalReport:
    from wsis_cli.stages.evaluate.stage import EvalSettings, evaluate

    report = evaluate(data.gt, preds, EvalSettings(iou_type="both", class_agnostic=agnostic,
                                                   reference_ap=reference_ap))
    return replace(report, sources=sources or {})


def run(settings: DemoSettings, job: DemoJob, progress: object = None) -> DemoSummary:
    """Generate the data under ``job.out_dir/data``, run every method (and refine-crf, students), write each
    output and ``report.json`` into ``job.out_dir`` and return one evaluated row per result (``progress`` is
    accepted for the stage convention; the demo logs its phases instead).

    Students train in a :class:`~wsis_cli.stages.demo.jobs.JobPool` of ``student_jobs`` processes while
    this process goes on labelling: the ground-truth student starts as soon as the data exists, each
    path's student as soon as its labels do. ``report.json`` records each phase's wall and CPU seconds.
    """
    import torch

    from wsis_cli.io import coco
    from wsis_cli.stages.synth import stage as synth

    del progress
    out_dir = Path(job.out_dir)

    methods = [m for m in METHODS if not settings.methods or m.key in settings.methods]
    unknown = set(settings.methods) - {m.key for m in METHODS}
    if unknown:
        raise ValueError(f"unknown demo methods {sorted(unknown)}; choose from {[m.key for m in METHODS]}")
    clock = _Clock()
    data_dir = out_dir / "data"
    synth_settings = synth.SynthSettings(
        num_images=settings.num_images, height=settings.height, width=settings.width,
        classes=settings.classes, seed=settings.seed, force=True,
    )
    clock.run("synth", synth.run, synth_settings, synth.SynthJob(data_dir))
    data = DemoData(
        root=data_dir,
        images=data_dir / "images",
        gt=coco.load_dataset(data_dir / "gt.json"),
        boxes=coco.load_dataset(data_dir / "boxes.json"),
        labels=coco.load_dataset(data_dir / "labels.json"),
    )
    rows: list[DemoRow] = []
    students: list[tuple[str, str, bool, Job]] = []  # (key, row name, class-agnostic, training job)
    epochs = _student_epochs(settings)

    def add(name: str, supervision: str, output: Path, report: EvalReport, agnostic: bool) -> None:
        rows.append(DemoRow(name, supervision, output, report, agnostic))
        log.info("demo: %s: mask AP %.3f, mean IoU %.3f", name, report.mask_ap or 0.0, report.mean_iou or 0.0)

    jobs = settings.student_jobs if settings.students else 0
    threads = torch.get_num_threads()
    if jobs > 1:  # the students take the other core(s): labelling here must not spin a second thread
        torch.set_num_threads(1)
    try:
        with JobPool(jobs) as pool:
            def student(key: str, name: str, labels: coco.Dataset, agnostic: bool) -> None:
                job = pool.submit(train_student_job, data.images, labels, out_dir / f"student-{key}", epochs,
                                  settings.student_mask_loss)
                students.append((key, name, agnostic, job))

            if settings.students:
                student("gt", "ground truth (upper bound)", data.gt, False)
            for method in methods:
                log.info("demo: %s (from %s)", method.name, method.supervision)
                work = out_dir / method.key
                work.mkdir(parents=True, exist_ok=True)
                labelled = clock.run(method.key, method.label, data, work)
                output = out_dir / f"{method.key}.json"
                coco.write_dataset(labelled, output)
                add(method.name, method.supervision, output,
                    _score(data, labelled.annotations, method.class_agnostic, sources={"pred": str(output)}),
                    method.class_agnostic)
                best = labelled
                if settings.refine and method.refine and labelled.annotations:
                    refined_path = out_dir / f"{method.key}.crf.json"
                    best = clock.run(f"{method.key} refine-crf", _refine, labelled, data, output, refined_path)
                    add(f"{method.name} + refine-crf", method.supervision, refined_path,
                        _score(data, best.annotations, method.class_agnostic, sources={"pred": str(refined_path)}),
                        method.class_agnostic)
                if settings.students and best.annotations:
                    student(method.key, method.name if best is labelled else f"{method.name} + refine-crf", best,
                            method.class_agnostic)
            upper_ap: float | None = None
            for key, name, agnostic, job in students:
                preds, t = job.get()
                clock.add(f"student {key}", t, "main" if jobs <= 1 else "pool")
                report = _score(data, preds, agnostic, reference_ap=upper_ap if key != "gt" else None)
                if key == "gt":  # retention needs a bound above zero
                    upper_ap = report.mask_ap if report.mask_ap and report.mask_ap > 0 else None
                predictions = out_dir / f"student-{key}.json"  # beside its run folder student-{key}/
                write_json(preds, predictions)
                add(f"student ← {name}", "full masks" if key == "gt" else "as above", predictions, report, agnostic)
    finally:
        torch.set_num_threads(threads)
    timing = clock.summary()
    log.info("demo: %.1f s wall, %.1f s CPU (%.1f s in this process, %.1f s in student jobs)", timing["wall_s"],
             timing["cpu_total_s"], timing["cpu_main_s"], timing["cpu_jobs_s"])
    write_json({
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()},
        "rows": [{"method": r.method, "supervision": r.supervision, "output": str(r.output),
                  "report": r.report.to_json()} for r in rows],
        "timing": timing,
    }, out_dir / "report.json", indent=1)
    return DemoSummary(rows, out_dir, timing)
