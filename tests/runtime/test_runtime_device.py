"""--device resolution and AMP helpers (CPU machine: CUDA requests must fail clearly)."""

from __future__ import annotations

import pytest
import torch

from wsis_cli.runtime.device import amp_dtype, amp_enabled, autocast, grad_scaler, resolve_device
from wsis_cli.runtime.errors import UsageError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@no_cuda
def test_auto_is_cpu_here() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")


def test_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_gpu_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["gpu", "cpu:0", "cuda:x", "cuda:", "", "mps"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_amp_is_off_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert not amp_enabled(cpu) and amp_dtype(cpu) is None
    a = torch.ones(4, 4)
    with autocast(cpu):
        assert (a @ a).dtype == torch.float32
    assert not grad_scaler(cpu).is_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda() -> None:
    dev = resolve_device("cuda:0")
    a = torch.ones(4, 4, device=dev)
    with autocast(dev):
        assert (a @ a).dtype in (torch.bfloat16, torch.float16)
    assert grad_scaler(dev).is_enabled() == (amp_dtype(dev) == torch.float16)
