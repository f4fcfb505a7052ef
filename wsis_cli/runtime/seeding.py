"""Reproducibility: one seed for Python, NumPy and torch (CPU and CUDA), DataLoader workers included.

Imports torch and numpy: CLI modules import this inside their command functions only.
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch

# cuBLAS needs a fixed workspace size for deterministic GEMMs (must be set before CUDA initialises).
_CUBLAS_DETERMINISTIC = ":4096:8"


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed ``random``, NumPy and torch (all CUDA devices) with ``seed``.

    With ``deterministic`` (the default) cuDNN autotuning is off, cuDNN picks deterministic kernels and
    torch prefers deterministic algorithms, warning (not failing) where an op has none; the same seed
    then gives the same output on the same machine. ``deterministic=False`` turns cuDNN autotuning on
    for speed instead.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    # Only affects child processes (hash randomisation of this interpreter is fixed at start-up).
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_DETERMINISTIC)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    set_deterministic_algorithms(deterministic, warn_only=True)


def set_deterministic_algorithms(mode: bool, warn_only: bool = True) -> None:
    """:func:`torch.use_deterministic_algorithms` without its start-up cost.

    The torch function imports ``torch._inductor`` (measured 4.4 s here) only to set torch.compile's
    ``deterministic`` flag. Unless inductor is already loaded, set the eager-mode switch directly and
    leave the flag to ``TORCHINDUCTOR_DETERMINISTIC``, which inductor reads when it is first imported.
    """
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if "torch._inductor.config" in sys.modules or setter is None:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
        return
    if mode:
        os.environ["TORCHINDUCTOR_DETERMINISTIC"] = "1"
    setter(mode, warn_only=warn_only)


def worker_init_fn(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: seed ``random`` and NumPy in each worker, and leave SIGTERM and
    SIGUSR1 to the main process.

    torch already gives each worker its own seed (the loader's base seed + ``worker_id``), but forked
    workers inherit the parent's NumPy and ``random`` states, so without this every worker would draw
    the same "random" augmentations.

    SLURM signals every process of a job step (requeue, preemption, ``scancel``). A worker that dies of
    SIGTERM (torch's own worker handler re-raises it) makes the main process's DataLoader raise "worker
    killed by signal" on top of its clean stop: a traceback in the log, or a failure instead of exit 143.
    Ignored here, the workers live on until the main process shuts them down (or, if it dies, until
    torch's watchdog sees their parent gone).
    """
    import signal

    base = torch.initial_seed()  # per-worker, set by the DataLoader before this runs
    random.seed(base)
    np.random.seed(base % 2**32)
    for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


def generator(seed: int) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded with ``seed`` (for DataLoader shuffling and samplers)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g
