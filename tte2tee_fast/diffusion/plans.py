"""Sampler *plans* without torch: the grid of a timestep list and the per-step host
coefficients (float64 Python floats) of every linear sampler, computed from the schedule's
``alphas_cumprod`` as a numpy array. The torch samplers (:mod:`~tte2tee_fast.diffusion.samplers`,
:mod:`~tte2tee_fast.diffusion.solvers_multistep`) run these plans with
:func:`~tte2tee_fast.diffusion.solvers_core.run_plan`; :mod:`~tte2tee_fast.diffusion.dense`
turns them into the dense form that the torch-free runtime and the baked ONNX graph execute.

A step (see :class:`Step`) from timestep ``t_i`` to ``t_{i+1}`` (after the last one: the clean
sample, sigma = 0)::

    [corrector]  x_i     <- ccx * x_{i-1} + sum_k ccm[k] * out_{i-k}        (UniPC only)
    [predictor]  x_{i+1}  = cx * x_i      + sum_k cm[k]  * out_{i-k} + cz * z_i

``out`` is the model output in the plan's parameterisation (``eps``, or the data prediction
``x0 = (x - sigma eps) / alpha``), ``z_i`` fresh noise for step ``i``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tte2tee_fast.errors import InputError

VARIANCES = ("small", "large")  # ddpm
UNIPC_VARIANTS = ("bh1", "bh2")


@dataclass(frozen=True)
class Step:
    """Host coefficients of one step (see the module docstring)."""

    cx: float
    cm: tuple[float, ...]  # on out_i, out_{i-1}, ...
    cz: float = 0.0
    ccx: float = 0.0
    ccm: tuple[float, ...] = ()  # corrector on out_i, out_{i-1}, ...; empty: no corrector


@dataclass(frozen=True)
class Grid:
    """Per-step host scalars of a timestep list, float64 Python floats (``next`` = sigma 0 at end)."""

    t: tuple[int, ...]  # [n] training timesteps, strictly descending
    alpha: tuple[float, ...]  # [n + 1] sqrt(abar); the appended clean end has alpha 1
    sigma: tuple[float, ...]  # [n + 1] sqrt(1 - abar); the appended end has sigma 0

    @property
    def n(self) -> int:
        return len(self.t)

    def lam(self, i: int) -> float:
        """log-SNR ``log(alpha / sigma)`` of grid point ``i`` (not defined at the clean end)."""
        return math.log(self.alpha[i] / self.sigma[i])


def make_grid(abar: np.ndarray, timesteps: Sequence[int]) -> Grid:
    """Validate ``timesteps`` (1-D, strictly descending, in ``[0, T)``) and read their scalars
    from ``abar`` ``[T]`` (float64)."""
    ts = np.asarray(timesteps)
    T = int(np.asarray(abar).shape[0])
    if ts.ndim != 1 or ts.size < 1 or not np.issubdtype(ts.dtype, np.integer):
        raise InputError(
            f"timesteps must be a non-empty 1-D integer tensor, got shape {tuple(ts.shape)} "
            f"and dtype {ts.dtype}"
        )
    tl = [int(v) for v in ts.tolist()]
    if tl[0] >= T or tl[-1] < 0 or any(a <= b for a, b in itertools.pairwise(tl)):
        raise InputError(
            f"timesteps must be strictly descending training timesteps in [0, {T}), got {tl}"
        )
    abar = np.asarray(abar, dtype=np.float64)
    alpha = [math.sqrt(float(abar[t])) for t in tl] + [1.0]
    sigma = [math.sqrt(1.0 - float(abar[t])) for t in tl] + [0.0]
    return Grid(tuple(tl), tuple(alpha), tuple(sigma))


# ----------------------------------------------------------------------------- single step


def ddpm_steps(g: Grid, variance: str = "small") -> list[Step]:
    """Ancestral DDPM (eps form): posterior mean + ``std`` noise, none on the final step."""
    if variance not in VARIANCES:
        raise InputError(f"unknown ddpm variance {variance!r}; choose one of {list(VARIANCES)}")
    plan = []
    for i in range(g.n):
        a, s, a1 = g.alpha[i], g.sigma[i], g.alpha[i + 1]
        abar, abar1 = a * a, a1 * a1
        beta = 1.0 - abar / abar1  # beta of the (strided) transition t_i -> t_{i+1}
        # posterior mean mu = c0 * x0_pred + cxd * x, x0_pred = (x - s eps) / a
        c0 = a1 * beta / (1.0 - abar)
        cxd = math.sqrt(1.0 - beta) * (1.0 - abar1) / (1.0 - abar)
        var = max((1.0 - abar1) / (1.0 - abar) * beta, 1e-20) if variance == "small" else beta
        std = 0.0 if i == g.n - 1 else math.sqrt(var)
        plan.append(Step(cx=c0 / a + cxd, cm=(-c0 * s / a,), cz=std))
    return plan


def ddim_steps(g: Grid, eta: float = 0.0) -> list[Step]:
    """DDIM (eps form); ``eta = 0`` deterministic."""
    if not eta >= 0.0:
        raise InputError(f"ddim eta must be >= 0, got {eta}")
    plan = []
    for i in range(g.n):
        a, s, a1, s1 = g.alpha[i], g.sigma[i], g.alpha[i + 1], g.sigma[i + 1]
        abar, abar1 = a * a, a1 * a1
        std = eta * math.sqrt((1.0 - abar1) / (1.0 - abar) * (1.0 - abar / abar1))
        # x' = a1 x0_pred + sqrt(s1^2 - std^2) eps + std z, x0_pred = (x - s eps) / a
        dir_eps = math.sqrt(max(s1 * s1 - std * std, 0.0))
        plan.append(Step(cx=a1 / a, cm=(dir_eps - a1 * s / a,), cz=std))
    return plan


def euler_steps(g: Grid) -> list[Step]:
    """Euler on ``d(x/alpha) = eps d(sigma/alpha)`` (eps form)."""
    plan = []
    for i in range(g.n):
        a, a1 = g.alpha[i], g.alpha[i + 1]
        k, k1 = g.sigma[i] / a, g.sigma[i + 1] / a1  # k-diffusion sigmas
        plan.append(Step(cx=a1 / a, cm=(a1 * (k1 - k),)))
    return plan


def heun_coefficients(g: Grid, i: int) -> tuple[float, float]:
    """Heun's Euler part from grid point ``i``: ``x_e = cx * x_i + ce * eps_i``."""
    a, s, a1 = g.alpha[i], g.sigma[i], g.alpha[i + 1]
    return a1 / a, a1 * (g.sigma[i + 1] / a1 - s / a)


# ----------------------------------------------------------------------------- multistep


_FINAL = Step(cx=0.0, cm=(1.0,))  # the step to sigma 0 returns the newest data prediction


def _dpmpp_order(i: int, n: int, order: int, lower_order_final: bool) -> int:
    """diffusers' order schedule: warm-up 1, 2(, 3); order 2 before the end when n < 15."""
    if order == 3 and lower_order_final and n < 15 and i == n - 2:
        return min(2, i + 1)
    return min(order, i + 1)


def dpmpp_steps(g: Grid, order: int, lower_order_final: bool, sde: bool) -> list[Step]:
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


def unipc_steps(g: Grid, order: int = 2, variant: str = "bh2") -> list[Step]:
    """UniP-``order`` predictor + UniC corrector (data prediction)."""
    if order not in (1, 2, 3):
        raise InputError(f"unipc order must be 1, 2 or 3, got {order}")
    if variant not in UNIPC_VARIANTS:
        raise InputError(f"unknown unipc variant {variant!r}; choose one of {list(UNIPC_VARIANTS)}")
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
    return plan
