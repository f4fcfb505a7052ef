"""wsis_kernels: the shared accelerated core (score maps, mean-field CRF).

Each op lives in its own sub-package with a readable PyTorch reference, a Triton path for GPUs and one
validated public function that dispatches between them (``WSIS_KERNELS=reference|triton`` overrides).
"""

from .crf import CRFParams, crf_labels, mal_crf_params, mean_field_crf
from .score_maps import ScoreMapStats, score_map_stats, soft_masks

__all__ = [
    "CRFParams",
    "ScoreMapStats",
    "crf_labels",
    "mal_crf_params",
    "mean_field_crf",
    "score_map_stats",
    "soft_masks",
]
