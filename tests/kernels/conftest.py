"""Fixtures for the kernel parity tests.

Without a GPU the Triton kernels run through Triton's CPU interpreter, which must be switched on before
the kernels are defined (the ``@triton.jit`` decorator reads it), hence the environment default here at
import time. With CUDA the Triton tests run the compiled kernels on the GPU.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.fixture
def triton_device(monkeypatch: pytest.MonkeyPatch) -> torch.device:
    """Device for Triton-path tests (CUDA, or CPU through the interpreter); forces ``WSIS_KERNELS=triton``."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif os.environ.get("TRITON_INTERPRET") == "1":
        device = torch.device("cpu")
    else:
        pytest.skip("no CUDA and TRITON_INTERPRET is not 1")
    monkeypatch.setenv("WSIS_KERNELS", "triton")
    return device


@pytest.fixture
def reference_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forces the PyTorch path (``WSIS_KERNELS=reference``; for the CRF, the optimised CPU path)."""
    monkeypatch.setenv("WSIS_KERNELS", "reference")


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
