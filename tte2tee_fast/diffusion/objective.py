"""The diffusion training objective: forward noising, targets, min-SNR weighting, label dropout.

Plain functions, one signature each. Notation as in :mod:`tte2tee_fast.diffusion.schedule`:
``x_t = alpha_t x0 + sigma_t eps``, ``SNR(t) = alpha_t^2 / sigma_t^2``.

Predictions (what the network's last layer predicts; the model always *returns* eps, see
:class:`~tte2tee_fast.models.unet.SemanticUNet`'s ``prediction_type``):

``eps`` (default): target ``eps``.
``v``   (Salimans & Ho 2022): ``v = alpha_t eps - sigma_t x0``. The model returns
        ``eps = sigma_t x_t + alpha_t v`` computed from it (and
        ``x0 = alpha_t x_t - sigma_t v``), which follows from ``alpha^2 + sigma^2 = 1``.
        Since ``eps_hat - eps = alpha_t (v_hat - v)``, the v-space MSE is the eps-space MSE
        divided by ``alpha_t^2``: :func:`diffusion_loss` measures every loss on the returned eps
        and folds that factor into the weight.

Weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"):
the per-sample MSE is multiplied by ``min(SNR, gamma) / SNR`` for ``eps`` and by
``min(SNR, gamma) / (SNR + 1)`` for ``v``; both equal the x0-space weight ``min(SNR, gamma)``
expressed in the prediction's own space (so with min-SNR the two predictions train the same
objective and differ only in what the network's output layer has to represent).
``weighting="none"`` is the plain MSE in the prediction's own space.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tte2tee_fast.diffusion.schedule import NoiseSchedule
from tte2tee_fast.errors import InputError

PREDICTIONS = ("eps", "v")
WEIGHTINGS = ("none", "min_snr")

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _check(prediction: str, weighting: str) -> None:
    if prediction not in PREDICTIONS:
        raise InputError(f"unknown prediction {prediction!r}; choose one of {list(PREDICTIONS)}")
    if weighting not in WEIGHTINGS:
        raise InputError(f"unknown loss weighting {weighting!r}; choose one of {list(WEIGHTINGS)}")


def snr(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``abar / (1 - abar)`` at integer timesteps ``t [B]``; float64 ``[B]``."""
    abar = schedule.alphas_cumprod.to(t.device)[t]
    return abar / (1.0 - abar)


def loss_weights(
    schedule: NoiseSchedule,
    t: torch.Tensor,
    prediction: str = "eps",
    weighting: str = "min_snr",
    gamma: float = 5.0,
) -> torch.Tensor:
    """Per-sample loss weights ``[B]`` (float64, on ``t``'s device) for timesteps ``t [B]``."""
    _check(prediction, weighting)
    s = snr(schedule, t)  # [B] float64
    if weighting == "none":
        return torch.ones_like(s)
    clipped = s.clamp(max=gamma)
    return clipped / s if prediction == "eps" else clipped / (s + 1.0)


def drop_labels(cond: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Replace the conditioning of each sample by zeros (the null label) with probability ``p``.

    ``cond [B, C, H, W]``; draws ``B`` uniforms from ``generator`` (on the CPU), so the choice
    is a pure function of the generator's seed.
    """
    if not 0.0 <= p <= 1.0:
        raise InputError(f"label dropout must be in [0, 1], got {p}")
    keep = torch.rand(cond.shape[0], generator=generator) >= p  # [B] bool
    return cond * keep.to(cond.device, cond.dtype).view(-1, *([1] * (cond.ndim - 1)))


def diffusion_loss(
    model_fn: ModelFn,
    x0: torch.Tensor,
    cond: torch.Tensor,
    schedule: NoiseSchedule,
    t: torch.Tensor,
    noise: torch.Tensor,
    prediction: str = "eps",
    weighting: str = "min_snr",
    gamma: float = 5.0,
) -> torch.Tensor:
    """Weighted denoising loss (a scalar, float32) for one batch.

    ``model_fn(x_t [B,1,H,W], t [B] long, cond [B,C,H,W]) -> eps [B,1,H,W]`` (whatever its output
    layer predicts, see the module docstring); ``x0`` and ``noise`` ``[B,1,H,W]``; ``t [B]``
    integer timesteps. The MSE is taken in float32 whatever dtype the model computes in (bf16
    autocast), averaged over pixels, measured in ``prediction``'s space, weighted per sample,
    then averaged over the batch.
    """
    _check(prediction, weighting)
    x_t = schedule.q_sample(x0, t, noise)  # [B, 1, H, W]
    eps = model_fn(x_t, t, cond)  # [B, 1, H, W]
    if eps.shape != x0.shape:
        raise InputError(f"model output shape {tuple(eps.shape)} != image shape {tuple(x0.shape)}")
    mse = (eps.float() - noise.float()).square().flatten(1).mean(dim=1)  # [B] eps-space
    w = loss_weights(schedule, t, prediction, weighting, gamma)  # [B] float64
    if prediction == "v":
        w = w / schedule.alphas_cumprod.to(t.device)[t]  # v-space MSE = eps-space MSE / alpha^2
    return (w.to(mse.device, mse.dtype) * mse).mean()
