"""``tte2tee distill`` as a library call: the teacher (model + adapter on the fastest backend),
its trajectories on training and held-out (noise, mask) pairs (cached, resumable), the student's
plan, the training (:mod:`tte2tee_fast.adapt.distill`) and the student's ``plan.json``.

The written folder is an adapter folder like any other (``--adapter DIR`` in sample, generate,
export, bench; merged, so every backend and the torch-free runtime run it) that carries its
plan: ``--sampler auto`` picks it (generate/auto_sampler.py), ``--sampler plan:DIR/plan.json``
names it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from tte2tee_fast.adapt.distill import DistillConfig, DistillResult, distill
from tte2tee_fast.diffusion.dense import DensePlan, build_dense_plan, load_plan
from tte2tee_fast.diffusion.spacing import cosine_alphas_cumprod, spaced_timesteps
from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.auto_sampler import ADAPTER_PLAN, packaged_plan_for
from tte2tee_fast.generate.backends import build_denoiser
from tte2tee_fast.generate.plan_fit import teacher_set
from tte2tee_fast.generate.shards import identity
from tte2tee_fast.training.plan_tune import TeacherConfig, Trajectories, plan_error, snap


def student_plan(plan: str | None, nfe: int, merged_hash: str, traj: Trajectories) -> DensePlan:
    """The plan the student is trained for: the file or packaged name ``plan``; by default the
    packaged ``nfe``-step plan tuned for the teacher (``merged_hash``), else unipc on the
    trailing grid from the teacher's ``t_max`` snapped onto the teacher's grid."""
    from tte2tee_fast.packaged import plan_file

    if plan is None:
        plan = packaged_plan_for(merged_hash, nfe)
    if plan is not None:
        out = load_plan(plan_file(plan[len("plan:") :] if plan.startswith("plan:") else plan))
        if out.nfe != nfe:
            raise InputError(f"plan {plan} has {out.nfe} network evaluations, not --nfe {nfe}")
        return out
    abar = cosine_alphas_cumprod(1000)
    t_max = int(traj.timesteps[0])
    want = spaced_timesteps(abar, nfe, "trailing", t_max=t_max).tolist()
    ts = [int(traj.timesteps[i]) for i in snap(want, traj.timesteps)]
    return build_dense_plan("unipc", ts, abar, {"sampler": "unipc", "spacing": "trailing"})


def distill_adapter(
    out: str | Path,
    nfe: int = 4,
    plan: str | None = None,
    model_dir: str | None = None,
    adapter: str | None = "phantom-tee",
    masks: str = "phantom:tee",
    pairs: int = 128,
    val_pairs: int = 16,
    teacher_steps: int = 100,
    seed: int = 2000,
    val_seed: int = 3000,
    backend: str = "auto",
    precision: str = "auto",
    batch_size: int = 8,
    config: DistillConfig | None = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[DistillResult, Path, DensePlan]:
    """Distil the ``nfe``-step student of ``model_dir`` + ``adapter`` into folder ``out``;
    returns the training result, the path of the student's plan and the plan (its ``source``:
    the teacher, the options, the held-out errors in torch fp32 and on ``backend``)."""
    from tte2tee_fast.adapt.adapter import read_adapter
    from tte2tee_fast.adapt.merge import load_model_spec
    from tte2tee_fast.models import load_model, model_hash
    from tte2tee_fast.packaged import resolve_asset, resolve_model_path

    config = config or DistillConfig()
    if seed == val_seed:
        raise InputError(f"--seed and --val-seed are both {seed}: held-out pairs must differ")
    out = Path(out)
    den = build_denoiser(model_dir, adapter, backend, precision, batch=batch_size)
    teachers = [
        TeacherConfig("unipc", teacher_steps, "trailing", 999, s, batch_size)
        for s in (seed, val_seed)
    ]
    eps_fn, train, ident, train_dir = teacher_set(
        den, masks, pairs, teachers[0], 1.0, None, progress
    )
    _, val, _, val_dir = teacher_set(den, masks, val_pairs, teachers[1], 1.0, None, progress)
    the_plan = student_plan(plan, nfe, ident["merged_hash"], train)

    model_path = resolve_model_path(model_dir)
    base = load_model(model_path).float().eval()
    teacher = None if adapter is None else read_adapter(resolve_asset(adapter))
    spec = load_model_spec(model_path) if teacher is None else teacher.meta.maskr2
    result = distill(
        config,
        base,
        model_hash(base),
        teacher,
        spec,
        the_plan,
        train,
        val,
        out,
        ident,
        resume,
        progress,
    )

    # the student on the teacher's backend: its identity and held-out error, then its plan
    student = build_denoiser(model_dir, str(out), backend, precision, batch=batch_size)
    err = plan_error(student, val, slice(0, val_pairs), the_plan, batch_size)
    teacher_err = plan_error(eps_fn, val, slice(0, val_pairs), the_plan, batch_size)
    source: dict[str, Any] = {
        "method": "distilled LoRA student: trajectory distillation through its own chain "
        "(adapt/distill.py)",
        "nfe": nfe,
        "student_of": the_plan.name,
        "model": identity(student.info) | {"guidance": 1.0, "masks": masks},
        "teacher": {
            "model": ident,
            "folder": train_dir,
            "val_folder": val_dir,
            **dataclasses.asdict(teachers[0]),
            "val_seed": val_seed,
            "pairs": pairs,
            "val_pairs": val_pairs,
        },
        "distill": config.to_json(),
        "steps_run": result.step,
        "best_step": result.best_step,
        "train_seconds": round(result.seconds, 1),
        "trainable_parameters": result.trainable_parameters,
        "val_rel_rmse_torch_fp32": result.val_rel_rmse,
        "val_rel_rmse": err,  # on the backend the student is run on
        "val_rel_rmse_teacher": teacher_err,  # the same plan run by the teacher, same backend
        "backend": {"backend": student.backend, "precision": student.precision},
    }
    name = f"distilled-{nfe}"
    plan_out = dataclasses.replace(the_plan, name=name, source=source)
    if not all(math.isfinite(v) for v in (err, teacher_err)):
        raise InputError(f"the student's held-out error is not finite ({err}): not written")
    path = out / ADAPTER_PLAN
    plan_out.save(path)
    return result, path, plan_out
