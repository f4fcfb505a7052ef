"""Choosing between the PyTorch path and the Triton path of a kernel.

One switchboard for every op in ``wsis_kernels``. ``reference`` names each op's PyTorch path, the one CPU
tensors get by default: for the CRF that is the optimised :mod:`wsis_kernels.crf.cpu` (the value keeps its
old name so that existing settings keep working), for the score maps :mod:`wsis_kernels.score_maps.reference`.
The CRF's plain oracle, :mod:`wsis_kernels.crf.reference`, is never dispatched to; only tests call it.

* ``WSIS_KERNELS=reference`` always runs the PyTorch path (any device);
* ``WSIS_KERNELS=triton`` always runs the Triton kernels -- on CUDA tensors normally, and on CPU tensors
  only through Triton's interpreter (``TRITON_INTERPRET=1`` set before ``triton`` is imported), which is
  how the parity tests exercise the kernels on machines without a GPU;
* unset, empty or ``auto``: Triton when every tensor is on a CUDA device and ``triton`` is importable,
  the PyTorch path otherwise.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Literal

import torch

Backend = Literal["reference", "triton"]

ENV_VAR = "WSIS_KERNELS"
_CHOICES = ("auto", "reference", "triton")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it does not say that a GPU is present)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install must not break the reference path
        return False
    return True


def triton_interpreted() -> bool:
    """True when Triton kernels run through the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def requested_backend() -> str:
    """The value of ``WSIS_KERNELS`` normalised to one of ``auto``, ``reference``, ``triton``."""
    value = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {', '.join(_CHOICES)}")
    return value


def select_backend(*tensors: torch.Tensor | None) -> Backend:
    """Pick the implementation for a call whose inputs are ``tensors`` (``None`` entries are ignored).

    Raises ``RuntimeError`` when ``WSIS_KERNELS=triton`` is forced but cannot work: triton missing, or CPU
    tensors without the interpreter.
    """
    present = [t for t in tensors if t is not None]
    on_cuda = bool(present) and all(t.is_cuda for t in present)
    choice = requested_backend()
    if choice == "reference":
        return "reference"
    if choice == "triton":
        if not triton_available():
            raise RuntimeError(f"{ENV_VAR}=triton but the 'triton' package cannot be imported")
        if not on_cuda and not triton_interpreted():
            raise RuntimeError(
                f"{ENV_VAR}=triton with CPU tensors needs TRITON_INTERPRET=1 in the environment before "
                "triton is imported (Triton's CPU interpreter); move the tensors to CUDA otherwise"
            )
        return "triton"
    return "triton" if on_cuda and triton_available() else "reference"
