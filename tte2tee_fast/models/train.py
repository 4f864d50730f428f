"""Train a SemanticUNet from scratch: resumable bit for bit, fast on a few CPU cores.

Everything random is a pure function of ``(seed, step)``: the data order (one permutation of
the case pool per epoch), the timesteps, the noise and the label dropout each come from a
``torch.Generator`` seeded from ``(seed, step, stream)``, and the global torch RNG is reseeded
the same way before every step (for dropout layers). So a checkpoint needs no RNG state:
weights, EMA and optimizer state plus the step count restore the run exactly, and
``train 20 steps`` equals ``train 10, stop, resume to 20`` bitwise (fp32, CPU).

The loop itself (:func:`tte2tee_fast.models.loop.fit`) trains a
:class:`~tte2tee_fast.models.loop.Trainable`: every parameter here, only the LoRA weights of a
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
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from tte2tee_fast.diffusion.objective import PREDICTIONS, WEIGHTINGS
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import write_json_atomic
from tte2tee_fast.models.checkpoint import read_checkpoint_state
from tte2tee_fast.models.loop import (
    STREAM_INIT,
    Trainable,
    check_resumable,
    fit,
    load_data,
    open_run,
    step_seed,
)

LR_SCHEDULES = ("constant", "cosine")
# fields that may differ between a run and its resumption (they do not change the numbers)
RESUMABLE_FIELDS = ("steps", "checkpoint_every", "log_every", "num_workers")
TRAIN_OUTPUTS = ("model", "ema", "train_config.json", "train_log.jsonl")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as ``train_config.json``."""

    data: str = "phantom-tte"  # phantom-tte | phantom-tee | a folder of image/mask pairs
    preset: str = "tiny"  # micro | tiny | sdm256
    size: int = 128  # training resolution (square); the model's sample_size
    num_cases: int = 2000  # phantom pool size (a folder uses every pair it holds)
    schema: str | None = None  # label schema of a folder without card.json (tte, tee, camus)
    augment: int = 0  # augmented copies of every case added to the pool (affine + elastic)
    remap: str | None = None  # MaskR² spec (file or built-in name); None: identity on the data
    steps: int = 10000
    batch_size: int = 16
    lr: float = 5e-4
    lr_schedule: str = "constant"  # after warm-up: constant | cosine (decays to 0 at `steps`)
    warmup: int = 200  # linear LR warm-up steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # max EMA decay; warm-up (1 + n) / (10 + n), see models/ema.py
    prediction: str = "eps"  # eps | v: the model's output layer (its forward returns eps anyway)
    init: str | None = None  # model folder or packaged name whose weights start the run
    weighting: str = "min_snr"  # min_snr | none
    snr_gamma: float = 5.0
    label_dropout: float = 0.1  # probability of the null label, for classifier-free guidance
    bf16: bool = True  # bf16 autocast for the network (parameters and loss stay fp32)
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    num_workers: int = 0  # worker processes that build the data pool

    # fields that may differ between a run and its resumption
    RESUMABLE: ClassVar[tuple[str, ...]] = RESUMABLE_FIELDS
    # fields that must be >= 1 (a subclass may fill some of them later, see adapt/train.py)
    POSITIVE: ClassVar[tuple[str, ...]] = (
        "size",
        "num_cases",
        "steps",
        "batch_size",
        "checkpoint_every",
        "log_every",
    )

    def __post_init__(self) -> None:
        for name in self.POSITIVE:
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.warmup, self.num_workers, self.seed, self.augment) < 0:
            raise InputError("warmup, num_workers, seed and augment must be >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be a positive number, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"lr_schedule {self.lr_schedule!r}: choose one of {LR_SCHEDULES}")
        if self.prediction not in PREDICTIONS or self.weighting not in WEIGHTINGS:
            raise InputError(
                f"prediction must be one of {PREDICTIONS} and weighting one of {WEIGHTINGS}"
            )
        if not 0.0 <= self.label_dropout <= 1.0:
            raise InputError(f"label_dropout must be in [0, 1], got {self.label_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise InputError(f"{source}: unknown training options {unknown}")
        return cls(**data)


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
