"""The shared sampler loop: every solver whose step is linear in the model outputs runs here.

A sampler is a *plan* computed once on the host in float64: for step ``i`` (from timestep
``t_i`` to ``t_{i+1}``; after the last one, the clean sample, sigma = 0)

    [corrector]  x_i     <- ccx * x_{i-1} + sum_k ccm[k] * out_{i-k}        (UniPC only)
    [predictor]  x_{i+1}  = cx * x_i      + sum_k cm[k]  * out_{i-k} + cz * z_i

where ``out`` is the model output in the plan's parameterisation (``eps``, or the data
prediction ``x0 = (x - sigma eps) / alpha``) and ``z_i`` fresh noise for step ``i``.
DDPM, DDIM, Euler, DPM-Solver++ (2M, 3M, 2M SDE) and UniPC are all of this form, so the loop
below is the only place that touches tensors. Coefficients are Python floats and the per-step
timestep tensors are made before the loop: nothing inside forces a device->host sync, so the
loop can be captured as a CUDA graph (with a deterministic ``noise`` provider).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from tte2tee_fast.diffusion.schedule import NoiseSchedule
from tte2tee_fast.errors import InputError

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [B, ...], t [B] int64) -> eps
NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]  # (step i, like x) -> N(0, 1) like x
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (i, t, x_i, x0_pred)


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


def make_grid(schedule: NoiseSchedule, timesteps: torch.Tensor | Sequence[int]) -> Grid:
    """Validate ``timesteps`` (1-D, strictly descending, in ``[0, T)``) and read their scalars."""
    ts = torch.as_tensor(timesteps)
    T = schedule.num_train_timesteps
    if ts.ndim != 1 or ts.numel() < 1 or ts.is_floating_point():
        raise InputError(
            f"timesteps must be a non-empty 1-D integer tensor, got shape {tuple(ts.shape)} "
            f"and dtype {ts.dtype}"
        )
    tl = [int(v) for v in ts.tolist()]  # host copy (one sync at most, before the loop)
    if tl[0] >= T or tl[-1] < 0 or any(a <= b for a, b in itertools.pairwise(tl)):
        raise InputError(
            f"timesteps must be strictly descending training timesteps in [0, {T}), got {tl}"
        )
    abar = schedule.alphas_cumprod.double()
    alpha = [float(abar[t].sqrt()) for t in tl] + [1.0]
    sigma = [float((1.0 - abar[t]).sqrt()) for t in tl] + [0.0]
    return Grid(tuple(tl), tuple(alpha), tuple(sigma))


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """Data prediction ``(x - sigma eps) / alpha``."""
    return (x - sigma * eps) / alpha


def _lincomb(coefs: Sequence[float], outs: Sequence[torch.Tensor]) -> torch.Tensor | float:
    acc: torch.Tensor | float = 0.0
    for c, o in zip(coefs, outs, strict=False):
        if c != 0.0:
            acc = acc + c * o
    return acc


def default_noise(i: int, like: torch.Tensor) -> torch.Tensor:
    """Global-RNG fallback when no ``noise`` provider is given (not counter-based)."""
    return torch.randn_like(like)


def run_plan(
    eps_fn: EpsFn,
    x: torch.Tensor,
    grid: Grid,
    plan: Sequence[Step],
    *,
    predict: str,
    callback: Callback | None = None,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run a linear plan from ``x = x_{t_0}`` ``[B, ...]``; returns the clean sample."""
    B = x.shape[0]
    noise = noise or default_noise
    t_b = [torch.full((B,), t, dtype=torch.long, device=x.device) for t in grid.t]  # [B] each
    depth = max(max(len(st.cm), len(st.ccm)) for st in plan)  # outputs kept
    hist: list[torch.Tensor] = []  # newest first
    x_prev = x
    for i in tqdm(range(grid.n), disable=not progress, desc="sampling", leave=False):
        a, s = grid.alpha[i], grid.sigma[i]
        step = plan[i]
        # model: one evaluation at x_i, in the plan's parameterisation
        eps = eps_fn(x, t_b[i])
        out = x0_from_eps(x, eps, a, s) if predict == "x0" else eps
        hist = [out, *hist][:depth]
        # corrector (UniPC): refine x_i with the new output, from the previous state
        if step.ccm:
            x = step.ccx * x_prev + _lincomb(step.ccm, hist)
        if callback is not None:
            callback(i, grid.t[i], x, out if predict == "x0" else x0_from_eps(x, eps, a, s))
        # predictor: x_{i+1} from x_i and the newest outputs (+ fresh noise for SDE samplers)
        x_prev = x
        x_next = step.cx * x + _lincomb(step.cm, hist)
        if step.cz != 0.0:
            x_next = x_next + step.cz * noise(i, x)
        x = x_next
    return x
