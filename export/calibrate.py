"""Calibration data for int8 engines: the U-Net inputs of real sampling runs.

Post-training quantization picks its int8 ranges from example activations, so the examples
must be what the engine sees in use: the noisy samples at EVERY timestep of a sampling run
(early steps are almost pure noise, late ones almost clean images: their ranges differ), with
the conditioning label maps of the engine's schema. :func:`record_calibration` runs the torch
sampler (counter-based noise, clamped clean-image estimates as ``tte2tee sample`` does) over
phantom masks of the spec's source schema and records each network call's
``(sample [1,1,H,W], timestep [1], labels [1,H,W])`` row; ``n`` rows are then taken evenly
across all recorded calls, so frames and timesteps are both spread. Deterministic from the seed.

The file is an ``.npz`` with ``sample`` float32 ``[N,1,H,W]``, ``timestep`` int64 ``[N]``,
``labels`` int64 ``[N,H,W]`` (the engine's raw label values) and ``meta`` (a JSON string).

Example::

    data = record_calibration(model, spec, CalibConfig(n=200, steps=10))
    save_calibration("runs/calib.npz", data)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import staged_file

KEYS = ("sample", "timestep", "labels")


@dataclass(frozen=True)
class CalibConfig:
    """How calibration inputs are recorded: ``n`` rows from ``sampler`` runs of ``steps`` steps
    over phantom masks (seeds ``seed, seed + 1, ...``), ``batch`` frames per run."""

    n: int = 200
    steps: int = 10
    sampler: str = "ddim"
    seed: int = 0
    batch: int = 8

    def __post_init__(self) -> None:
        if self.n < 1 or self.steps < 1 or self.batch < 1:
            raise InputError(
                f"calibration needs n, steps and batch >= 1, got {self.n}, {self.steps}, "
                f"{self.batch}"
            )


def phantom_labels(schema: str, size: int, count: int, seed: int) -> np.ndarray:
    """``[count, size, size]`` int64 phantom label maps of ``schema`` (``tte`` / ``tee``)."""
    from tte2tee_fast.data.phantom import MIN_SIZE, phantom_case

    if schema not in ("tte", "tee"):
        raise InputError(f"no phantom generator for schema {schema!r}: use tte or tee masks")
    big = max(size, MIN_SIZE)  # drawn at the phantom's smallest size, then nearest-resized
    pick = ((np.arange(size) + 0.5) * big / size).astype(np.int64)  # [size]
    masks = [phantom_case(schema, size=big, seed=seed + i).mask for i in range(count)]
    return np.stack([m[np.ix_(pick, pick)] for m in masks]).astype(np.int64)


def record_calibration(model: Any, spec: Any, config: CalibConfig = CalibConfig()) -> dict:
    """Record ``config.n`` U-Net input rows of real sampling runs of ``model`` (torch, fp32)
    on phantom masks of ``spec``'s source schema; see the module docstring."""
    import torch

    from tte2tee_fast.condition.maskr2 import remap_one_hot
    from tte2tee_fast.diffusion import NoiseSchedule, NoiseSource, cfg_eps_fn, get_sampler
    from tte2tee_fast.diffusion.clip import clip_denoised

    size = int(model.config.sample_size)
    frames = math.ceil(config.n / config.steps)  # a run gives >= steps calls per frame
    labels = phantom_labels(spec.source.name, size, frames, config.seed)  # [F, H, W]
    schedule = NoiseSchedule.cosine(1000)
    timesteps = schedule.timesteps(config.steps, "trailing")
    sampler = get_sampler(config.sampler)
    xs, ts, ls = [], [], []
    model = model.eval()
    for start in range(0, frames, config.batch):
        lab = torch.from_numpy(labels[start : start + config.batch])  # [b, H, W]
        idx = list(range(start, start + lab.shape[0]))
        cond = remap_one_hot(lab, spec)  # [b, C, H, W]

        def model_fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, lab=lab) -> torch.Tensor:
            xs.append(x.detach().float().numpy().copy())  # [b, 1, H, W]
            ts.append(t.detach().long().numpy().copy())  # [b]
            ls.append(lab.numpy())  # [b, H, W]
            return model(x, t, c).float()

        noise = NoiseSource(config.seed, idx)
        x = noise.initial((1, size, size))  # [b, 1, H, W]
        eps_fn = clip_denoised(cfg_eps_fn(model_fn, cond, 1.0), schedule)
        with torch.no_grad():
            sampler(eps_fn, x, schedule, timesteps, noise=noise)
    sample = np.concatenate(xs)  # [calls * b, 1, H, W]
    timestep = np.concatenate(ts)
    label_rows = np.concatenate(ls)
    pick = np.unique(np.linspace(0, len(sample) - 1, config.n).round().astype(np.int64))
    meta = {
        **asdict(config),
        "spec": spec.name,
        "schema": spec.source.name,
        "recorded": len(sample),
    }
    return {
        "sample": np.ascontiguousarray(sample[pick], np.float32),
        "timestep": np.ascontiguousarray(timestep[pick], np.int64),
        "labels": np.ascontiguousarray(label_rows[pick], np.int64),
        "meta": meta,
    }


def save_calibration(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` (see :func:`record_calibration`) as an ``.npz`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                **{k: data[k] for k in KEYS},
                meta=np.array(json.dumps(data.get("meta", {}))),
            )
    return path


def load_calibration(path: str | os.PathLike) -> dict:
    """Read and check a calibration ``.npz`` (keys, dtypes, matching row counts and shapes)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"calibration file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as e:  # zipfile / ValueError for foreign files
        raise InputError(f"{path} is not a readable .npz file: {e}") from None
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise InputError(f"calibration file {path} lacks {missing}")
    s, t, lab = data["sample"], data["timestep"], data["labels"]
    if s.dtype != np.float32 or s.ndim != 4 or s.shape[1] != 1:
        raise InputError(f"{path}: sample must be float32 [N, 1, H, W], got {s.dtype} {s.shape}")
    if t.dtype != np.int64 or t.shape != (len(s),):
        raise InputError(f"{path}: timestep must be int64 [{len(s)}], got {t.dtype} {t.shape}")
    if lab.dtype != np.int64 or lab.shape != (len(s), *s.shape[2:]):
        raise InputError(
            f"{path}: labels must be int64 [{len(s)}, {s.shape[2]}, {s.shape[3]}], "
            f"got {lab.dtype} {lab.shape}"
        )
    meta = json.loads(str(data["meta"])) if "meta" in data else {}
    return {"sample": s, "timestep": t, "labels": lab, "meta": meta}


def calibration_batches(data: dict, batch: int) -> list[dict[str, np.ndarray]]:
    """Feeds ``{sample, timestep, labels}`` of ``batch`` rows each (the last batch is dropped
    when short, so a fixed-batch engine accepts every feed)."""
    n = len(data["sample"]) // batch
    if n == 0:
        raise InputError(
            f"{len(data['sample'])} calibration rows are fewer than the engine's batch {batch}"
        )
    return [{k: data[k][i * batch : (i + 1) * batch] for k in KEYS} for i in range(n)]
