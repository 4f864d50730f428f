"""Train a SemanticUNet from scratch: resumable bit for bit, fast on a few CPU cores.

Everything random is a pure function of ``(seed, step)``: the data order (one permutation of
the case pool per epoch), the timesteps, the noise and the label dropout each come from a
``torch.Generator`` seeded from ``(seed, step, stream)``, and the global torch RNG is reseeded
the same way before every step (for dropout layers). So a checkpoint needs no RNG state:
weights, EMA and optimizer state plus the step count restore the run exactly, and
``train 20 steps`` equals ``train 10, stop, resume to 20`` bitwise (fp32, CPU).

The loop itself (:func:`tte2tee_fast.training.loop.fit`) trains a
:class:`~tte2tee_fast.training.loop.Trainable`: every parameter here, only the LoRA weights of a
frozen base in :mod:`tte2tee_fast.adapt.train`, which reuses it with the same seeding, log,
checkpoints and resume.

The data are generated once into an in-memory pool (phantom cases on the fly, or every pair
of a folder) so that the training steps keep every core on the network, not on data.

Output folder::

    train_config.json   the TrainConfig (JSON)
    maskr2.json         the conditioning spec (data schema -> model channels)
    train_log.jsonl     one line per log interval: step, loss, lr, seconds, steps_per_s
    checkpoint/         model.safetensors, ema.safetensors, optimizer.safetensors,
                        optimizer.json, state.json (step, config, data fingerprint)
    model/              the raw weights (save_model folder)
    ema/                the EMA weights (save_model folder): the one to sample with
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import write_json_atomic
from tte2tee_fast.training.checkpoint import read_checkpoint_state
from tte2tee_fast.training.config import TrainConfig
from tte2tee_fast.training.loop import (
    STREAM_INIT,
    Trainable,
    check_resumable,
    fit,
    load_data,
    open_run,
    step_seed,
)

TRAIN_OUTPUTS = ("model", "ema", "train_config.json", "train_log.jsonl")


@dataclass
class TrainResult:
    """What :func:`train` returns: the final raw model and its EMA, and this call's losses."""

    model: torch.nn.Module  # raw weights, as written to out/model
    ema_model: torch.nn.Module  # EMA weights, as written to out/ema
    losses: list[float]  # one per step run by this call (steps start_step .. steps-1)
    start_step: int
    step: int
    out_dir: Path


def resume_config(
    out_dir: str | os.PathLike, cls: type[TrainConfig] = TrainConfig, **overrides: Any
) -> TrainConfig:
    """The config saved in ``out_dir``'s checkpoint with ``overrides`` applied (for ``--resume``).

    ``cls`` is the config class of the run (:class:`TrainConfig`, or ``AdaptConfig``).
    """
    saved = read_checkpoint_state(out_dir)
    if saved is None:
        raise InputError(f"cannot resume: {out_dir} has no checkpoint (checkpoint/state.json)")
    config = cls.from_json(saved["config"], source=f"{out_dir}/checkpoint/state.json")
    return dataclasses.replace(config, **overrides)


def load_init(model: torch.nn.Module, init: str) -> None:
    """Copy the weights of model folder (or packaged name) ``init`` into ``model`` (fine-tuning).

    The architecture must match (same preset, size and label channels); the output
    parameterization may differ: an eps-model is a good start for a v-model, whose output
    layer predicts ``v``, equal to eps at low noise (``alpha ~ 1``).
    """
    from tte2tee_fast.models import load_model
    from tte2tee_fast.packaged import resolve_model_path

    src = load_model(resolve_model_path(init))
    ours = {k: v for k, v in model.config.items() if k != "prediction_type"}
    theirs = {k: src.config.get(k) for k in ours}
    diff = sorted(k for k in ours if _norm(ours[k]) != _norm(theirs[k]))
    if diff:
        raise InputError(
            f"--init {init}: its architecture differs from this run's in "
            + ", ".join(f"{k} ({_norm(theirs[k])} vs {_norm(ours[k])})" for k in diff)
        )
    model.load_state_dict(src.state_dict())


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) a run into ``out_dir``; returns the final models and this call's losses.

    ``resume=False`` refuses a folder that already holds a run; ``resume=True`` needs a
    checkpoint there and continues from it exactly (only :data:`RESUMABLE_FIELDS` may differ).
    """
    from tte2tee_fast.models import from_preset, save_model

    out = Path(out_dir)
    saved = open_run(out, resume, TRAIN_OUTPUTS)
    check_resumable(saved, config, out)
    device = torch.device(device)

    # data and conditioning
    pool, spec, fingerprint = load_data(config, saved, out, progress)

    # model (initialisation is a pure function of the seed); the loop restores a checkpoint
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(step_seed(config.seed, 0, STREAM_INIT))
        model = from_preset(
            config.preset,
            sample_size=config.size,
            label_channels=spec.num_channels,
            prediction_type=config.prediction,
        )
    if config.init is not None and saved is None:
        load_init(model, config.init)
    model.to(device).train()
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "train_config.json", config.to_json())
    write_json_atomic(out / "maskr2.json", spec.to_json())
    trainable = Trainable.whole(model)
    result = fit(
        config, trainable, out, pool, spec, saved, {"data_sha256": fingerprint}, device, progress
    )

    # final weights: raw and EMA, as model folders
    model.eval()
    ema_model = copy.deepcopy(model)
    result.ema.copy_to(ema_model)
    save_model(model, out / "model")
    save_model(ema_model, out / "ema")
    return TrainResult(
        model=model,
        ema_model=ema_model,
        losses=result.losses,
        start_step=result.start_step,
        step=max(result.start_step, config.steps),
        out_dir=out,
    )
