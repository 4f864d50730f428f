"""Learned step plans: the timesteps and coefficients of a deterministic sampler fitted to the
converged ODE solutions of a frozen network (``tte2tee tune-plan``).

A plan with ``K`` network evaluations (:mod:`~tte2tee_fast.diffusion.dense`) is ``K`` timesteps
and a lower-triangular table ``coef`` ``[K + 1][K + 1]``: the input of evaluation ``k`` is
``x_k = coef[k] . (x_T, D_0, ..., D_{k-1})`` and the frame is ``coef[K] . (x_T, D_0, ...)``, with
``D_j`` the network's clamped clean-image estimate at evaluation ``j``. Fitting it:

1. **Teacher** (:func:`teacher_trajectories`): the same ODE the generator solves (clamped data
   prediction, from ``t_max`` = 999, the same counter-based ``x_T``) solved finely by a named
   sampler (default unipc, 200 steps, trailing spacing) on ``N`` (noise, mask) pairs. Its state
   at every teacher timestep is kept: ``states[i]`` is the input of teacher evaluation ``i`` and
   ``states[S]`` the converged solution. Stored as ``.npy`` under a cache folder keyed by what
   made it, written batch by batch and resumable after a kill.
2. **Rows, greedily by least squares** (:func:`fit_rows`): for student timesteps
   ``s_0 = t_max > s_1 > ... > s_{K-1}`` taken from the teacher grid, row ``k >= 1`` maps the
   student's own features (``x_T`` and its predictions ``D_0 .. D_{k-1}``, computed on the
   student's states) onto the teacher's state at ``s_k``; the last row maps all ``K + 1``
   features onto the converged solution. One pass costs ``K`` network evaluations per pair and
   no backpropagation: the teacher-forced form of the trajectory matching of BNS / LD3 (which
   backpropagate through the network end to end; not done here).
3. **Timesteps** (:func:`tune_plan`): coordinate descent on the teacher grid from the trailing
   grid from ``t_max`` that ``tte2tee generate`` uses by default (or from the timesteps of an
   earlier plan), each candidate
   scored by the training pairs' relative RMSE of the frame; the prefix of a candidate that did
   not change is not recomputed. Held-out pairs (other masks, other noise) give the validation
   error, beside the same error of unipc on that trailing grid at the same NFE.

Everything here takes the network as ``eps_fn(x [B, 1, H, W], t [B] int64, labels [B, H, W])``
(any backend of :mod:`tte2tee_fast.generate.backends` fits), so the teacher can run on the
fastest engine of the machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tte2tee_fast.diffusion.dense import DensePlan, run_dense_plan, sampler_plan
from tte2tee_fast.diffusion.noise import frame_noise
from tte2tee_fast.diffusion.spacing import cosine_alphas_cumprod, spaced_timesteps
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import write_json_atomic

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
TEACHER_FORMAT = 1
_RIDGE = 1e-10  # relative Tikhonov term of the least-squares rows (features can be collinear)


@dataclass(frozen=True)
class TeacherConfig:
    """The converged ODE solutions the plan is fitted to."""

    sampler: str = "unipc"
    steps: int = 200
    spacing: str = "trailing"
    t_max: int = 999
    seed: int = 0  # noise of pair i: counter-based x_T of frame i
    batch_size: int = 8

    def plan(self) -> DensePlan:
        return sampler_plan(self.sampler, self.steps, self.spacing, t_max=self.t_max)


@dataclass(frozen=True)
class Trajectories:
    """Teacher states on its grid for ``N`` pairs (``states`` may be a memory map)."""

    timesteps: tuple[int, ...]  # [S] descending; timesteps[0] = t_max
    states: np.ndarray  # [S + 1, N, H, W] float32: inputs of evaluation i, then the solution
    labels: np.ndarray  # [N, H, W] int64

    @property
    def solution(self) -> np.ndarray:
        return self.states[-1]


def labels_digest(labels: np.ndarray) -> str:
    """sha256 of label maps as int64 bytes: which masks a teacher solved for."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def _batches(n: int, b: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + b, n)) for lo in range(0, n, b)]


def teacher_trajectories(
    eps_fn: EpsFn,
    labels: np.ndarray,
    config: TeacherConfig,
    folder: str | Path,
    identity: dict[str, Any],
    progress: bool = True,
) -> Trajectories:
    """Solve the teacher ODE for every pair (labels ``[N, H, W]``, noise of frames ``0..N-1``),
    or read what ``folder`` already holds; batches already written are not recomputed.

    ``identity``: what the network is (model and adapter hashes, guidance, backend); a folder
    made for another identity, configuration or mask set is refused."""
    folder = Path(folder)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 3 or labels.shape[0] < 1:
        raise InputError(f"teacher masks must be [N, H, W] with N >= 1, got {list(labels.shape)}")
    plan = config.plan()
    n, h, w = labels.shape
    key = {
        "format": TEACHER_FORMAT,
        "identity": identity,
        "config": asdict(config) | {"batch_size": None},  # batch size never changes a state
        "timesteps": list(plan.timesteps),
        "labels_sha256": labels_digest(labels),
        "shape": [n, h, w],
    }
    meta_path, states_path = folder / "teacher.json", folder / "states.npy"
    done: list[int] = []
    if meta_path.is_file() and states_path.is_file():
        meta = json.loads(meta_path.read_text())
        differs = sorted(k for k in key if meta.get(k) != key[k])
        if differs:
            raise InputError(
                f"teacher folder {folder} holds trajectories of another configuration "
                f"(differs in: {', '.join(differs)}); give another --teacher folder"
            )
        done = list(meta["done"])
        states = np.load(states_path, mmap_mode="r+")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        shape = (plan.nfe + 1, n, h, w)
        states = np.lib.format.open_memmap(states_path, "w+", np.float32, shape)
        write_json_atomic(meta_path, key | {"done": []})
    chunks = _batches(n, config.batch_size)
    todo = [c for c in range(len(chunks)) if c not in done]
    bar = tqdm(
        total=len(chunks),
        initial=len(chunks) - len(todo),
        desc="teacher ODE",
        disable=None if progress else True,
    )
    for c in todo:
        lo, hi = chunks[c]
        lab = torch.from_numpy(labels[lo:hi])
        x_T = frame_noise(config.seed, list(range(lo, hi)), (1, h, w))  # [b, 1, H, W]
        t_b = [torch.full((hi - lo,), t, dtype=torch.long) for t in plan.timesteps]

        def eps(x: torch.Tensor, k: int, lab=lab, t_b=t_b, lo=lo, hi=hi) -> torch.Tensor:
            states[k, lo:hi] = x[:, 0].numpy()  # the teacher's state at timestep k
            return eps_fn(x, t_b[k], lab)

        with torch.no_grad():
            sol = run_dense_plan(eps, x_T, plan, clip=True)
        states[plan.nfe, lo:hi] = sol[:, 0].numpy()
        states.flush()
        done.append(c)
        write_json_atomic(meta_path, key | {"done": sorted(done)})
        bar.update()
    bar.close()
    return Trajectories(plan.timesteps, np.load(states_path, mmap_mode="r"), labels)


def rel_rmse(x: np.ndarray, ref: np.ndarray) -> float:
    """``||x - ref|| / ||ref||`` over all elements, float64."""
    x64, r64 = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x64 - r64) / np.linalg.norm(r64))


def _lstsq(features: Sequence[np.ndarray], target: np.ndarray) -> np.ndarray:
    """Coefficients ``c`` minimising ``||sum c_i f_i - target||`` (float64 normal equations)."""
    f = np.stack([np.asarray(v, np.float64).ravel() for v in features])  # [m, N*P]
    g = f @ f.T
    g += _RIDGE * np.trace(g) / len(g) * np.eye(len(g))
    return np.linalg.solve(g, f @ np.asarray(target, np.float64).ravel())


@dataclass
class _Student:
    """Fits rows for candidate timesteps on fixed pairs, caching the unchanged prefixes."""

    eps_fn: EpsFn
    traj: Trajectories
    pairs: slice
    batch_size: int
    abar: np.ndarray
    cache: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    evaluations: int = 0  # network evaluations of all pairs (one per K per candidate)

    def predict(self, x: np.ndarray, t: int) -> np.ndarray:
        """Clamped clean estimate ``D`` ``[N, H, W]`` of the network at states ``x``."""
        alpha, sigma = math.sqrt(self.abar[t]), math.sqrt(1.0 - self.abar[t])
        lab = self.traj.labels[self.pairs]
        out = np.empty_like(x)
        with torch.no_grad():
            for lo, hi in _batches(x.shape[0], self.batch_size):
                xb = torch.from_numpy(np.array(x[lo:hi], dtype=np.float32))[:, None]
                tb = torch.full((hi - lo,), t, dtype=torch.long)
                eps = self.eps_fn(xb, tb, torch.from_numpy(lab[lo:hi]))[:, 0].numpy()
                out[lo:hi] = np.clip((x[lo:hi] - sigma * eps) / alpha, -1.0, 1.0)
        self.evaluations += 1
        return out

    def fit(self, grid_idx: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray]:
        """Rows ``[K + 1]`` (row k has k + 1 entries) and the frames ``[N, H, W]`` for student
        evaluations at teacher grid points ``grid_idx`` (``grid_idx[0] = 0``: ``t_max``)."""
        states, ts = self.traj.states, self.traj.timesteps
        x_T = np.asarray(states[0, self.pairs])
        feats, rows = [x_T], []
        for k in range(len(grid_idx)):
            prefix = tuple(grid_idx[: k + 1])
            if prefix not in self.cache:  # row k (evaluation 0 starts at x_T), then its D_k
                row = np.ones(1) if k == 0 else _lstsq(feats, states[grid_idx[k], self.pairs])
                x = sum(c * f for c, f in zip(row, feats, strict=True)).astype(np.float32)
                self.cache[prefix] = (row, self.predict(x, ts[prefix[-1]]))
            row, d = self.cache[prefix]
            rows.append(row)
            feats.append(d)
        last = _lstsq(feats, states[-1, self.pairs])
        rows.append(last)
        frames = sum(c * f for c, f in zip(last, feats, strict=True))
        return rows, frames

    def error(self, grid_idx: Sequence[int]) -> float:
        return rel_rmse(self.fit(grid_idx)[1], self.traj.states[-1, self.pairs])

    def forget(self, keep: Sequence[int]) -> None:
        """Drop cached prefixes that are not prefixes of ``keep``."""
        prefixes = {tuple(keep[: k + 1]) for k in range(len(keep))}
        for p in [p for p in self.cache if p not in prefixes]:
            del self.cache[p]


@dataclass(frozen=True)
class TuneConfig:
    """What plan to fit: NFE, the initial grid, the timestep search."""

    nfe: int = 4
    train: int = 32  # the first `train` pairs fit; the remaining pairs validate
    offsets: tuple[int, ...] = (1, 3, 8, 20)  # teacher-grid moves tried per timestep and sweep
    sweeps: int = 6  # at most; the search stops at the first sweep that moves nothing
    tol: float = 1e-5  # an accepted move must lower the training error by this much
    init: tuple[int, ...] | None = None  # start from these timesteps (e.g. an earlier plan's)

    def __post_init__(self) -> None:
        if self.nfe < 1:
            raise InputError(f"a plan needs at least 1 network evaluation, got nfe={self.nfe}")
        if self.train < 1:
            raise InputError(f"need at least 1 training pair, got {self.train}")
        if self.init is not None and len(self.init) != self.nfe:
            raise InputError(
                f"initial timesteps {list(self.init)} are not {self.nfe} (the plan's NFE)"
            )


def snap(timesteps: Sequence[int], grid: Sequence[int]) -> list[int]:
    """Indices into the descending ``grid`` nearest to ``timesteps``, made strictly increasing
    (index 0 = ``grid[0]`` always first)."""
    g = np.asarray(grid)
    out = [0]
    for t in list(timesteps)[1:]:
        i = int(np.abs(g - t).argmin())
        out.append(min(max(i, out[-1] + 1), len(g) - 1))
    if len(set(out)) != len(out):
        raise InputError(f"the teacher grid ({len(g)} steps) is too coarse for {len(out)} NFE")
    return out


def fitted_plan(
    rows: Sequence[np.ndarray],
    grid_idx: Sequence[int],
    traj: Trajectories,
    abar: np.ndarray,
    name: str,
    source: dict,
) -> DensePlan:
    """The :class:`DensePlan` of fitted ``rows`` at teacher grid points ``grid_idx``."""
    k = len(grid_idx)
    ts = [int(traj.timesteps[i]) for i in grid_idx]
    coef = tuple(tuple(float(v) for v in np.pad(r, (0, k + 1 - len(r)))) for r in rows)
    alpha = tuple(math.sqrt(float(abar[t])) for t in ts)
    sigma = tuple(math.sqrt(1.0 - float(abar[t])) for t in ts)
    return DensePlan(name, tuple(ts), alpha, sigma, coef, source)


def plan_error(eps_fn: EpsFn, traj: Trajectories, pairs: slice, plan: DensePlan, b: int) -> float:
    """Relative RMSE of ``plan``'s frames against the teacher's solution on ``pairs``."""
    labels, x_T = traj.labels[pairs], np.asarray(traj.states[0, pairs])
    outs = []
    with torch.no_grad():
        for lo, hi in _batches(labels.shape[0], b):
            lab = torch.from_numpy(labels[lo:hi])
            t_b = [torch.full((hi - lo,), t, dtype=torch.long) for t in plan.timesteps]
            x = torch.from_numpy(np.array(x_T[lo:hi], dtype=np.float32))[:, None]
            out = run_dense_plan(lambda xk, k, lab=lab, t_b=t_b: eps_fn(xk, t_b[k], lab), x, plan)
            outs.append(out[:, 0].numpy())
    return rel_rmse(np.concatenate(outs), traj.states[-1, pairs])


def tune_plan(
    eps_fn: EpsFn,
    traj: Trajectories,
    config: TuneConfig,
    batch_size: int = 8,
    source: dict | None = None,
    progress: bool = True,
) -> DensePlan:
    """Fit a plan of ``config.nfe`` evaluations to ``traj`` (module docstring); its ``source``
    records the method, the teacher, the errors (train, validation, unipc baseline) and time."""
    n = traj.labels.shape[0]
    if config.train >= n:
        raise InputError(
            f"{n} teacher pairs leave none to validate with --train {config.train}: "
            "give more pairs or fewer training pairs"
        )
    grid, start = traj.timesteps, time.perf_counter()
    abar = cosine_alphas_cumprod(1000)
    if config.nfe > len(grid):
        raise InputError(f"NFE {config.nfe} needs a teacher of at least {config.nfe} steps")
    if config.init is not None:
        init_ts = list(config.init)
    else:
        init_ts = spaced_timesteps(abar, config.nfe, "trailing", t_max=int(grid[0])).tolist()
    student = _Student(eps_fn, traj, slice(0, config.train), batch_size, abar)
    idx = snap(init_ts, grid)
    best = init = student.error(idx)
    moves = [s * o for o in config.offsets for s in (-1, 1)]
    bar = tqdm(
        total=config.sweeps, desc=f"plan NFE {config.nfe}", disable=None if progress else True
    )
    history = [{"sweep": 0, "timesteps": [int(grid[i]) for i in idx], "train_rel_rmse": best}]
    for sweep in range(config.sweeps):
        improved = False
        for pos in range(1, config.nfe):
            lo = idx[pos - 1] + 1
            hi = idx[pos + 1] - 1 if pos + 1 < config.nfe else len(grid) - 1
            tried = {}
            for m in moves:
                cand = idx[pos] + m
                if lo <= cand <= hi:
                    tried[cand] = student.error([*idx[:pos], cand, *idx[pos + 1 :]])
            if tried:
                cand, err = min(tried.items(), key=lambda kv: kv[1])
                if err < best - config.tol:
                    idx, best, improved = [*idx[:pos], cand, *idx[pos + 1 :]], err, True
            student.forget(idx)
            bar.set_postfix_str(f"train rel-RMSE {100 * best:.3g} %")
        history.append(
            {"sweep": sweep + 1, "timesteps": [int(grid[i]) for i in idx], "train_rel_rmse": best}
        )
        bar.update()
        if not improved:
            break
    bar.close()
    rows, _ = student.fit(idx)
    val = slice(config.train, n)
    fit_info = {
        "method": "greedy least squares on teacher states + coordinate descent on timesteps",
        "nfe": config.nfe,
        "config": asdict(config),
        "train_pairs": config.train,
        "val_pairs": n - config.train,
        "train_rel_rmse": best,
        "train_rel_rmse_initial_grid": init,
        "history": history,
        "student_evaluations": student.evaluations,
    }
    plan = fitted_plan(rows, idx, traj, abar, f"learned-{config.nfe}", (source or {}) | fit_info)
    baseline = sampler_plan("unipc", config.nfe, "trailing", t_max=int(grid[0]))
    val_err = plan_error(eps_fn, traj, val, plan, batch_size)
    base_err = plan_error(eps_fn, traj, val, baseline, batch_size)
    info = plan.source | {
        "val_rel_rmse": val_err,
        "val_rel_rmse_unipc": base_err,
        "seconds": time.perf_counter() - start,
    }
    return dataclasses.replace(plan, source=info)
