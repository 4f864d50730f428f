"""Clipping the predicted clean image: ``clip_denoised`` wraps any ``eps_fn``.

An ε-network's clean-image estimate ``x0 = (x - sigma_t eps) / alpha_t`` amplifies ε errors by
``1 / alpha_t`` (~30 at t = 980, ~2e4 at t = 999 of the cosine schedule), so a partly trained
model's early estimates leave the image range and drift the mean brightness. Guided diffusion,
SDM and diffusers' ``clip_sample=True`` clamp that estimate to the data range at every step.

Here the clamp is an ``eps_fn`` wrapper, so every sampler gets it unchanged: the wrapper returns
the ε *consistent with the clamped estimate*, ``eps' = (x - alpha_t clamp(x0)) / sigma_t``. For
``ddpm`` this is exactly diffusers' ``DDPMScheduler(clip_sample=True)`` (its posterior mean in
``(x0, x_t)`` form equals ours in ε form; tested). ``DDIMScheduler(clip_sample=True)`` differs:
it clamps x0 but keeps the raw ε for the direction term. Clipping changes the ODE, so the
sampler benchmark (error against a reference solution) runs without it unless asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tte2tee_fast.diffusion.schedule import NoiseSchedule

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ClippedEps:
    """``eps_fn`` whose implied clean image is clamped to ``[lo, hi]`` (see module docstring)."""

    eps_fn: EpsFn
    alpha: torch.Tensor  # [T] float64, sqrt(abar)
    sigma: torch.Tensor  # [T] float64, sqrt(1 - abar)
    lo: float = -1.0
    hi: float = 1.0

    @property
    def nfe_per_call(self) -> int:  # the clamp is free; the cost is the wrapped function's
        return int(getattr(self.eps_fn, "nfe_per_call", 1))

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.eps_fn(x, t)  # [B, 1, H, W]
        shape = (-1,) + (1,) * (x.ndim - 1)
        a = self.alpha[t].view(shape)  # [B, 1, 1, 1] float64
        s = self.sigma[t].view(shape)
        xd, ed = x.double(), eps.double()
        x0 = ((xd - s * ed) / a).clamp(self.lo, self.hi)
        return ((xd - a * x0) / s).to(eps.dtype)


def clip_denoised(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    lo: float = -1.0,
    hi: float = 1.0,
    device: torch.device | str = "cpu",
) -> ClippedEps:
    """Wrap ``eps_fn`` so that every step's clean-image estimate lies in ``[lo, hi]``.

    ``device``: where the samples live. The coefficient tables go there once, here, so that no
    step copies them host -> device (a synchronising copy on CUDA).
    """
    return ClippedEps(
        eps_fn, schedule.alpha.to(device), schedule.sigma.to(device), float(lo), float(hi)
    )
