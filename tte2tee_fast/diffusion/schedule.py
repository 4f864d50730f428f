"""Discrete variance-preserving noise schedule (cosine, 1000 steps by default).

Everything is computed once on the host in float64; samplers read plain tensors from it.
Notation: ``abar[t]`` = alphas_cumprod, ``alpha_t = sqrt(abar)``, ``sigma_t = sqrt(1 - abar)``,
k-diffusion ``sigma = sigma_t / alpha_t``, log-SNR ``lambda = log(alpha_t / sigma_t)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tte2tee_fast.diffusion.spacing import cosine_alphas_cumprod, spaced_timesteps
from tte2tee_fast.errors import InputError


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete VP schedule defined by its ``alphas_cumprod`` (float64, ``[T]``)."""

    alphas_cumprod: torch.Tensor  # [T] float64, decreasing, in (0, 1)

    @classmethod
    def cosine(
        cls, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999
    ) -> NoiseSchedule:
        """Nichol & Dhariwal cosine schedule (diffusers ``squaredcos_cap_v2``)."""

        return cls(torch.from_numpy(cosine_alphas_cumprod(num_steps, s, max_beta)))

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor | np.ndarray) -> NoiseSchedule:
        abar = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64))
        if abar.ndim != 1 or not bool(((abar > 0) & (abar < 1)).all()):
            raise InputError("alphas_cumprod must be a 1-D array with values in (0, 1)")
        if not bool((abar[1:] <= abar[:-1]).all()):
            raise InputError("alphas_cumprod must be non-increasing")
        return cls(abar)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def betas(self) -> torch.Tensor:  # [T] float64
        prev = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        return 1.0 - self.alphas_cumprod / prev

    @property
    def alpha(self) -> torch.Tensor:  # [T] sqrt(abar)
        return self.alphas_cumprod.sqrt()

    @property
    def sigma(self) -> torch.Tensor:  # [T] sqrt(1 - abar)
        return (1.0 - self.alphas_cumprod).sqrt()

    @property
    def k_sigmas(self) -> torch.Tensor:  # [T] k-diffusion sigma = sqrt((1 - abar) / abar)
        return self.sigma / self.alpha

    @property
    def log_snr(self) -> torch.Tensor:  # [T] lambda = log(alpha / sigma)
        return self.alpha.log() - self.sigma.log()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process ``x_t = alpha_t x0 + sigma_t eps`` for integer timesteps ``t [B]``."""
        a = self.alpha.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        s = self.sigma.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        return a * x0 + s * noise

    def timesteps(
        self,
        num_steps: int,
        spacing: str = "trailing",
        rho: float = 7.0,
        t_max: int | None = None,
        t_min: int | None = None,
    ) -> torch.Tensor:
        """:func:`~tte2tee_fast.diffusion.spacing.spaced_timesteps` of this schedule, as a tensor
        (int64 ``[num_steps]``)."""
        ts = spaced_timesteps(self.alphas_cumprod.numpy(), num_steps, spacing, rho, t_max, t_min)
        return torch.from_numpy(ts)
