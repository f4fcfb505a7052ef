"""Every subcommand's flags default to the settings fields they fill: the dataclasses hold the only copy.

A stage called from Python (the demo, the tests, a notebook) must behave as the command line does with the
same values; a flag whose default drifts from its field makes the two silently differ. Each entry below names
the settings classes a command fills, the flags whose names differ from their field (with the conversion the
command applies), and the fields that have no flag on purpose.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import pytest


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def _negate(v: bool) -> bool:
    return not v


@dataclass
class Mirror:
    command: Callable[..., Any]
    settings: list[type]  # searched in order: a flag fills the first class that has its name
    renamed: dict[str, tuple[type, str, Callable[[Any], Any]]] = field(default_factory=dict)
    unflagged: set[str] = field(default_factory=set)  # "Class.field" set from Python only


def _cam() -> Mirror:
    from wsis_cli.cli.cam import _floats, _pair, cam
    from wsis_cli.stages.cam.settings import CamJob, CamSettings, TrainSettings

    return Mirror(cam, [CamSettings, TrainSettings, CamJob], {
        "scales": (CamSettings, "scales", lambda v: _floats(v, "--scales")),
        "no_flip": (CamSettings, "flip", _negate),
        "no_amp": (TrainSettings, "amp", _negate),
        "resize_long": (TrainSettings, "resize_long", lambda v: _pair(v, "--resize-long")),
        "crop": (TrainSettings, "crop", lambda v: v or None),
        "run": (CamJob, "run_dir", lambda v: v),
    }, {"TrainSettings.poly_power", "CamSettings.train",
        "CamJob.batch_size"})  # --batch-size fills TrainSettings.batch_size and the job's inference batch


def _irnet() -> Mirror:
    from wsis_cli.cli.irnet import irnet
    from wsis_cli.stages.irnet.settings import IRNetJob, IRNetSettings

    return Mirror(irnet, [IRNetSettings, IRNetJob], {"no_amp": (IRNetSettings, "amp", _negate)},
                  {"IRNetSettings.weight_decay", "IRNetSettings.walk_radius", "IRNetSettings.refine_steps",
                   "IRNetSettings.fragment_fraction"})


def _refine() -> Mirror:
    from wsis_cli.cli.refine_crf import refine_crf
    from wsis_cli.stages.refine.settings import MapJob, MapSettings, RefineJob

    return Mirror(refine_crf, [MapSettings, RefineJob, MapJob], unflagged={"MapSettings.bucket"})


def _student() -> Mirror:
    from wsis_cli.cli.train_student import train_student
    from wsis_cli.stages.student.settings import StudentSettings

    return Mirror(train_student, [StudentSettings], {
        "no_flip": (StudentSettings, "flip", _negate),
        "no_amp": (StudentSettings, "amp", _negate),
        "init_weights": (StudentSettings, "init_weights", lambda v: v),
        "val": (StudentSettings, "val", lambda v: v),
    }, {"StudentSettings.momentum"})


def _mal() -> Mirror:
    from wsis_cli.cli.mal_label import mal_label
    from wsis_cli.stages.mal.settings import MalJob, MalSettings

    return Mirror(mal_label, [MalSettings, MalJob], {"no_amp": (MalSettings, "amp", _negate)},
                  {"MalJob.boxes_data"})


def _freemask() -> Mirror:
    from wsis_cli.cli.freemask import _scales, freemask
    from wsis_cli.stages.freemask.settings import (
        BackboneSpec,
        FreeMaskJob,
        FreeMaskParams,
        FreeMaskSettings,
        PretrainSettings,
        TuneSettings,
    )

    same = lambda v: v  # noqa: E731
    return Mirror(freemask, [FreeMaskSettings, FreeMaskJob, BackboneSpec, FreeMaskParams, TuneSettings,
                             PretrainSettings], {
        "scales": (FreeMaskParams, "scales", _scales),
        "no_amp": (FreeMaskJob, "amp", _negate),
        "pretrain_epochs": (PretrainSettings, "epochs", same),
        "pretrain_lr": (PretrainSettings, "lr", same),
        "pretrain_side": (PretrainSettings, "short_side", same),
        "pretrain": (FreeMaskSettings, "pretrain", lambda v: None),  # off: no PretrainSettings at all
    }, {"FreeMaskSettings.backbone", "FreeMaskSettings.params", "FreeMaskSettings.tune",
        "FreeMaskParams.min_area", "FreeMaskParams.mask_threshold", "FreeMaskParams.embed_dim",
        "FreeMaskParams.pre_nms", "TuneSettings.head", "TuneSettings.optimizer",
        "PretrainSettings.position_weight", "PretrainSettings.pixel_weight", "PretrainSettings.region_weight",
        "PretrainSettings.warmup", "PretrainSettings.pass_pixels", "TuneSettings.pass_pixels"})


def _eval() -> Mirror:
    from wsis_cli.cli.evaluate import eval_cmd
    from wsis_cli.stages.evaluate.settings import EvalJob, EvalSettings

    return Mirror(eval_cmd, [EvalSettings, EvalJob])


def _merge() -> Mirror:
    from wsis_cli.cli.merge import merge
    from wsis_cli.stages.merge.settings import MergeJob, MergeSettings

    return Mirror(merge, [MergeSettings, MergeJob])


def _demo() -> Mirror:
    from wsis_cli.cli.demo import demo
    from wsis_cli.stages.demo.settings import DemoSettings

    return Mirror(demo, [DemoSettings], {
        "num_images": (DemoSettings, "num_images", lambda v: DemoSettings.num_images if v is None else v),
        "methods": (DemoSettings, "methods", lambda v: tuple(k.strip() for k in v.split(",") if k.strip())),
        "student_loss": (DemoSettings, "student_mask_loss", lambda v: v),
    }, {"DemoSettings.height", "DemoSettings.width"})  # --size HxW fills both (None: the field's default)


def _synth() -> Mirror:
    from wsis_cli.cli.synth import synth
    from wsis_cli.stages.synth.settings import SynthSettings

    # --height/--width (or --size) left out: the field's default
    return Mirror(synth, [SynthSettings], {
        "height": (SynthSettings, "height", lambda v: SynthSettings.height if v is None else v),
        "width": (SynthSettings, "width", lambda v: SynthSettings.width if v is None else v),
    })


MIRRORS = {"cam": _cam, "irnet": _irnet, "refine-crf": _refine, "train-student": _student, "mal-label": _mal,
           "freemask": _freemask, "eval": _eval, "merge": _merge, "demo": _demo, "synth": _synth}


@pytest.mark.parametrize("name", sorted(MIRRORS))
def test_flags_default_to_their_settings_fields(name: str) -> None:
    mirror = MIRRORS[name]()
    defaults = {cls: _defaults(cls) for cls in [*mirror.settings, *(c for c, _, _ in mirror.renamed.values())]}
    matched: set[str] = set()
    for flag, p in inspect.signature(mirror.command).parameters.items():
        if flag in mirror.renamed:
            cls, key, convert = mirror.renamed[flag]
            targets = [cls]
        else:
            key, convert = flag, (lambda v: v)
            targets = [c for c in mirror.settings if flag in defaults[c]]
            if not targets:
                continue  # an input, an output or a logging flag
        value = convert(p.default)
        assert value == defaults[targets[0]][key], f"--{flag.replace('_', '-')} vs {targets[0].__name__}.{key}"
        # a flag may fill several classes (--seed, --device): those whose default agrees count as mirrored
        matched.update(f"{c.__name__}.{key}" for c in targets if defaults[c][key] == value)
    every = {f"{c.__name__}.{k}" for c in mirror.settings for k in defaults[c]}
    assert every - matched == mirror.unflagged, "a settings field without a flag must be listed as such"
