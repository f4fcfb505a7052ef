"""Match a checkpoint's state dict, whatever its layout, onto one of our modules.

Self-supervised and third-party checkpoints wrap the backbone weights in containers (``state_dict``,
``model``, ``teacher``) and prefix their keys (``module.``, ``encoder_q.``, ``backbone.``,
``module.encoder_q.`` ...). Rather than hard-coding every layout, :func:`match_state_dict` tries every
key prefix present in the file and keeps the one under which most of the target's keys match with equal
shapes. Pure: the file is read by :mod:`wsis_cli.io.weights`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from wsis_cli.runtime.errors import BadInputError

# containers that hold the weights, most specific first (DINO: the teacher is the model to use)
CONTAINERS = ("state_dict", "model", "teacher", "model_state", "network", "module", "student")


@dataclass(frozen=True)
class MatchReport:
    """How a checkpoint matched: the prefix stripped and the target keys left without a value."""

    prefix: str
    matched: int
    total: int
    missing: list[str] = field(default_factory=list)
    unused: int = 0

    @property
    def fraction(self) -> float:
        return self.matched / max(self.total, 1)


def unwrap(raw: Any) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` mapping inside ``raw`` (descending into known containers)."""
    obj = raw
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in CONTAINERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        return {}
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _prefixes(keys: list[str], depth: int = 3) -> set[str]:
    out = {""}
    for k in keys:
        parts = k.split(".")
        for d in range(1, min(depth, len(parts) - 1) + 1):
            out.add(".".join(parts[:d]) + ".")
    return out


def match_state_dict(raw: Any, target: nn.Module | Mapping[str, torch.Tensor], *, source: str,
                     min_fraction: float = 0.5,
                     rename: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
                     ) -> tuple[dict[str, torch.Tensor], MatchReport]:
    """Return the part of ``raw`` that fits ``target``, renamed to the target's keys.

    ``rename`` may translate a foreign naming scheme first (e.g. timm ViT keys to torchvision's); it
    is tried alongside the untranslated keys and the better match wins. Raises :class:`BadInputError`
    naming ``source`` when fewer than ``min_fraction`` of the target's tensors find a value.
    """
    want = target.state_dict() if isinstance(target, nn.Module) else dict(target)
    want = {k: v for k, v in want.items() if not k.endswith("num_batches_tracked")}
    flat = unwrap(raw)
    if not flat:
        raise BadInputError(source, None, "no tensors found: not a state dict or model checkpoint")
    candidates = [flat] + ([rename(flat)] if rename is not None else [])
    best: tuple[dict[str, torch.Tensor], str] = ({}, "")
    for keys in candidates:
        for prefix in sorted(_prefixes(list(keys))):
            got = {}
            for k, v in keys.items():
                if k.startswith(prefix):
                    name = k[len(prefix):]
                    if name in want and tuple(want[name].shape) == tuple(v.shape):
                        got[name] = v
            # more matches win; on a tie the shorter prefix (fewer assumptions)
            if len(got) > len(best[0]) or (len(got) == len(best[0]) and got and len(prefix) < len(best[1])):
                best = (got, prefix)
    state, prefix = best
    report = MatchReport(prefix=prefix, matched=len(state), total=len(want),
                         missing=sorted(set(want) - set(state)), unused=len(flat) - len(state))
    # judge on weight tensors (ndim > 1): BN vectors of common widths match across unrelated networks
    heavy = [k for k, v in want.items() if v.dim() > 1]
    heavy_fraction = sum(k in state for k in heavy) / max(len(heavy), 1)
    if min(report.fraction, heavy_fraction) < min_fraction:
        example = next(iter(flat))
        raise BadInputError(source, None, f"only {report.matched} of the {report.total} backbone tensors match "
                            f"(keys look like {example!r}); is this a checkpoint for this architecture?")
    return state, report
