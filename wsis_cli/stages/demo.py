"""``wsis demo``: the whole product on an embedded default, in one command.

Makes a synthetic dataset, runs every labelling path that exists on it, scores each against the ground
truth and returns one row per method. Until the labelling stages land it scores the box-filled-mask
baseline: each box filled as its mask, the floor every box-supervised labeller must beat. Each stage adds
itself here as a :class:`Method` when it lands.
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

    num_images: int = 40
    height: int = 256
    width: int = 256
    classes: int = 3
    seed: int = 0


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

    name: str
    supervision: str
    label: Callable[[DemoData, Path], coco.Dataset]  # (data, work folder) -> labelled dataset


@dataclass(frozen=True)
class DemoRow:
    method: str
    supervision: str
    output: Path
    report: EvalReport


def _box_filled(data: DemoData, work: Path) -> coco.Dataset:
    return baselines.box_filled_masks(data.boxes)


METHODS: tuple[Method, ...] = (
    Method("boxes → box-filled masks (floor)", "boxes", _box_filled),
)


def run(settings: DemoSettings, out_dir: Path) -> list[DemoRow]:
    """Generate the data under ``out_dir/data``, run every method, write ``<method>.json`` and
    ``report.json`` into ``out_dir`` and return one evaluated row per method."""
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
    eval_settings = EvalSettings(iou_type="both")
    rows: list[DemoRow] = []
    for i, method in enumerate(METHODS):
        log.info("demo: %s (from %s)", method.name, method.supervision)
        labelled = method.label(data, out_dir)
        output = out_dir / f"method-{i + 1}.json"
        coco.write_dataset(labelled, output)
        report = evaluate(data.gt, labelled.annotations, eval_settings)
        rows.append(DemoRow(method.name, method.supervision, output, replace(report, sources={
            "gt": str(data_dir / "gt.json"), "pred": str(output)})))
    write_json({
        "settings": vars(settings),
        "rows": [{"method": r.method, "supervision": r.supervision, "output": str(r.output),
                  "report": r.report.to_json()} for r in rows],
    }, out_dir / "report.json", indent=1)
    return rows
