"""Multistep exponential-integrator solvers in data-prediction form: DPM-Solver++ and UniPC.

Each function builds a host plan (float64 coefficients on ``x_i`` and the last data predictions
``m_i = (x_i - sigma_i eps_i) / alpha_i``) and runs it through
:func:`~tte2tee_fast.diffusion.solvers_core.run_plan`; signature as in
:mod:`tte2tee_fast.diffusion.samplers`. ``lambda = log(alpha / sigma)``, ``h = lambda' - lambda``.

Equivalence with diffusers (same integer timesteps, ``prediction_type="epsilon"``,
``final_sigmas_type="zero"``; tested in ``tests/test_samplers.py``):

* ``dpmpp_2m`` / ``dpmpp_3m`` = ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
  solver_order=2/3, solver_type="midpoint")``, ``dpmpp_2m_sde`` = the same with
  ``algorithm_type="sde-dpmsolver++"`` fed the same per-step noise. Order warms up 1, 2(, 3);
  the final step to sigma 0 is first order (it returns the last data prediction);
  ``lower_order_final=True`` (diffusers' default) also caps the step before it at order 2 when
  there are fewer than 15 steps.
* ``unipc`` = ``UniPCMultistepScheduler(solver_order=2, solver_type="bh2", predict_x0=True,
  lower_order_final=True)``: UniP predictor, UniC corrector after every evaluation (reusing it,
  no extra model call), order ``min(order, steps left, steps done + 1)``.

diffusers' DPM/UniPC ``linspace`` and ``leading`` spacings are ``timesteps(n + 1, spacing)[:-1]``
of :meth:`NoiseSchedule.timesteps`; their ``trailing`` is ours.
"""

from __future__ import annotations

import torch

from tte2tee_fast.diffusion.plans import dpmpp_steps, unipc_steps
from tte2tee_fast.diffusion.schedule import NoiseSchedule
from tte2tee_fast.diffusion.solvers_core import (
    Callback,
    EpsFn,
    NoiseFn,
    make_grid,
    run_plan,
)


def _dpmpp(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    order: int,
    sde: bool,
    lower_order_final: bool,
    callback: Callback | None,
    noise: NoiseFn | None,
    progress: bool,
) -> torch.Tensor:
    g = make_grid(schedule, timesteps)
    plan = dpmpp_steps(g, order, lower_order_final, sde)
    return run_plan(
        eps_fn, x, g, plan, predict="x0", callback=callback, noise=noise, progress=progress
    )


def dpmpp_2m(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    progress: bool = False,
    lower_order_final: bool = True,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), midpoint form as in diffusers."""
    return _dpmpp(
        eps_fn, x, schedule, timesteps, 2, False, lower_order_final, callback, noise, progress
    )


def dpmpp_3m(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    progress: bool = False,
    lower_order_final: bool = True,
) -> torch.Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022)."""
    return _dpmpp(
        eps_fn, x, schedule, timesteps, 3, False, lower_order_final, callback, noise, progress
    )


def dpmpp_2m_sde(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    progress: bool = False,
    lower_order_final: bool = True,
) -> torch.Tensor:
    """SDE-DPM-Solver++(2M), midpoint form (diffusers ``sde-dpmsolver++``): fresh noise each step."""
    return _dpmpp(
        eps_fn, x, schedule, timesteps, 2, True, lower_order_final, callback, noise, progress
    )


def unipc(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    *,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    progress: bool = False,
    order: int = 2,
    variant: str = "bh2",
) -> torch.Tensor:
    """UniPC (Zhao et al. 2023): UniP-``order`` predictor + UniC corrector, data prediction."""
    g = make_grid(schedule, timesteps)
    plan = unipc_steps(g, order, variant)
    return run_plan(
        eps_fn, x, g, plan, predict="x0", callback=callback, noise=noise, progress=progress
    )
