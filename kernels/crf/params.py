"""Parameters of the local-window mean-field CRF, and presets for the variants the pipeline uses.

One formulation covers them all. For a pixel ``i`` with window neighbours ``j = i + dilation * (dy, dx)``,
``dy, dx in [-r, r]`` (``r = kernel_size // 2``), inside the image only, the pairwise kernel is::

    k(i, j) = w_appearance * exp(-|p_i - p_j|^2 / (2 theta_alpha^2) - |I_i - I_j|^2 / (2 theta_beta^2))
            + w_smooth     * exp(-|p_i - p_j|^2 / (2 theta_gamma^2))

with ``p`` in pixels (dilation included) and ``I`` the image channels. The centre ``j = i`` takes part only
when ``include_centre`` (its weight is ``w_appearance + w_smooth``). Each iteration computes, per label ``l``,
``logit_l(i) = unary_weight * log P_l(i) + sum_j k(i, j) * phi(Q_l(j))`` where ``phi`` is

* ``message="mean_field"``: ``phi(q) = q`` -- the dense-CRF update with Potts compatibility. Potts' energy
  ``sum_{l' != l} m_l'`` equals ``sum_l' m_l' - m_l`` and the first term is the same for every label, so
  the softmax sees ``+m_l`` (exact whenever ``Q`` sums to one, i.e. without ``clamp``);
* ``message="log_pool"``: ``phi(q) = log q`` -- MAL's update ``q = prod_j x_j^{k_j}``.

then ``Q_l = box_l * exp(logit_l) / (sum_l' box_l' * exp(logit_l') + norm_eps)`` (max-subtracted, so it
never overflows) and finally ``Q = clamp(Q, *clamp)`` when ``clamp`` is set.

Image scale: the generic defaults assume intensities in [0, 1] (divide 8-bit images by 255); ``theta_beta``
is always in the units of the image that is passed in.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

Message = Literal["mean_field", "log_pool"]


@dataclass(frozen=True)
class CRFParams:
    """Hyper-parameters of :func:`wsis_kernels.mean_field_crf` (see the module docstring for the model).

    The defaults are a truncated dense CRF (mean-field message, Potts, unary every step) on a 5x5 window
    with dilation 2 (24 neighbours reaching 4 pixels), tuned on ``bench/crf.py``'s synthetic scenes, where
    10 iterations match pydensecrf's fully connected CRF (sxy 80, srgb 13, compat 10 + Gaussian 3/3) in
    IoU gain within 0.001. Image intensities in [0, 1]. They are :data:`DENSE_CRF`; refine-crf's are
    :data:`REFINE_CRF`.

    Attributes:
        kernel_size: odd window side ``k`` (1, 3, 5, ...); the window holds ``k * k`` pixels.
        dilation: spacing between window taps, in pixels.
        w_appearance: weight of the bilateral (position + colour) Gaussian.
        theta_alpha: spatial std of the bilateral Gaussian, pixels; ``math.inf`` for none (MAL).
        theta_beta: colour std of the bilateral Gaussian, in image units ([0, 1] for the defaults).
        w_smooth: weight of the position-only Gaussian (0 disables it).
        theta_gamma: spatial std of the smoothness Gaussian, pixels.
        iterations: number of mean-field updates.
        message: ``"mean_field"`` (dense-CRF, Potts) or ``"log_pool"`` (MAL's geometric pooling).
        include_centre: whether the pixel itself is one of its neighbours.
        unary_weight: factor on ``log P`` in every update (0: the input only initialises ``Q``, as in MAL).
        unary_floor: probabilities are clamped to at least this before any logarithm.
        norm_eps: constant added to the normaliser (MAL adds 1e-6).
        clamp: ``(low, high)`` bounds applied to ``Q`` after every update (MAL: (0.1, 0.9)), or ``None``.
        sparse_eps: CPU path, ``message="mean_field"``: changes of ``Q`` no larger than this are not
            propagated to the messages, so each logit is within ``sparse_eps * sum_j k(i, j)`` of the exact
            update from the current state (see :mod:`wsis_kernels.crf.incremental`); 0 for the exact update.
            The Triton path is always exact.
    """

    kernel_size: int = 5
    dilation: int = 2
    w_appearance: float = 5.0
    theta_alpha: float = 10.0
    theta_beta: float = 0.1
    w_smooth: float = 0.5
    theta_gamma: float = 1.5
    iterations: int = 10
    message: Message = "mean_field"
    include_centre: bool = False
    unary_weight: float = 1.0
    unary_floor: float = 1e-5
    norm_eps: float = 0.0
    clamp: tuple[float, float] | None = None
    sparse_eps: float = 1e-6

    def __post_init__(self) -> None:
        if not isinstance(self.kernel_size, int) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {self.kernel_size!r}")
        if not isinstance(self.dilation, int) or self.dilation < 1:
            raise ValueError(f"dilation must be a positive int, got {self.dilation!r}")
        if not isinstance(self.iterations, int) or self.iterations < 0:
            raise ValueError(f"iterations must be a non-negative int, got {self.iterations!r}")
        for name in ("theta_alpha", "theta_beta", "theta_gamma"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0 (math.inf allowed), got {value!r}")
        for name in ("w_appearance", "w_smooth", "unary_weight", "norm_eps", "sparse_eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if not 0 < self.unary_floor < 1:
            raise ValueError(f"unary_floor must be in (0, 1), got {self.unary_floor!r}")
        if self.message not in ("mean_field", "log_pool"):
            raise ValueError(f"message must be 'mean_field' or 'log_pool', got {self.message!r}")
        if self.clamp is not None:
            low, high = self.clamp
            if not 0 <= low < high <= 1:
                raise ValueError(f"clamp must be (low, high) with 0 <= low < high <= 1, got {self.clamp!r}")

    @property
    def radius(self) -> int:
        """Half window in taps: ``kernel_size // 2``."""
        return self.kernel_size // 2

    def offset_weights(self) -> list[tuple[int, int, float, float]]:
        """``(dy, dx, a, g)`` for every window tap in row-major order, in pixels (dilation applied).

        The kernel at that tap is ``a * exp(-|I_i - I_j|^2 / (2 theta_beta^2)) + g``; the centre tap has
        ``a = g = 0`` unless ``include_centre``.
        """
        r = self.radius
        taps = []
        for ty in range(-r, r + 1):
            for tx in range(-r, r + 1):
                dy, dx = ty * self.dilation, tx * self.dilation
                if dy == 0 and dx == 0 and not self.include_centre:
                    taps.append((0, 0, 0.0, 0.0))
                    continue
                d2 = float(dy * dy + dx * dx)
                a = self.w_appearance * _gauss(d2, self.theta_alpha)
                g = self.w_smooth * _gauss(d2, self.theta_gamma)
                taps.append((dy, dx, a, g))
        return taps

    @property
    def colour_scale(self) -> float:
        """Factor that turns image units into those of the exponent: ``1 / (sqrt(2) * theta_beta)``."""
        return 0.0 if math.isinf(self.theta_beta) else 1.0 / (math.sqrt(2.0) * self.theta_beta)


def _gauss(d2: float, theta: float) -> float:
    return 1.0 if math.isinf(theta) else math.exp(-d2 / (2.0 * theta * theta))


DENSE_CRF = CRFParams()
"""The dense CRF: :class:`CRFParams`' defaults (bilateral weight 5.0, ``theta_alpha`` 10 px, ``theta_beta``
0.1, smoothness 0.5 at 1.5 px, 5x5 taps 2 px apart, 10 iterations), tuned against pydensecrf's fully connected
CRF. Used by ``wsis irnet`` (the CRF of its relation targets), by ``wsis mal-label --crf-variant dense`` (the
CRF loss's target) and by ``bench/crf.py``; those stages change only the iteration count."""

REFINE_CRF = dataclasses.replace(DENSE_CRF, w_appearance=1.0, theta_alpha=6.0, theta_beta=0.06)
"""The refine CRF: ``wsis refine-crf``'s defaults (bilateral weight 1.0, ``theta_alpha`` 6 px, ``theta_beta``
0.06; the rest as :data:`DENSE_CRF`), a weaker, more colour-selective bilateral term that corrects a given
mask where colour and smoothness disagree with it. ``RefineSettings`` (``wsis_cli.stages.refine.settings``)
holds these as flag defaults without importing torch; a test checks that the two agree."""


def mal_crf_params(iterations: int = 100, zeta: float = 0.1, clamp: tuple[float, float] = (0.1, 0.9)) -> CRFParams:
    """MAL's ``MeanField`` (mask-auto-labeler ``models/mal.py``) as a :class:`CRFParams`.

    3x3 window, dilation 1, colour-only Gaussian ``exp(-|I_i - I_j|^2 / (2 zeta^2))`` with the centre
    included (weight 1), no unary after initialisation, ``q = prod_j x_j^{k_j}`` (``log_pool``), normaliser
    ``+1e-6``, clamp to [0.1, 0.9] after every update, 100 iterations. MAL feeds the ImageNet-normalised
    image, so ``zeta`` is in those units. Pass the foreground probability as a single label (``L = 1``)
    with the box mask to reproduce MAL exactly; MAL returns ``(p > 0.5)``, which is
    :func:`wsis_kernels.crf_labels` of the result. MAL adds 10 to its float32 features so that zero-padded
    neighbours get no weight; out-of-image neighbours contribute nothing here, so that is not needed (pass
    ``image + 10`` to reproduce its float32 rounding as well). MAL's ``crf_omega`` is never used upstream.
    """
    return CRFParams(
        kernel_size=3,
        dilation=1,
        w_appearance=1.0,
        theta_alpha=math.inf,
        theta_beta=zeta,
        w_smooth=0.0,
        theta_gamma=1.0,
        iterations=iterations,
        message="log_pool",
        include_centre=True,
        unary_weight=0.0,
        norm_eps=1e-6,
        clamp=clamp,
    )
