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

import math

import numpy as np
import torch

from tte2tee_fast.diffusion.schedule import NoiseSchedule
from tte2tee_fast.diffusion.solvers_core import (
    Callback,
    EpsFn,
    Grid,
    NoiseFn,
    Step,
    make_grid,
    run_plan,
)
from tte2tee_fast.errors import InputError

UNIPC_VARIANTS = ("bh1", "bh2")

_FINAL = Step(cx=0.0, cm=(1.0,))  # the step to sigma 0 returns the newest data prediction


def _dpmpp_order(i: int, n: int, order: int, lower_order_final: bool) -> int:
    """diffusers' order schedule: warm-up 1, 2(, 3); order 2 before the end when n < 15."""
    if order == 3 and lower_order_final and n < 15 and i == n - 2:
        return min(2, i + 1)
    return min(order, i + 1)


def _dpmpp_plan(g: Grid, order: int, lower_order_final: bool, sde: bool) -> list[Step]:
    plan = []
    for i in range(g.n):
        if i == g.n - 1:
            plan.append(_FINAL)
            continue
        p = _dpmpp_order(i, g.n, order, lower_order_final)
        s, a1, s1 = g.sigma[i], g.alpha[i + 1], g.sigma[i + 1]
        h = g.lam(i + 1) - g.lam(i)
        # first-order (DPM-Solver++ 1 / SDE-DPM-Solver++ 1) weights on x_i and D0 = m_i
        if sde:
            cx, A, cz = (
                s1 / s * math.exp(-h),
                -a1 * math.expm1(-2 * h),
                s1 * math.sqrt(-math.expm1(-2 * h)),
            )
        else:
            cx, A, cz = s1 / s, -a1 * math.expm1(-h), 0.0
        cm = np.zeros(3)  # on m_i, m_{i-1}, m_{i-2}
        cm[0] = A
        if p == 2:
            # midpoint: + A/2 * D1, D1 = (m_i - m_{i-1}) / r0
            r0 = (g.lam(i) - g.lam(i - 1)) / h
            cm += 0.5 * A / r0 * np.array([1.0, -1.0, 0.0])
        elif p == 3:
            # third order: D1, D2 from the divided differences of the last three predictions
            r0, r1 = (g.lam(i) - g.lam(i - 1)) / h, (g.lam(i - 1) - g.lam(i - 2)) / h
            d10 = np.array([1.0, -1.0, 0.0]) / r0
            d11 = np.array([0.0, 1.0, -1.0]) / r1
            d1 = d10 + r0 / (r0 + r1) * (d10 - d11)
            d2 = (d10 - d11) / (r0 + r1)
            em1 = math.expm1(-h)
            cm += a1 * (em1 / h + 1.0) * d1 - a1 * ((em1 + h) / h**2 - 0.5) * d2
        plan.append(Step(cx=cx, cm=tuple(float(c) for c in cm[:p]), cz=cz))
    return plan


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
    plan = _dpmpp_plan(g, order, lower_order_final, sde)
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


def _unipc_weights(rks: np.ndarray, h: float, p: int, variant: str) -> tuple[np.ndarray, ...]:
    """UniPC's ``R`` (Vandermonde of ``rks``), ``b``, ``h phi_1`` and ``B(h)`` (x0 prediction)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    B_h = hh if variant == "bh1" else math.expm1(hh)
    R, b, fact = [], [], 1
    for j in range(1, p + 1):
        R.append(rks ** (j - 1))
        b.append(h_phi_k * fact / B_h)
        fact *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return np.array(R), np.array(b), np.array(h_phi_1), np.array(B_h)


def _unipc_update(g: Grid, s0: int, p: int, variant: str, corrector: bool) -> tuple[float, list]:
    """Weights of the UniP (or UniC) update from grid point ``s0`` to ``s0 + 1``.

    Returns the weight on ``x_{s0}`` and weights on ``m_{s0+1}`` (corrector only, else 0),
    ``m_{s0}``, ``m_{s0-1}``, ... .
    """
    a1, s1, s = g.alpha[s0 + 1], g.sigma[s0 + 1], g.sigma[s0]
    h = g.lam(s0 + 1) - g.lam(s0)
    rks = np.array([(g.lam(s0 - k) - g.lam(s0)) / h for k in range(1, p)] + [1.0])
    R, b, h_phi_1, B_h = _unipc_weights(rks, h, p, variant)
    if corrector:
        rhos = np.array([0.5]) if p == 1 else np.linalg.solve(R, b)
    elif p == 1:
        rhos = np.zeros(0)
    else:
        rhos = np.array([0.5]) if p == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
    w = np.zeros(p + 1)  # on m_{s0+1}, m_{s0}, m_{s0-1}, ..., m_{s0-p+1}
    w[1] = -a1 * h_phi_1
    # history differences D_k = (m_{s0-k} - m_{s0}) / r_k, k = 1 .. p-1
    for k in range(1, p):
        c = -a1 * B_h * rhos[k - 1] / rks[k - 1]
        w[1 + k] += c
        w[1] -= c
    # the new evaluation D_t = m_{s0+1} - m_{s0} (corrector only)
    if corrector:
        w[0] += -a1 * B_h * rhos[-1]
        w[1] -= -a1 * B_h * rhos[-1]
    return s1 / s, [float(v) for v in w]


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
    if order not in (1, 2, 3):
        raise InputError(f"unipc order must be 1, 2 or 3, got {order}")
    if variant not in UNIPC_VARIANTS:
        raise InputError(f"unknown unipc variant {variant!r}; choose one of {list(UNIPC_VARIANTS)}")
    g = make_grid(schedule, timesteps)
    plan, p_prev = [], 0
    for i in range(g.n):
        p = min(order, g.n - i, i + 1)
        # corrector at x_i with the order of the previous predictor
        ccx, ccm = 0.0, ()
        if i > 0:
            ccx, w = _unipc_update(g, i - 1, p_prev, variant, corrector=True)
            ccm = tuple(w)
        # predictor to t_{i+1}
        if i == g.n - 1:
            plan.append(Step(cx=_FINAL.cx, cm=_FINAL.cm, ccx=ccx, ccm=ccm))
        else:
            cx, w = _unipc_update(g, i, p, variant, corrector=False)
            plan.append(Step(cx=cx, cm=tuple(w[1:]), ccx=ccx, ccm=ccm))
        p_prev = p
    return run_plan(
        eps_fn, x, g, plan, predict="x0", callback=callback, noise=noise, progress=progress
    )
