"""The torch sampler loop: every solver whose step is linear in the model outputs runs here.

A sampler is a *plan* computed once on the host in float64 (:mod:`tte2tee_fast.diffusion.plans`,
no torch: :class:`~tte2tee_fast.diffusion.plans.Step` per step of a
:class:`~tte2tee_fast.diffusion.plans.Grid`). DDPM, DDIM, Euler, DPM-Solver++ (2M, 3M, 2M SDE)
and UniPC are all of that form, so the loop below is the only place that touches tensors. Coefficients are Python floats and the per-step
timestep tensors are made before the loop: nothing inside forces a device->host sync, so the
loop can be captured as a CUDA graph (with a deterministic ``noise`` provider).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from tte2tee_fast.diffusion.plans import Grid, Step
from tte2tee_fast.diffusion.plans import make_grid as grid_from_abar
from tte2tee_fast.diffusion.schedule import NoiseSchedule

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [B, ...], t [B] int64) -> eps
NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]  # (step i, like x) -> N(0, 1) like x
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (i, t, x_i, x0_pred)


def make_grid(schedule: NoiseSchedule, timesteps: torch.Tensor | Sequence[int]) -> Grid:
    """:func:`~tte2tee_fast.diffusion.plans.make_grid` of a torch schedule and timesteps."""
    ts = timesteps.cpu().numpy() if isinstance(timesteps, torch.Tensor) else np.asarray(timesteps)
    return grid_from_abar(schedule.alphas_cumprod.numpy(), ts)


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
