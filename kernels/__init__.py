"""wsis_kernels: the shared accelerated core (score maps, mean-field CRF).

Each op lives in its own sub-package with a readable PyTorch reference, a Triton path for GPUs and one
validated public function that dispatches between them (``WSIS_KERNELS=reference|triton`` overrides).
"""
