"""``tte2tee tune-plan`` as a library call: the denoiser of a backend, the (noise, mask) pairs
of a mask source, the teacher trajectories in the cache, and one fitted plan per NFE
(the method: :mod:`tte2tee_fast.training.plan_tune`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from tte2tee_fast.diffusion.dense import DensePlan
from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.backends import Denoiser, build_denoiser, cache_dir
from tte2tee_fast.generate.shards import config_hash, identity
from tte2tee_fast.generate.sources import open_mask_source, require_schema
from tte2tee_fast.training.plan_tune import (
    EpsFn,
    TeacherConfig,
    Trajectories,
    TuneConfig,
    labels_digest,
    teacher_trajectories,
    tune_plan,
)


def teacher_folder(ident: dict, teacher: TeacherConfig, labels: np.ndarray) -> Path:
    """The cache folder of ``teacher``'s trajectories for the network ``ident`` (its
    :func:`~tte2tee_fast.generate.shards.identity`) and ``labels``: one per what makes them."""
    key = [ident, dataclasses.asdict(teacher) | {"batch_size": None}, labels_digest(labels)]
    return cache_dir() / "teachers" / config_hash(key)[:16]


def plan_outputs(out: str | Path, nfes: tuple[int, ...]) -> list[Path]:
    """Where each NFE's plan goes: ``out`` itself for one NFE and a ``.json`` name, else
    ``out/nfe<K>.json``."""
    out = Path(out)
    if out.suffix == ".json":
        if len(nfes) != 1:
            raise InputError(
                f"--out {out} is one file but {len(nfes)} NFEs were asked: give a folder"
            )
        return [out]
    return [out / f"nfe{k}.json" for k in nfes]


def teacher_set(
    den: Denoiser,
    masks: str,
    pairs: int,
    teacher: TeacherConfig,
    guidance: float = 1.0,
    teacher_dir: str | None = None,
    progress: bool = True,
) -> tuple[EpsFn, Trajectories, dict, str]:
    """The teacher of ``den`` on the first ``pairs`` masks of source ``masks`` (seeded by
    ``teacher.seed``, which also seeds the noise): its network function, its trajectories
    (solved now or read from ``teacher_dir``, default the cache folder keyed by what makes
    them), the network identity it records and the folder."""
    source = open_mask_source(masks, den.size, seed=teacher.seed)
    require_schema(source, den.spec, masks)
    labels = np.stack([source.mask(i)[0] for i in range(pairs)]).astype(np.int64)  # [N, S, S]
    den.spec.check_labels(labels, source=f"masks {masks}")
    ident = identity(den.info) | {"guidance": guidance, "masks": masks}
    folder = str(teacher_dir or teacher_folder(ident, teacher, labels))

    def eps_fn(x: torch.Tensor, t: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        return den(x, t, lab, guidance)

    traj = teacher_trajectories(eps_fn, labels, teacher, folder, ident, progress)
    return eps_fn, traj, ident, folder


def tune_plans(
    out: str | Path,
    nfes: tuple[int, ...],
    model_dir: str | None = None,
    adapter: str | None = "phantom-tee",
    masks: str = "phantom:tee",
    pairs: int = 48,
    train: int = 32,
    teacher_sampler: str = "unipc",
    teacher_steps: int = 200,
    teacher_dir: str | None = None,
    t_max: int = 999,
    sweeps: int = 6,
    init: str | None = None,
    guidance: float = 1.0,
    seed: int = 1000,
    backend: str = "auto",
    precision: str = "auto",
    engine: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> list[tuple[Path, DensePlan]]:
    """Fit one plan per NFE in ``nfes`` and write them (see ``tte2tee tune-plan --help``)."""
    paths = plan_outputs(out, nfes)
    if train >= pairs:
        raise InputError(f"--train {train} must be below --pairs {pairs} (the rest validate)")
    start = None
    if init is not None:
        from tte2tee_fast.diffusion.dense import load_plan

        start = load_plan(init).timesteps
        if len(nfes) != 1 or len(start) != nfes[0]:
            raise InputError(
                f"--init {init} has {len(start)} timesteps: give it with one --nfe {len(start)}"
            )
    tune = [TuneConfig(nfe=k, train=train, sweeps=sweeps, init=start) for k in nfes]
    den = build_denoiser(model_dir, adapter, backend, precision, batch=batch_size, engine=engine)
    teacher = TeacherConfig(teacher_sampler, teacher_steps, "trailing", t_max, seed, batch_size)
    eps_fn, traj, ident, teacher_dir = teacher_set(
        den, masks, pairs, teacher, guidance, teacher_dir, progress
    )
    written = []
    for path, config in zip(paths, tune, strict=True):
        info = {"model": ident, "teacher": {"folder": teacher_dir, **teacher.__dict__}}
        plan = tune_plan(eps_fn, traj, config, batch_size, info, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        plan.save(path)
        written.append((path, plan))
    return written
