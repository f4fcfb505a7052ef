"""Device selection (``--device auto|cpu|cuda|cuda:N``) and mixed precision on GPUs.

Imports torch: CLI modules import this inside their command functions only.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from wsis_cli.runtime.errors import UsageError

_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a ``--device`` value into a :class:`torch.device`.

    ``auto`` picks ``cuda`` (the current CUDA device) when one is usable, else ``cpu``. Asking for CUDA
    where there is none, or for a GPU index that does not exist, raises :class:`UsageError` (exit 2)
    rather than silently running on the CPU for hours.
    """
    text = (spec or "").strip().lower()
    m = _SPEC.match(text)
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, got {spec!r}")
    kind, index = m.group(1), m.group(2)
    if kind == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: CUDA is not available on this machine "
                         "(no GPU visible, or torch was built without CUDA); use --device cpu or auto")
    if index is None:
        return torch.device("cuda")
    n = torch.cuda.device_count()
    if int(index) >= n:
        raise UsageError(f"--device {spec}: no such GPU; {n} visible (cuda:0..cuda:{n - 1})")
    return torch.device("cuda", int(index))


def amp_enabled(device: torch.device) -> bool:
    """Mixed precision is used on CUDA only (CPU autocast is slower than float32 for our models)."""
    return torch.device(device).type == "cuda"


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bfloat16 where the GPU supports it (no loss scaling needed), else float16;
    ``None`` where AMP is off."""
    if not amp_enabled(device):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Autocast to :func:`amp_dtype` on CUDA; a no-op on CPU or with ``enabled=False``."""
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        yield
        return
    with torch.autocast(device_type="cuda", dtype=dtype):
        yield


def grad_scaler(device: torch.device, enabled: bool = True) -> torch.amp.GradScaler:
    """A loss scaler that is active only for float16 autocast (bfloat16 and float32 need none)."""
    active = enabled and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda", enabled=active)
