"""MAL's training losses: the multiple-instance (MIL) box loss and the CRF consistency loss.

Both follow the official implementation (``upstream-implementations.md`` §2.2): a Dice loss of the form
``1 - 2·Σab / (Σa² + 0.001 + Σb² + 0.001)`` per sample, the MIL loss on the row and column max
projections of the predicted mask against those of the box mask, and the CRF loss between the student's
mask and the binarised mean-field refinement (MAL's ``MeanField``, run by our CRF kernel
:func:`wsis_kernels.crf.mean_field_crf` with :func:`wsis_kernels.crf.mal_crf_params`) of the average of
the student's and the EMA teacher's masks, with the box as a hard constraint.
"""

from __future__ import annotations

import torch

from wsis_kernels.crf import CRFParams, crf_labels, mal_crf_params, mean_field_crf

DICE_EPS = 0.001


def dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice loss ``1 - 2·Σab / (Σa² + eps + Σb² + eps)`` over all but the first dimension.

    ``pred``, ``target``: ``(B, ...)`` float of the same shape → ``(B,)`` float32.
    """
    a = pred.float().flatten(1)
    b = target.float().flatten(1)
    inter = (a * b).sum(1)
    union = (a * a).sum(1) + DICE_EPS + (b * b).sum(1) + DICE_EPS
    return 1.0 - 2.0 * inter / union


def mil_loss(prob: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """MIL box loss: Dice of the column maxima plus Dice of the row maxima of the mask vs the box.

    Every row and column that crosses the box must hold at least one foreground pixel and those that
    miss it none. ``prob``: ``(B, H, W)`` foreground probabilities; ``box``: ``(B, H, W)`` box mask in
    [0, 1] → ``(B,)``.
    """
    cols = dice_loss(prob.amax(dim=1), box.amax(dim=1))  # max over H: one value per column
    rows = dice_loss(prob.amax(dim=2), box.amax(dim=2))  # max over W: one value per row
    return cols + rows


@torch.no_grad()
def crf_targets(image: torch.Tensor, prob: torch.Tensor, box: torch.Tensor,
                params: CRFParams | None = None) -> torch.Tensor:
    """Binary mean-field refinement of ``prob`` on ``image`` inside ``box`` (MAL's ``MeanField``).

    ``image``: ``(B, C, H, W)`` (MAL feeds the ImageNet-normalised crop); ``prob``, ``box``: ``(B, H, W)``
    → ``(B, H, W)`` float32 in {0, 1}.
    """
    params = mal_crf_params() if params is None else params
    refined = mean_field_crf(image.float(), prob.float()[:, None], box.float()[:, None], params)
    return crf_labels(refined).float()


def crf_loss(image: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, box: torch.Tensor,
             params: CRFParams | None = None) -> torch.Tensor:
    """CRF loss: Dice of the student's mask against the CRF refinement of the student/teacher average.

    The target carries no gradient. ``image``: ``(B, C, H, W)``; ``student``, ``teacher``, ``box``:
    ``(B, H, W)`` probabilities → ``(B,)``.
    """
    target = crf_targets(image, (student.detach() + teacher.detach()) / 2, box, params)
    return dice_loss(student, target)
