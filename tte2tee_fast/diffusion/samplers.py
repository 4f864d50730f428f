"""Samplers as plain functions (k-diffusion / EDM style), one signature for all:

    x0 = sampler(eps_fn, x, schedule, timesteps, *, callback=None, noise=None, progress=False,
                 **options)

``eps_fn(x, t)`` is the ε-prediction network (``t``: int64 ``[B]`` training timesteps), ``x`` the
starting sample at ``timesteps[0]`` in VP space (``x_t = alpha_t x0 + sigma_t eps``; for
generation, unit Gaussian noise), ``timesteps`` strictly descending integers (see
:meth:`NoiseSchedule.timesteps`). Every sampler ends with a step to the clean sample
(sigma = 0, diffusers' ``final_sigmas_type="zero"``, DDIM's ``set_alpha_to_one=True``) and
returns it. ``noise(i, like)`` gives the fresh N(0, 1) noise of step ``i`` to stochastic samplers
(a :class:`~tte2tee_fast.diffusion.noise.NoiseSource` makes it counter-based; without one they
fall back to the global RNG). ``callback(i, t_i, x_i, x0_pred_i)`` sees every step.

All coefficients are computed on the host in float64 before the loop; nothing in the loop forces
a device->host sync. The state stays in VP space (O(1) magnitudes: safe in half precision);
Euler and Heun are the k-diffusion updates on ``x / alpha`` mapped back to it.

Equivalence with diffusers (``prediction_type="epsilon"``, same integer timesteps, tested in
``tests/test_samplers.py``): ``ddpm`` = ``DDPMScheduler`` (``variance="small"|"large"`` =
``fixed_small|fixed_large``; we add no noise on the final step, diffusers adds
``sqrt(1e-20)``-scaled noise there when the last timestep is > 0); ``ddim`` = ``DDIMScheduler``
with ``set_alpha_to_one=True`` (we step to the *next timestep in the list*; diffusers steps to
``t - T // n``, which is the same whenever ``n`` divides ``T`` for ``leading``/``trailing``, and
wrong for ``linspace``); ``euler`` / ``heun`` = ``EulerDiscreteScheduler`` /
``HeunDiscreteScheduler`` (those keep ``linspace`` timesteps unrounded; pass our timesteps via
``set_timesteps(timesteps=...)`` to compare). Multistep solvers: see
:mod:`tte2tee_fast.diffusion.solvers_multistep`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from tte2tee_fast.diffusion.plans import ddim_steps, ddpm_steps, euler_steps, heun_coefficients
from tte2tee_fast.diffusion.schedule import NoiseSchedule
from tte2tee_fast.diffusion.solvers_core import (
    Callback,
    EpsFn,
    NoiseFn,
    make_grid,
    run_plan,
    x0_from_eps,
)
from tte2tee_fast.diffusion.solvers_multistep import dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, unipc
from tte2tee_fast.errors import InputError


def ddpm(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    progress: bool = False,
    variance: str = "small",
) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020) over any sub-sequence of timesteps (1000 = the paper's).

    ``variance="small"``: posterior variance ``(1 - abar') / (1 - abar) * beta``; ``"large"``:
    ``beta = 1 - abar / abar'``. No noise on the final step.
    """
    g = make_grid(schedule, timesteps)
    plan = ddpm_steps(g, variance)
    return run_plan(
        eps_fn, x, g, plan, predict="eps", callback=callback, noise=noise, progress=progress
    )


def ddim(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    progress: bool = False,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021); ``eta = 0`` deterministic, ``eta = 1`` DDPM-like noise."""
    g = make_grid(schedule, timesteps)
    plan = ddim_steps(g, eta)
    return run_plan(
        eps_fn, x, g, plan, predict="eps", callback=callback, noise=noise, progress=progress
    )


def euler(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Euler on the probability-flow ODE ``d(x/alpha) = eps d(sigma/alpha)`` (= DDIM, eta 0)."""
    g = make_grid(schedule, timesteps)
    return run_plan(
        eps_fn,
        x,
        g,
        euler_steps(g),
        predict="eps",
        callback=callback,
        noise=noise,
        progress=progress,
    )


def heun(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Heun's 2nd-order method (EDM Alg. 1, no churn): ``2n - 1`` evaluations, Euler last step."""
    g = make_grid(schedule, timesteps)
    B = x.shape[0]
    t_b = [torch.full((B,), t, dtype=torch.long, device=x.device) for t in g.t]  # [B] each
    for i in tqdm(range(g.n), disable=not progress, desc="sampling", leave=False):
        a, s = g.alpha[i], g.sigma[i]
        cx, ce = heun_coefficients(g, i)
        # slope at t_i
        eps = eps_fn(x, t_b[i])
        if callback is not None:
            callback(i, g.t[i], x, x0_from_eps(x, eps, a, s))
        # Euler step to t_{i+1}
        x_e = cx * x + ce * eps
        # trapezoid correction with the slope at t_{i+1} (not on the final step to sigma 0)
        if i < g.n - 1:
            x_e = cx * x + (0.5 * ce) * (eps + eps_fn(x_e, t_b[i + 1]))
        x = x_e
    return x


Sampler = Callable[..., torch.Tensor]

SAMPLERS: dict[str, Sampler] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "unipc": unipc,
}
STOCHASTIC = ("ddpm", "dpmpp_2m_sde")  # (and ddim with eta > 0)


def get_sampler(name: str) -> Sampler:
    """The sampler function called ``name``; InputError listing the choices otherwise."""
    if name not in SAMPLERS:
        raise InputError(f"unknown sampler {name!r}; choose one of {list(SAMPLERS)}")
    return SAMPLERS[name]
