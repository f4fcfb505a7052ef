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

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from wsis_cli.io import coco
from wsis_cli.io.stdio import write_json
from wsis_cli.runtime.log import get_logger
from wsis_cli.stages import baselines, synth
from wsis_cli.stages.evaluate import EvalReport, EvalSettings, evaluate

log = get_logger("demo")


@dataclass(frozen=True)
class DemoSettings:
    """Settings of ``wsis demo`` (one field per flag)."""

    num_images: int = 24  # sized so every path runs in minutes on a 2-core laptop
    height: int = 128
    width: int = 128
    classes: int = 3
    seed: int = 0
    refine: bool = True  # also score each path after refine-crf
    students: bool = True  # train a student on each path's labels and on the ground truth
    student_epochs: int | None = None  # None: train_student.DEMO_EPOCHS (FULL_EPOCHS_FACTOR times that with full)
    student_mask_loss: str = "standard"
    methods: tuple[str, ...] = ()  # only these methods (by key); empty: all
    full: bool = False  # the bigger, longer set-up (wsis demo --full)


# ``wsis demo --full``: more and larger images (the CLI's defaults then) and students trained longer
FULL_IMAGES, FULL_SIZE, FULL_EPOCHS_FACTOR = 64, (192, 192), 3


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


@dataclass(frozen=True)
class DemoRow:
    method: str
    supervision: str
    output: Path
    report: EvalReport


def _box_filled(data: DemoData, work: Path) -> coco.Dataset:
    return baselines.box_filled_masks(data.boxes)


def _mal(data: DemoData, work: Path) -> coco.Dataset:
    from wsis_cli.stages.mal_label import demo_mal

    return demo_mal(data.images, data.boxes, work / "mal-label")


def _irnet(data: DemoData, work: Path) -> coco.Dataset:
    from wsis_cli.stages.cam import demo_cams
    from wsis_cli.stages.irnet import demo_irnet

    cams = demo_cams(data.images, data.labels, work / "cam")
    return demo_irnet(data.images, cams, work / "irnet")


def _freemask(data: DemoData, work: Path) -> coco.Dataset:
    from wsis_cli.stages.freemask import demo_freemask

    return demo_freemask(data.images, work / "freemask", data.labels)


METHODS: tuple[Method, ...] = (
    Method("box-filled", "box-filled masks (floor)", "boxes", _box_filled, refine=False),
    Method("mal", "mal-label", "boxes", _mal),
    Method("irnet", "cam → irnet", "image tags", _irnet),
    Method("freemask", "freemask (class-agnostic)", "nothing", _freemask, class_agnostic=True),
)


def _refine(labelled: coco.Dataset, data: DemoData, path: Path, out: Path) -> coco.Dataset:
    from wsis_cli.stages import refine_crf

    refine_crf.run(refine_crf.RefineSettings(), refine_crf.RefineJob(str(path), str(data.images), str(out)))
    return coco.load_dataset(out)


def _student(labels: coco.Dataset, data: DemoData, work: Path, settings: DemoSettings) -> list[dict]:
    from wsis_cli.stages.train_student import DEMO_EPOCHS, demo_student

    epochs = settings.student_epochs if settings.student_epochs is not None else \
        DEMO_EPOCHS * (FULL_EPOCHS_FACTOR if settings.full else 1)
    return demo_student(data.images, labels, work, epochs=epochs, mask_loss=settings.student_mask_loss)


def _score(data: DemoData, preds: list[dict], agnostic: bool, reference_ap: float | None = None,
           sources: dict | None = None) -> EvalReport:
    report = evaluate(data.gt, preds, EvalSettings(iou_type="both", class_agnostic=agnostic,
                                                   reference_ap=reference_ap))
    return replace(report, sources=sources or {})


def run(settings: DemoSettings, out_dir: Path) -> list[DemoRow]:
    """Generate the data under ``out_dir/data``, run every method (and refine-crf, students), write each
    output and ``report.json`` into ``out_dir`` and return one evaluated row per result."""
    data_dir = out_dir / "data"
    synth_settings = synth.SynthSettings(
        num_images=settings.num_images, height=settings.height, width=settings.width,
        classes=settings.classes, seed=settings.seed, force=True,
    )
    synth.run(synth_settings, data_dir)
    data = DemoData(
        root=data_dir,
        images=data_dir / "images",
        gt=coco.load_dataset(data_dir / "gt.json"),
        boxes=coco.load_dataset(data_dir / "boxes.json"),
        labels=coco.load_dataset(data_dir / "labels.json"),
    )
    methods = [m for m in METHODS if not settings.methods or m.key in settings.methods]
    unknown = set(settings.methods) - {m.key for m in METHODS}
    if unknown:
        raise ValueError(f"unknown demo methods {sorted(unknown)}; choose from {[m.key for m in METHODS]}")
    rows: list[DemoRow] = []
    trained_on: list[tuple[str, str, coco.Dataset, bool]] = []  # labels worth a student

    def add(name: str, supervision: str, output: Path, report: EvalReport) -> None:
        rows.append(DemoRow(name, supervision, output, report))
        log.info("demo: %s: mask AP %.3f, mean IoU %.3f", name, report.mask_ap or 0.0, report.mean_iou or 0.0)

    for method in methods:
        log.info("demo: %s (from %s)", method.name, method.supervision)
        work = out_dir / method.key
        work.mkdir(parents=True, exist_ok=True)
        labelled = method.label(data, work)
        output = out_dir / f"{method.key}.json"
        coco.write_dataset(labelled, output)
        add(method.name, method.supervision, output,
            _score(data, labelled.annotations, method.class_agnostic, sources={"pred": str(output)}))
        best = labelled
        if settings.refine and method.refine and labelled.annotations:
            refined_path = out_dir / f"{method.key}.crf.json"
            best = _refine(labelled, data, output, refined_path)
            add(f"{method.name} + refine-crf", method.supervision, refined_path,
                _score(data, best.annotations, method.class_agnostic, sources={"pred": str(refined_path)}))
        label_name = method.name if best is labelled else f"{method.name} + refine-crf"
        trained_on.append((method.key, label_name, best, method.class_agnostic))
    if settings.students:
        upper_dir = out_dir / "student-gt"
        upper = _score(data, _student(data.gt, data, upper_dir, settings), False)
        add("student ← ground truth (upper bound)", "full masks", upper_dir, upper)
        for key, name, labels, agnostic in trained_on:
            if not labels.annotations:
                continue
            work = out_dir / f"student-{key}"
            preds = _student(labels, data, work, settings)
            ref = upper.mask_ap if upper.mask_ap and upper.mask_ap > 0 else None  # retention needs an AP > 0
            add(f"student ← {name}", "as above", work, _score(data, preds, agnostic, reference_ap=ref))
    write_json({
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()},
        "rows": [{"method": r.method, "supervision": r.supervision, "output": str(r.output),
                  "report": r.report.to_json()} for r in rows],
    }, out_dir / "report.json", indent=1)
    return rows
