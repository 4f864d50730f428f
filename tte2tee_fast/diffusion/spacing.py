"""Timestep spacings and the cosine schedule as plain numpy (float64), with no torch: the sampler
plans, the torch loop and the torch-free runtime (``tte2tee_fast.export.runtime``) all space
their steps here. :class:`~tte2tee_fast.diffusion.schedule.NoiseSchedule` wraps it for torch."""

from __future__ import annotations

import math

import numpy as np

from tte2tee_fast.errors import InputError

SPACINGS = ("leading", "trailing", "linspace", "karras")


def cosine_alphas_cumprod(
    num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999
) -> np.ndarray:
    """Nichol & Dhariwal cosine schedule (diffusers ``squaredcos_cap_v2``): ``abar`` ``[T]`` float64."""

    def abar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = np.array(
        [
            min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta)
            for i in range(num_steps)
        ],
        dtype=np.float64,
    )
    return np.cumprod(1.0 - betas)


def spaced_timesteps(
    abar: np.ndarray,
    num_steps: int,
    spacing: str = "trailing",
    rho: float = 7.0,
    t_max: int | None = None,
    t_min: int | None = None,
) -> np.ndarray:
    """Descending integer training timesteps ``[num_steps]`` (int64) of the schedule ``abar``
    ``[T]``, as diffusers spaces them.

    ``linspace``, ``leading`` and ``trailing`` are exactly diffusers' ``timestep_spacing`` rules
    of ``DDIMScheduler`` / ``DDPMScheduler`` / ``EulerDiscreteScheduler`` (``steps_offset=0``;
    Euler and Heun keep ``linspace`` unrounded, we round). ``DPMSolverMultistepScheduler`` and
    ``UniPCMultistepScheduler`` space ``linspace`` / ``leading`` over ``n + 1`` points and drop
    the last: that is ``timesteps(n + 1, spacing)[:-1]``; their ``trailing`` equals ours.

    ``karras``: sigmas rho-spaced (Karras et al. 2022, eq. 5) between the schedule's smallest
    and largest k-sigma, each mapped to the training timestep nearest in log-sigma (what
    diffusers' ``use_karras_sigmas`` gives after rounding). Unlike diffusers we keep the sigma
    *of that integer timestep* (the model sees the timestep that matches the noise level), and
    where rounding makes neighbours collide (the cosine schedule's k-sigma jumps from ~640 to
    ~2e4 over its last timestep) the list is repaired to the nearest strictly descending one,
    so ``num_steps`` distinct timesteps always come back.

    ``t_max`` (``trailing``, ``linspace``, ``karras``): start at training timestep ``t_max``
    instead of ``T - 1``, the same rule applied to the schedule cut at ``t_max + 1`` steps (as
    DPM-Solver ends the cosine schedule at t = 0.9946: at ``T - 1`` the capped cosine has
    alpha = 4.9e-5 and an eps-network's clean-image estimate is its eps error x 2e4).
    ``None``: ``T - 1``, diffusers' spacings exactly.

    ``t_min`` (``karras`` only): end the grid at training timestep ``t_min`` instead of 0, i.e.
    sigma_min = k-sigma of ``t_min`` (diffusers' ``sigma_min`` config, EDM's sigma_min); the
    sampler's final step then jumps from there to the data prediction. On the cosine
    schedule the k-sigma of t = 0 is 0.0064, so a grid ending there spends its last network
    evaluation where the sample is already clean (``benchmarks/RESULTS.md``: ending at
    t = 10 cut unipc's 10-NFE error from 2.6 % to 1.9 %).
    """

    abar = np.asarray(abar, dtype=np.float64)
    T = abar.shape[0]
    k_sigmas = np.sqrt((1.0 - abar) / abar)
    if spacing not in SPACINGS:
        raise InputError(f"unknown timestep spacing {spacing!r}; choose one of {list(SPACINGS)}")
    if not 1 <= num_steps <= T:
        raise InputError(f"steps must be between 1 and {T} (the training steps), got {num_steps}")
    if t_max is not None:
        if spacing == "leading":
            raise InputError("t_max does not apply to leading spacing (it starts below T - 1)")
        if not 0 < t_max < T:
            raise InputError(f"t_max must be between 1 and {T - 1}, got {t_max}")
        if num_steps > t_max + 1:
            raise InputError(f"steps must be at most t_max + 1 = {t_max + 1}, got {num_steps}")
    span = T if t_max is None else int(t_max) + 1  # timesteps lo .. span - 1 are used
    lo = 0 if t_min is None else int(t_min)
    if t_min is not None:
        if spacing != "karras":
            raise InputError(f"t_min applies to karras spacing only, not {spacing!r}")
        if not 0 <= lo < span - 1:
            raise InputError(f"t_min must be between 0 and {span - 2} (t_max - 1), got {lo}")
        if num_steps > span - lo:
            raise InputError(
                f"steps must be at most t_max - t_min + 1 = {span - lo}, got {num_steps}"
            )
    if spacing == "linspace":
        ts = np.linspace(0, span - 1, num_steps).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(num_steps) * (T // num_steps)).round()[::-1]
    elif spacing == "trailing":
        ts = np.round(np.arange(span, 0, -span / num_steps)) - 1
    else:
        if not rho > 0:
            raise InputError(f"karras rho must be > 0, got {rho}")
        ts = lo + _karras_timesteps(k_sigmas[lo:span], num_steps, rho)
    return np.ascontiguousarray(ts).astype(np.int64)


def _karras_timesteps(k_sigmas: np.ndarray, n: int, rho: float) -> np.ndarray:
    """Rho-spaced sigmas mapped to the nearest timesteps, then made strictly descending."""
    log_s = np.log(k_sigmas)  # [T] increasing
    T = log_s.shape[0]
    # sigmas rho-spaced from sigma_max down to sigma_min
    lo, hi = k_sigmas[0] ** (1 / rho), k_sigmas[-1] ** (1 / rho)
    sig = (hi + np.linspace(0, 1, n) * (lo - hi)) ** rho
    # nearest training timestep in log-sigma
    ts = np.abs(np.log(sig)[:, None] - log_s[None, :]).argmin(axis=1)
    # repair collisions: keep room for the steps on either side, then force a strict descent
    ts = np.clip(ts, np.arange(n - 1, -1, -1), np.arange(T - 1, T - 1 - n, -1))
    for i in range(1, n):
        ts[i] = min(ts[i], ts[i - 1] - 1)
    return ts
