"""The one switchboard between the reference and Triton paths."""

from __future__ import annotations

import pytest
import torch

from wsis_kernels import _dispatch


def test_cpu_tensors_use_the_reference_by_default(monkeypatch):
    monkeypatch.delenv("WSIS_KERNELS", raising=False)
    assert _dispatch.select_backend(torch.zeros(1), None) == "reference"
    monkeypatch.setenv("WSIS_KERNELS", "auto")
    assert _dispatch.select_backend(torch.zeros(1)) == "reference"


def test_reference_can_be_forced(monkeypatch):
    monkeypatch.setenv("WSIS_KERNELS", " Reference ")
    assert _dispatch.select_backend(torch.zeros(1)) == "reference"


def test_unknown_choice_is_rejected(monkeypatch):
    monkeypatch.setenv("WSIS_KERNELS", "cuda")
    with pytest.raises(ValueError, match="WSIS_KERNELS"):
        _dispatch.select_backend(torch.zeros(1))


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    if not _dispatch.triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.setenv("WSIS_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _dispatch.select_backend(torch.zeros(1)) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        _dispatch.select_backend(torch.zeros(1))


def test_forced_triton_without_triton_is_an_error(monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
    monkeypatch.setenv("WSIS_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="cannot be imported"):
        _dispatch.select_backend(torch.zeros(1))
    monkeypatch.setenv("WSIS_KERNELS", "auto")
    assert _dispatch.select_backend(torch.zeros(1)) == "reference"
