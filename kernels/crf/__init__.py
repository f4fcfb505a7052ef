"""Mean-field CRF over a local (dilated) window: one validated entry point that dispatches.

``mean_field_crf`` covers MAL's 3x3 colour CRF (:func:`mal_crf_params`) and truncated dense CRFs in the
style of ConvCRF: :data:`DENSE_CRF` (the :class:`CRFParams` defaults: irnet, mal-label's dense variant) and
:data:`REFINE_CRF` (refine-crf's defaults); see :mod:`wsis_kernels.crf.params` for the model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._dispatch import select_backend
from .cpu import crf_labels_cpu, mean_field_crf_cpu
from .params import DENSE_CRF, REFINE_CRF, CRFParams, mal_crf_params

__all__ = ["DENSE_CRF", "REFINE_CRF", "CRFParams", "crf_labels", "mal_crf_params", "mean_field_crf"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(name: str, value: object, allow_bool: bool = False) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in _FLOATS and not (allow_bool and value.dtype == torch.bool):
        kinds = "a floating or bool" if allow_bool else "a floating"
        raise TypeError(f"{name} must have {kinds} dtype, got {value.dtype}")
    if value.ndim != 4:
        raise ValueError(f"{name} must be 4-D, got shape {tuple(value.shape)}")
    return value


def _validate(image: object, probs: object, box: object, params: object) -> tuple[Tensor, Tensor, Tensor | None]:
    image = _check_tensor("image", image)
    probs = _check_tensor("probs", probs)
    batch, _, height, width = image.shape
    if image.shape[1] < 1 or height < 1 or width < 1 or batch < 1:
        raise ValueError(f"image must be (B, C, H, W) with every size >= 1, got {tuple(image.shape)}")
    if probs.shape[0] != batch or probs.shape[2:] != image.shape[2:] or probs.shape[1] < 1:
        raise ValueError(
            f"probs must be (B, L, H, W) = ({batch}, L>=1, {height}, {width}) to match image, "
            f"got {tuple(probs.shape)}"
        )
    labels = probs.shape[1]
    if box is not None:
        box = _check_tensor("box", box, allow_bool=True)
        if box.shape[0] != batch or box.shape[2:] != image.shape[2:] or box.shape[1] not in (1, labels):
            raise ValueError(
                f"box must be (B, 1, H, W) or (B, L, H, W) = ({batch}, 1 or {labels}, {height}, {width}), "
                f"got {tuple(box.shape)}"
            )
    devices = {t.device for t in (image, probs, box) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"image, probs and box must be on one device, got {sorted(map(str, devices))}")
    if not isinstance(params, CRFParams):
        raise TypeError(f"params must be a CRFParams, got {type(params).__name__}")
    return image, probs, box


def mean_field_crf(
    image: Tensor,
    probs: Tensor,
    box: Tensor | None = None,
    params: CRFParams | None = None,
) -> Tensor:
    """Refine soft labels with a mean-field CRF whose pairwise kernel lives on a local window.

    Args:
        image: ``(B, C, H, W)`` float16/bfloat16/float32/float64, usually RGB (``C = 3``) in [0, 1] for the
            generic defaults; ``theta_beta`` is in these units (MAL feeds its ImageNet-normalised image).
        probs: ``(B, L, H, W)`` floating. ``L = 1``: the foreground probability of a binary problem
            (background ``1 - p``). ``L >= 2``: per-label probabilities (normalised internally).
        box: optional ``(B, 1, H, W)`` or ``(B, L, H, W)``, float or bool, values in [0, 1]; multiplies
            ``Q`` before each normalisation (and the initial state). A one-channel box constrains every
            label except label 0 (the background), or the foreground when ``L = 1``.
        params: model and schedule, :class:`CRFParams` defaults when ``None``; see :func:`mal_crf_params`.

    Returns:
        ``(B, L, H, W)`` float32 on the input device: refined probabilities (the foreground probability
        for ``L = 1``). Out-of-image neighbours contribute nothing. Deterministic.

    Runs Triton on CUDA tensors when it is importable and the optimised PyTorch path
    (:mod:`wsis_kernels.crf.cpu`) otherwise; ``WSIS_KERNELS=reference|triton`` forces one.
    """
    params = CRFParams() if params is None else params
    image, probs, box = _validate(image, probs, box, params)
    if select_backend(image, probs, box) == "triton":
        from .triton import mean_field_crf_triton

        return mean_field_crf_triton(image, probs, box, params)
    return mean_field_crf_cpu(image, probs, box, params)


def crf_labels(probs: Tensor, threshold: float = 0.5) -> Tensor:
    """Hard labels from :func:`mean_field_crf` output.

    Args:
        probs: ``(B, L, H, W)`` floating. For ``L = 1`` the foreground is ``p > threshold`` (MAL's rule);
            otherwise the label is the argmax over ``L`` (``threshold`` unused).

    Returns:
        ``(B, H, W)`` int64 labels.
    """
    probs = _check_tensor("probs", probs)
    return crf_labels_cpu(probs, threshold)
