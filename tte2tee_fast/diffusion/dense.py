"""A deterministic sampler as data: the *dense plan*, and the one loop that runs it on numpy
arrays or torch tensors alike. No torch import: the torch-free runtime
(``tte2tee_fast.export.runtime``) and the baked ONNX graph execute the same plan as torch.

Every deterministic linear sampler of the zoo (ddim, euler, heun, dpmpp_2m, dpmpp_3m, unipc) is,
for fixed timesteps, linear in the starting noise ``x_T`` and the network's data predictions
``D_k = clip((x_k - sigma_k eps_k) / alpha_k)`` (the clamp of
:mod:`~tte2tee_fast.diffusion.clip`; eps and x0 forms are related through ``x_k`` itself). So a
sampler with ``K`` network evaluations is::

    x_k   = coef[k][0] * x_T + sum_{j<k} coef[k][j+1] * D_j      k = 0..K-1: input of evaluation k
    x_out = coef[K][0] * x_T + sum_{j<K} coef[K][j+1] * D_j      the clean sample

with evaluation ``k`` at training timestep ``timesteps[k]`` (repeats allowed: heun evaluates
twice at interior points). :func:`build_dense_plan` derives ``coef`` by running the sampler's
step plan (:mod:`~tte2tee_fast.diffusion.plans`) on coefficient vectors instead of images, in
float64; ``tests/test_dense.py`` checks the dense loop against the torch samplers (which are
checked against diffusers). A plan file (``plan:FILE``) is this data as JSON; learned plans
are plans whose coefficients were optimised instead of derived.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tte2tee_fast.diffusion.plans import (
    Grid,
    Step,
    ddim_steps,
    dpmpp_steps,
    euler_steps,
    heun_coefficients,
    make_grid,
    unipc_steps,
)
from tte2tee_fast.diffusion.spacing import cosine_alphas_cumprod, spaced_timesteps
from tte2tee_fast.errors import InputError

FORMAT_VERSION = 1
# deterministic samplers and the parameterisation of their step plans
DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc")
_STEP_PLANS: dict[str, tuple[Callable[[Grid], list[Step]], str]] = {
    "ddim": (lambda g: ddim_steps(g, 0.0), "eps"),
    "euler": (euler_steps, "eps"),
    "dpmpp_2m": (lambda g: dpmpp_steps(g, 2, True, False), "x0"),
    "dpmpp_3m": (lambda g: dpmpp_steps(g, 3, True, False), "x0"),
    "unipc": (lambda g: unipc_steps(g, 2, "bh2"), "x0"),
}
_DROP = 1e-12  # recurrence terms below this (relative to the row) are rounding noise


@dataclass(frozen=True)
class DensePlan:
    """A deterministic sampler as data (see the module docstring)."""

    name: str
    timesteps: tuple[int, ...]  # [K] training timestep of each network evaluation
    alpha: tuple[float, ...]  # [K] sqrt(abar) at those timesteps
    sigma: tuple[float, ...]  # [K] sqrt(1 - abar)
    coef: tuple[tuple[float, ...], ...]  # [K + 1][K + 1]: on x_T, D_0 .. D_{K-1}
    source: dict | None = None  # how it was made (sampler, steps, spacing, ...), for reports

    def __post_init__(self) -> None:
        k = len(self.timesteps)
        if k < 1 or len(self.alpha) != k or len(self.sigma) != k:
            raise InputError(
                f"plan {self.name!r}: timesteps, alpha and sigma must have K >= 1 entries"
            )
        if len(self.coef) != k + 1 or any(len(row) != k + 1 for row in self.coef):
            raise InputError(
                f"plan {self.name!r}: coef must be [{k + 1}][{k + 1}] for {k} evaluations"
            )
        flat = [v for row in self.coef for v in row] + list(self.alpha) + list(self.sigma)
        if not all(math.isfinite(v) for v in flat):
            raise InputError(f"plan {self.name!r}: non-finite coefficient")
        if not all(a > 0 and s > 0 for a, s in zip(self.alpha, self.sigma, strict=True)):
            raise InputError(f"plan {self.name!r}: alpha and sigma must be > 0")
        # row k may only use predictions of earlier evaluations
        for i, row in enumerate(self.coef[:k]):
            if any(v != 0.0 for v in row[i + 1 :]):
                raise InputError(f"plan {self.name!r}: evaluation {i} uses a later prediction")

    @property
    def nfe(self) -> int:
        """Network evaluations per frame (without guidance)."""
        return len(self.timesteps)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "name": self.name,
            "timesteps": list(self.timesteps),
            "alpha": list(self.alpha),
            "sigma": list(self.sigma),
            "coef": [list(r) for r in self.coef],
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "plan") -> DensePlan:
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InputError(f"{where}: not a plan of format {FORMAT_VERSION} (found {found!r})")
        try:
            return cls(
                name=str(data["name"]),
                timesteps=tuple(int(v) for v in data["timesteps"]),
                alpha=tuple(float(v) for v in data["alpha"]),
                sigma=tuple(float(v) for v in data["sigma"]),
                coef=tuple(tuple(float(v) for v in row) for row in data["coef"]),
                source=data.get("source"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{where}: malformed plan ({type(e).__name__}: {e})") from None

    def save(self, path: str | os.PathLike) -> None:
        from tte2tee_fast.fsutil import write_json_atomic

        write_json_atomic(path, self.to_json())

    def recurrence(self) -> list[tuple[float, float, tuple[tuple[int, float], ...]]]:
        """Per row ``k``: ``(r, q, ((j, b), ...))`` with
        ``x_k = r * x_{k-1} + q * x_T + sum b * D_j`` (``x_{-1} = x_T``): the same rows, applied
        as a short recurrence (multistep solvers touch the last few predictions only)."""
        c = np.asarray(self.coef, dtype=np.float64)  # [K + 1, K + 1]
        out, prev = [], np.eye(1, c.shape[1], 0)[0]  # x_T
        for row in c:
            r = row[0] / prev[0] if prev[0] != 0.0 else 0.0
            rem = row - r * prev
            scale = max(float(np.abs(row).max()), 1e-300)
            terms = tuple(
                (j - 1, float(rem[j])) for j in range(1, len(row)) if abs(rem[j]) > _DROP * scale
            )
            q = float(rem[0]) if abs(rem[0]) > _DROP * scale else 0.0
            out.append((float(r), q, terms))
            prev = row
        return out


def load_plan(path: str | os.PathLike) -> DensePlan:
    """Read a plan file (JSON, :meth:`DensePlan.to_json`), or the packaged plan of that name."""
    from tte2tee_fast.packaged import packaged_plans, plan_file

    path = plan_file(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"plan file {path} does not exist (packaged plans: {', '.join(packaged_plans()) or 'none'})"
        ) from None
    except json.JSONDecodeError as e:
        raise InputError(f"plan file {path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    return DensePlan.from_json(data, where=f"plan file {path}")


def _unit(k: int, size: int) -> np.ndarray:
    return np.eye(1, size, k)[0]


def _dense_from_steps(g: Grid, steps: Sequence[Step], predict: str) -> list[np.ndarray]:
    """Run the step plan on coefficient vectors: the rows of the dense plan."""
    size = g.n + 1
    x = _unit(0, size)  # x_T
    x_prev, hist, rows = x, [], []
    depth = max(max(len(st.cm), len(st.ccm)) for st in steps)
    for i, st in enumerate(steps):
        if st.cz != 0.0:
            raise InputError("a stochastic plan (fresh noise per step) has no dense form")
        rows.append(x)
        d = _unit(i + 1, size)  # D_i
        out = d if predict == "x0" else (x - g.alpha[i] * d) / g.sigma[i]  # eps implied by D_i
        hist = [out, *hist][:depth]
        if st.ccm:  # UniC corrector
            x = st.ccx * x_prev + sum(c * o for c, o in zip(st.ccm, hist, strict=False))
        x_prev = x
        x = st.cx * x + sum(c * o for c, o in zip(st.cm, hist, strict=False))
    rows.append(x)
    return rows


def _dense_heun(g: Grid) -> tuple[list[np.ndarray], list[int]]:
    """Heun (EDM Alg. 1, no churn): two evaluations per step, Euler on the last."""
    size = 2 * g.n  # x_T + (2n - 1) predictions
    x, rows, ts, k = _unit(0, size), [], [], 0

    def evaluate(state: np.ndarray, i: int) -> np.ndarray:  # eps implied by the new D
        nonlocal k
        rows.append(state)
        ts.append(g.t[i])
        k += 1
        return (state - g.alpha[i] * _unit(k, size)) / g.sigma[i]

    for i in range(g.n):
        cx, ce = heun_coefficients(g, i)
        eps = evaluate(x, i)
        x_e = cx * x + ce * eps
        if i < g.n - 1:
            x_e = cx * x + (0.5 * ce) * (eps + evaluate(x_e, i + 1))
        x = x_e
    rows.append(x)
    return rows, ts


def build_dense_plan(
    sampler: str,
    timesteps: Sequence[int],
    abar: np.ndarray | None = None,
    source: dict | None = None,
) -> DensePlan:
    """The dense plan of deterministic ``sampler`` on ``timesteps`` (descending) of the schedule
    ``abar`` (default: cosine, 1000 steps)."""
    if sampler not in DETERMINISTIC:
        raise InputError(
            f"sampler {sampler!r} has no dense plan; deterministic samplers: {list(DETERMINISTIC)}"
        )
    abar = cosine_alphas_cumprod(1000) if abar is None else np.asarray(abar, dtype=np.float64)
    g = make_grid(abar, np.asarray(list(timesteps), dtype=np.int64))
    if sampler == "heun":
        rows, ts = _dense_heun(g)
    else:
        build, predict = _STEP_PLANS[sampler]
        rows, ts = _dense_from_steps(g, build(g), predict), list(g.t)
    alpha = tuple(math.sqrt(float(abar[t])) for t in ts)
    sigma = tuple(math.sqrt(1.0 - float(abar[t])) for t in ts)
    coef = tuple(tuple(float(v) for v in row) for row in rows)
    return DensePlan(sampler, tuple(int(t) for t in ts), alpha, sigma, coef, source)


def sampler_plan(
    sampler: str,
    steps: int,
    spacing: str = "trailing",
    rho: float = 7.0,
    t_max: int | None = None,
    t_min: int | None = None,
) -> DensePlan:
    """A named sampler (or ``plan:FILE``) at ``steps`` steps, spaced as
    :func:`~tte2tee_fast.diffusion.spacing.spaced_timesteps` spaces them, on the cosine schedule."""
    if sampler.startswith("plan:"):
        return load_plan(sampler[len("plan:") :])
    abar = cosine_alphas_cumprod(1000)
    ts = spaced_timesteps(abar, steps, spacing, rho, t_max, t_min)
    source = {
        "sampler": sampler,
        "steps": steps,
        "spacing": spacing,
        "rho": rho,
        "t_max": t_max,
        "t_min": t_min,
    }
    return build_dense_plan(sampler, ts.tolist(), abar, source)


def run_dense_plan(
    eps_fn: Callable[[Any, int], Any],
    x_T: Any,
    plan: DensePlan,
    clip: bool = True,
    callback: Callable[[int, Any], None] | None = None,
) -> Any:
    """Run ``plan`` from ``x_T`` ``[B, ...]`` (a numpy array or a torch tensor): the loop every
    executor shares. ``eps_fn(x, k)`` is the network's eps at evaluation ``k`` (at timestep
    ``plan.timesteps[k]``); ``clip`` clamps each data prediction to [-1, 1] (the clamp of
    ``tte2tee sample``). Returns the sampler's output (not clamped)."""
    rec = plan.recurrence()
    preds: list[Any] = []  # D_0 .. D_{k-1}
    x = x_T
    for k, (r, q, terms) in enumerate(rec):
        # this evaluation's input (or, at k = K, the output) from the previous state
        x = r * x if r != 1.0 else x
        if q != 0.0:
            x = x + q * x_T
        for j, b in terms:
            x = x + b * preds[j]
        if k == plan.nfe:
            return x
        # the network, then its clean-image estimate (clamped)
        eps = eps_fn(x, k)
        d = (x - plan.sigma[k] * eps) / plan.alpha[k]
        preds.append(d.clip(-1.0, 1.0) if clip else d)
        if callback is not None:
            callback(k, preds[-1])
    raise AssertionError("unreachable: the plan has K + 1 rows")
