"""Trajectory distillation of a few-step sampler into a LoRA student (``tte2tee distill``).

SFD-style (Zhou et al., "Simple and Fast Distillation of Diffusion Models", 2024): the student
network starts as the teacher and is trained so that its own ``K``-evaluation sampler lands on
the teacher's ODE trajectory at the student's grid points and, last, on the teacher's converged
solution. Here:

- **Teacher trajectories** are :class:`~tte2tee_fast.training.plan_tune.Trajectories`, the same
  ones the learned step plans are fitted to (unipc from ``t_max`` = 999 on a fine grid, states at
  every teacher timestep, computed once, resumable, cached).
- **The student's sampler** is a fixed :class:`~tte2tee_fast.diffusion.dense.DensePlan` of ``K``
  evaluations whose timesteps lie on the teacher's grid (by default the learned plan of that
  NFE): its landing points ``x_1 .. x_{K-1}`` (the inputs of evaluations 1..K-1) and its frame
  are compared with the teacher's states at those timesteps and with the teacher's solution.
- **Loss**: the sum over landing points of ``||x_k - teacher_k||^2 / ||teacher_k||^2`` (frame
  weight 1, intermediate points ``landing_weight``), the gradient taken through the student's
  whole chain of ``K`` evaluations from the teacher's ``x_T`` (SFD matches one step at a time
  from teacher states; running the student's own chain trains what inference runs, at the same
  ``K`` forward and backward passes per pair).
- **The student** is a LoRA adapter: the teacher's adapter widened by ``extra_rank`` zero-
  initialised components (so at step 0 the student *is* the teacher, bit for bit in the
  merged weights), or, for a base without an adapter, a fresh LoRA of rank ``extra_rank`` on
  target preset ``targets`` (B = 0: again the teacher). The base stays frozen, so the student
  keeps the teacher adapter's MaskR² spec and takes the same raw label maps (for ``phantom-tee``:
  the raw TEE masks, RA + RV remapped onto the base's free channel).
- **Selection**: every ``val_every`` steps the EMA of the LoRA weights runs its plan on held-out
  pairs (other masks, other noise); the written adapter is the EMA with the lowest held-out
  relative RMSE to the teacher's solution. Checkpoints every ``checkpoint_every`` steps resume
  a run exactly (same batches, same weights) after a kill.

Output folder: the adapter files (``adapt/adapter.py``), ``distill_config.json``,
``distill_log.jsonl`` (loss per step, held-out error per validation) and ``checkpoint/``.
The student's plan (``plan.json``, recording the student's merged hash) is written by the
caller (``generate/distill_fit.py``), which knows the engine identity.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tte2tee_fast.adapt.adapter import Adapter
from tte2tee_fast.adapt.targets import TARGET_PRESETS
from tte2tee_fast.adapt.train import AdaptConfig, add_lora, check_base_unchanged, write_adapter
from tte2tee_fast.condition.maskr2 import MaskR2Remap, MaskR2Spec
from tte2tee_fast.diffusion.dense import DensePlan, run_dense_plan
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import write_json_atomic
from tte2tee_fast.training.checkpoint import load_checkpoint, read_checkpoint_state, save_checkpoint
from tte2tee_fast.training.ema import EMA
from tte2tee_fast.training.loop import batch_indices, truncate_log
from tte2tee_fast.training.plan_tune import Trajectories, labels_digest, plan_error
from tte2tee_fast.training.trainable import Trainable

CONFIG_FILE = "distill_config.json"
LOG_FILE = "distill_log.jsonl"
RUN_KIND = "distill"


@dataclass(frozen=True)
class DistillConfig:
    """How the student is trained (saved as ``distill_config.json``)."""

    steps: int = 300
    batch_size: int = 4
    lr: float = 2e-4
    warmup: int = 10
    grad_clip: float = 1.0
    extra_rank: int = 4  # LoRA components added to the teacher's (or the rank of a fresh LoRA)
    targets: str = "all"  # target preset of a fresh LoRA (a teacher adapter keeps its own)
    landing_weight: float = 1.0  # weight of the intermediate landing points (the frame: 1)
    ema_decay: float = 0.99
    bf16: bool = False  # autocast the student's forward and backward (CPU: AVX512_BF16)
    val_every: int = 25
    checkpoint_every: int = 25
    seed: int = 0

    # may change when a run is resumed
    RESUMABLE = ("steps", "val_every", "checkpoint_every")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "extra_rank", "val_every", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"distillation {name} must be a positive integer, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"learning rate must be > 0, got {self.lr!r}")
        if self.warmup < 0 or self.grad_clip <= 0 or self.landing_weight < 0:
            raise InputError("warmup and landing_weight must be >= 0 and grad_clip > 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"EMA decay must be in [0, 1), got {self.ema_decay!r}")
        if self.targets not in TARGET_PRESETS:
            raise InputError(f"unknown LoRA target preset {self.targets!r}: {TARGET_PRESETS}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DistillResult:
    """What :func:`distill` returns."""

    model: nn.Module  # the base with the student's LoRA (the selected EMA weights)
    out_dir: Path
    step: int
    best_step: int
    val_rel_rmse: float  # held-out error of the written student (its plan, torch fp32)
    val_rel_rmse_teacher: float  # the same plan run by the teacher (step 0)
    seconds: float  # training time, summed over resumptions
    trainable_parameters: int
    preset: str
    rank: int


def student_lora(
    base: nn.Module, teacher: Adapter | None, targets: str, extra_rank: int, seed: int
) -> tuple[Trainable, str, int]:
    """Freeze ``base`` and give it the student's LoRA (module docstring): returns the LoRA
    weights as a :class:`Trainable`, the target preset and the rank. With a teacher adapter
    the student's first ``teacher.meta.rank`` components are the teacher's and the added ones
    start with B = 0; the LoRA scale (alpha / rank) is the teacher's."""
    if teacher is None:
        preset, rank, alpha = targets, extra_rank, float(extra_rank)
    else:
        preset = teacher.meta.target_preset
        rank = teacher.meta.rank + extra_rank
        alpha = teacher.meta.alpha / teacher.meta.rank * rank  # same scale alpha / rank
    cfg = AdaptConfig(targets=preset, rank=rank, alpha=alpha, seed=seed)
    trainable = add_lora(base, cfg)
    if teacher is not None:
        r = teacher.meta.rank
        with torch.no_grad():
            for module, (a, b) in teacher.weights.items():
                layer = base.get_submodule(module)
                layer.lora_A["default"].weight[:r].copy_(a)  # [rank, in, ...]
                layer.lora_B["default"].weight[:, :r].copy_(b)  # [out, rank, ...]
                layer.lora_B["default"].weight[:, r:].zero_()
    return trainable, preset, rank


def student_frames(
    net: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    plan: DensePlan,
    x_T: torch.Tensor,
    cond: torch.Tensor,
) -> list[torch.Tensor]:
    """The landing points of ``plan`` run by ``net(x, t, cond) -> eps`` from ``x_T``
    ``[B, 1, H, W]``: the inputs of evaluations 1..K-1, then the frame (K tensors, autograd kept)."""
    t = [torch.full((x_T.shape[0],), s, dtype=torch.long) for s in plan.timesteps]
    inputs: list[torch.Tensor] = []

    def eps(x: torch.Tensor, k: int) -> torch.Tensor:
        inputs.append(x)
        return net(x, t[k], cond)

    frame = run_dense_plan(eps, x_T, plan, clip=True)
    return [*inputs[1:], frame]


def grid_indices(plan: DensePlan, traj: Trajectories) -> list[int]:
    """Teacher state indices of the plan's landing points (then the solution); refuses a plan
    whose timesteps are not on the teacher's grid or that does not start at its ``t_max``."""
    where = {t: i for i, t in enumerate(traj.timesteps)}
    off = [t for t in plan.timesteps if t not in where]
    if off or plan.timesteps[0] != traj.timesteps[0]:
        raise InputError(
            f"the student's plan timesteps {list(plan.timesteps)} must start at the teacher's "
            f"t_max {traj.timesteps[0]} and lie on its grid (not on it: {off})"
        )
    return [where[t] for t in plan.timesteps[1:]] + [len(traj.timesteps)]


def _landing_loss(outs: list[torch.Tensor], targets: list[torch.Tensor], w: float) -> torch.Tensor:
    terms = []
    for k, (x, ref) in enumerate(zip(outs, targets, strict=True)):
        weight = 1.0 if k == len(outs) - 1 else w
        terms.append(weight * (x - ref).pow(2).sum() / ref.pow(2).sum())
    return torch.stack(terms).sum()


def _net(model: nn.Module, bf16: bool) -> Callable:
    def net(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            return model(x, t, cond).float()

    return net


def plan_rel_rmse(
    model: nn.Module, remap: MaskR2Remap, plan: DensePlan, traj: Trajectories, batch: int = 8
) -> float:
    """Relative RMSE of the frames of ``plan`` run by ``model`` (torch fp32) against the
    teacher's solutions of ``traj``, all pairs
    (:func:`~tte2tee_fast.training.plan_tune.plan_error` on the model's eps)."""
    n = traj.labels.shape[0]
    return plan_error(lambda x, t, lab: model(x, t, remap(lab)), traj, slice(0, n), plan, batch)


def _run_key(
    config: DistillConfig, plan: DensePlan, train: Trajectories, val: Trajectories, ident: dict
) -> dict[str, Any]:
    fixed = {k: v for k, v in config.to_json().items() if k not in DistillConfig.RESUMABLE}
    return {
        "kind": RUN_KIND,
        "config": fixed,
        "plan": {"timesteps": list(plan.timesteps), "coef": [list(r) for r in plan.coef]},
        "train_labels_sha256": labels_digest(train.labels),
        "val_labels_sha256": labels_digest(val.labels),
        "teacher_timesteps": list(train.timesteps),
        "identity": ident,
    }


def _ema_weights(ema: EMA) -> dict[str, torch.Tensor]:
    return {n: s.clone() for n, s in zip(ema.names, ema.shadow, strict=True)}


def distill(
    config: DistillConfig,
    base: nn.Module,
    base_hash: str,
    teacher: Adapter | None,
    spec: MaskR2Spec,
    plan: DensePlan,
    train: Trajectories,
    val: Trajectories,
    out_dir: str | os.PathLike,
    identity: dict[str, Any],
    resume: bool = False,
    progress: bool = True,
) -> DistillResult:
    """Train the LoRA student of ``base`` (+ ``teacher``) for ``plan`` on the teacher's
    trajectories ``train``, select it on ``val`` and write its adapter to ``out_dir`` (module
    docstring). ``identity``: what made the trajectories (the teacher network, its masks);
    a resumed run must have the same one, the same plan, pairs and options (only ``steps``,
    ``val_every`` and ``checkpoint_every`` may change)."""
    out = Path(out_dir)
    idx = grid_indices(plan, train)
    if grid_indices(plan, val) != idx:
        raise InputError("training and held-out teacher trajectories use different grids")
    key = _run_key(config, plan, train, val, identity)
    ckpt = out / "checkpoint"
    saved = read_checkpoint_state(out)
    if saved is not None:
        if not resume:
            raise InputError(
                f"{out} already holds a distillation run: pass --resume or a new --out"
            )
        differs = sorted(k for k in key if saved.get("key", {}).get(k) != key[k])
        if differs:
            raise InputError(f"cannot resume {out}: it was made with other {', '.join(differs)}")
    elif resume and out.exists() and any(out.iterdir()):
        raise InputError(f"cannot resume {out}: it holds no checkpoint/state.json")

    reference = {k: v.detach().cpu().clone() for k, v in base.state_dict().items()}
    trainable, preset, rank = student_lora(
        base, teacher, config.targets, config.extra_rank, config.seed
    )
    model = trainable.module
    remap = MaskR2Remap(spec)
    opt = torch.optim.Adam(list(trainable.parameters()), lr=config.lr)
    ema = EMA(trainable, config.ema_decay)
    best = _ema_weights(ema)
    state: dict[str, Any] = {"key": key, "step": 0, "seconds": 0.0}  # the log has the rest
    model.eval()  # no dropout / norm statistics in this network; eval keeps it deterministic
    if saved is None:
        teacher_err = plan_rel_rmse(model, remap, plan, val)
        state |= {"best_val": teacher_err, "best_step": 0, "teacher_val": teacher_err}
        out.mkdir(parents=True, exist_ok=True)
        (out / LOG_FILE).write_text(json.dumps({"step": 0, "val_rel_rmse": teacher_err}) + "\n")
    else:
        best = load_checkpoint(ckpt, trainable, ema, opt, extra=("best",))["best"]
        state = saved
        truncate_log(out / LOG_FILE, state["step"])
    write_json_atomic(out / CONFIG_FILE, config.to_json())

    net = _net(model, config.bf16)
    n = train.labels.shape[0]
    bar = tqdm(
        total=config.steps,
        initial=min(state["step"], config.steps),
        desc=f"distill NFE {plan.nfe}",
        disable=None if progress else True,
    )
    log = (out / LOG_FILE).open("a")
    try:
        for step in range(state["step"], config.steps):
            t0 = time.perf_counter()
            sel = batch_indices(config.seed, step, config.batch_size, n).numpy()
            sel.sort()  # memory-mapped states read in order
            x_T = torch.from_numpy(np.array(train.states[0, sel]))[:, None]  # [b, 1, H, W]
            targets = [torch.from_numpy(np.array(train.states[i, sel]))[:, None] for i in idx]
            cond = remap(torch.from_numpy(train.labels[sel]))  # [b, C, H, W]
            lr = config.lr * min(1.0, (step + 1) / max(1, config.warmup))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = _landing_loss(
                student_frames(net, plan, x_T, cond), targets, config.landing_weight
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(trainable.parameters()), config.grad_clip)
            opt.step()
            ema.update(trainable)
            state["step"] = step + 1
            state["seconds"] += time.perf_counter() - t0
            entry: dict[str, Any] = {"step": step + 1, "loss": float(loss.detach()), "lr": lr}
            last = step + 1 == config.steps
            if (step + 1) % config.val_every == 0 or last:
                raw = {k: v.clone() for k, v in trainable.state_dict().items()}
                ema.copy_to(trainable)
                err = plan_rel_rmse(model, remap, plan, val)
                if err < state["best_val"]:
                    state["best_val"], state["best_step"] = err, step + 1
                    best = _ema_weights(ema)
                trainable.load_state_dict(raw)
                entry["val_rel_rmse"] = err
                bar.set_postfix_str(
                    f"held-out {100 * err:.3g} % (best {100 * state['best_val']:.3g})"
                )
            log.write(json.dumps(entry) + "\n")
            log.flush()
            if (step + 1) % config.checkpoint_every == 0 or last:
                save_checkpoint(out, trainable, ema, opt, state, extra={"best": best})
            bar.update()
    finally:
        log.close()
        bar.close()

    # the base is untouched; the adapter is the selected EMA
    check_base_unchanged(model, reference)
    trainable.load_state_dict(best, "best EMA")
    write_adapter(model, base_hash, spec, preset, out)
    return DistillResult(
        model=model,
        out_dir=out,
        step=state["step"],
        best_step=state["best_step"],
        val_rel_rmse=state["best_val"],
        val_rel_rmse_teacher=state["teacher_val"],
        seconds=state["seconds"],
        trainable_parameters=sum(p.numel() for p in trainable.parameters()),
        preset=preset,
        rank=rank,
    )
