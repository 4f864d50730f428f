"""Train a SemanticUNet from scratch: resumable bit for bit, fast on a few CPU cores.

Everything random is a pure function of ``(seed, step)``: the data order (one permutation of
the case pool per epoch), the timesteps, the noise and the label dropout each come from a
``torch.Generator`` seeded from ``(seed, step, stream)``, and the global torch RNG is reseeded
the same way before every step (for dropout layers). So a checkpoint needs no RNG state:
weights, EMA and optimizer state plus the step count restore the run exactly, and
``train 20 steps`` equals ``train 10, stop, resume to 20`` bitwise (fp32, CPU).

The loop itself (:func:`fit`) trains a :class:`Trainable`: every parameter here, only the LoRA
weights of a frozen base in :mod:`tte2tee_fast.adapt.train`, which reuses it with the same
seeding, log, checkpoints and resume.

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

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tte2tee_fast.diffusion.objective import PREDICTIONS, WEIGHTINGS, diffusion_loss, drop_labels
from tte2tee_fast.diffusion.schedule import NoiseSchedule
from tte2tee_fast.errors import InputError
from tte2tee_fast.models.ema import EMA

PHANTOM_SOURCES = {"phantom-tte": "tte", "phantom-tee": "tee"}
LR_SCHEDULES = ("constant", "cosine")
# fields that may differ between a run and its resumption (they do not change the numbers)
RESUMABLE_FIELDS = ("steps", "checkpoint_every", "log_every", "num_workers")
# independent random streams derived from (seed, step)
STREAM_ORDER, STREAM_STEP, STREAM_GLOBAL, STREAM_INIT = 0, 1, 2, 3


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
    prediction: str = "eps"  # eps | v (samplers assume eps; see diffusion/objective.py)
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


@dataclass(frozen=True)
class DataPool:
    """The training cases, in memory."""

    images: torch.Tensor  # [N, 1, S, S] float32 in [-1, 1]
    labels: torch.Tensor  # [N, S, S] uint8 label values
    schema: Any  # LabelSchema of the labels

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in (self.images, self.labels):
            h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Trainable:
    """What the loop trains: the network ``module`` (called as ``module(x, t, cond)``) and the
    parameters ``params`` (by name) that the optimizer updates, the EMA averages and the
    checkpoint stores. A model trained from scratch: every parameter (:meth:`whole`); an
    adapter: only the LoRA weights of a frozen base (adapt/train.py).

    It offers the ``named_parameters`` / ``parameters`` / ``state_dict`` that :class:`EMA` and
    :func:`save_checkpoint` read from a module, restricted to ``params``.
    """

    module: torch.nn.Module
    params: dict[str, torch.nn.Parameter]

    @classmethod
    def whole(cls, model: torch.nn.Module) -> Trainable:
        """Every parameter of ``model`` (which must hold no buffers: they are not checkpointed)."""
        if any(True for _ in model.buffers()):
            raise ValueError("Trainable.whole: the model has buffers, which checkpoints skip")
        return cls(model, dict(model.named_parameters()))

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return iter(self.params.items())

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(self.params.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.params.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor], where: str = "state") -> None:
        """Copy ``state`` into ``params``; names and shapes must match exactly."""
        missing = sorted(set(self.params) - set(state))
        extra = sorted(set(state) - set(self.params))
        if missing or extra:
            raise InputError(
                f"{where}: weights do not match the trained parameters (missing {missing[:3]}, "
                f"unexpected {extra[:3]})"
            )
        for name, p in self.params.items():
            if state[name].shape != p.shape:
                raise InputError(
                    f"{where}: {name} has shape {tuple(state[name].shape)}, "
                    f"expected {tuple(p.shape)}"
                )
            p.copy_(state[name])


# ---------------------------------------------------------------------------------------
# pure functions of (seed, step)


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 64-bit seed that depends only on ``(seed, step, stream)``."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)[0])


def _generator(seed: int, step: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, step, stream))


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> torch.Tensor:
    """Pool indices ``[batch_size]`` of step ``step``: epochs are fresh permutations of ``n``."""
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)  # positions in the stream
    epochs, offsets = pos // n, pos % n
    out = torch.empty(batch_size, dtype=torch.long)
    for e in torch.unique(epochs).tolist():
        perm = torch.randperm(n, generator=_generator(seed, e, STREAM_ORDER))
        sel = epochs == e
        out[sel] = perm[offsets[sel]]
    return out


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of step ``step`` (0-based): linear warm-up, then constant or cosine."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    if config.lr_schedule == "constant":
        return config.lr
    span = max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - config.warmup) / span)))


# ---------------------------------------------------------------------------------------
# data


def _views(config: TrainConfig) -> list:
    """Datasets of the pool: the cases as they are, then ``augment`` augmented copies."""
    from tte2tee_fast.data import dataset as ds
    from tte2tee_fast.data.augment import AugmentConfig

    augs = [None] + [AugmentConfig()] * config.augment  # view j is augmented with epoch j
    if config.data in PHANTOM_SOURCES:
        modality = PHANTOM_SOURCES[config.data]
        n, size, seed = config.num_cases, config.size, config.seed
        return [
            ds.PhantomDataset(modality, n, size, seed, augment=aug, epoch=j)
            for j, aug in enumerate(augs)
        ]
    if not Path(config.data).is_dir():
        raise InputError(
            f"--data {config.data!r} is neither {' nor '.join(PHANTOM_SOURCES)} nor a folder"
        )
    source = ds.open_source(config.data, "auto", config.schema)
    return [
        ds.PairDataset(source, config.size, augment=aug, seed=config.seed, epoch=j)
        for j, aug in enumerate(augs)
    ]


def build_pool(config: TrainConfig, progress: bool = True) -> DataPool:
    """Load or generate every training case once (deterministic, whatever ``num_workers``).

    With ``config.augment = k`` the pool holds each case plus ``k`` augmented copies (the
    semantic echo work's random affine + elastic deformation, data/augment.py), so ``k + 1``
    times the cases; the semantic echo work used 5 augmentations per mask.
    """
    views = _views(config)
    dataset = torch.utils.data.ConcatDataset(views)
    if len(dataset) == 0:
        raise InputError(f"--data {config.data!r} holds no training cases")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=32, shuffle=False, num_workers=config.num_workers
    )
    images, labels = [], []
    bar = tqdm(loader, desc="data pool", unit="batch", disable=None if progress else True)
    for img, lab in bar:
        images.append(img.float())
        labels.append(lab)
    img = torch.cat(images)  # [N, 1, S, S]
    lab = torch.cat(labels)  # [N, S, S]
    if img.shape[1:] != (1, config.size, config.size) or lab.shape[1:] != img.shape[2:]:
        raise InputError(
            f"--data {config.data!r} gives images {tuple(img.shape[1:])} and labels "
            f"{tuple(lab.shape[1:])}; expected [1, {config.size}, {config.size}] and "
            f"[{config.size}, {config.size}]"
        )
    if int(lab.min()) < 0 or int(lab.max()) > 255:
        raise InputError(f"--data {config.data!r}: label values must lie in 0..255")
    return DataPool(img.contiguous(), lab.to(torch.uint8).contiguous(), views[0].schema)


def conditioning_spec(config: TrainConfig, schema):
    """The MaskR² spec from the data's labels to the model's channels."""
    from tte2tee_fast.adapt.maskr2 import MaskR2Spec, load_spec

    spec = MaskR2Spec.identity(schema) if config.remap is None else load_spec(config.remap)
    if spec.source.name != schema.name:
        raise InputError(
            f"MaskR² spec {spec.name!r} maps schema {spec.source.name!r}, but --data "
            f"{config.data!r} has labels of schema {schema.name!r}"
        )
    return spec


# ---------------------------------------------------------------------------------------
# checkpoints (safetensors + JSON, no pickles)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors tensors and a JSON-able index."""
    tensors: dict[str, torch.Tensor] = {}
    index: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, pstate in state["state"].items():
        entry = {}
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value.detach().to("cpu").contiguous().clone()
                entry[name] = {"tensor": f"{pid}.{name}"}
            else:
                entry[name] = {"value": value}
        index["state"][str(pid)] = entry
    return tensors, index


def optimizer_from_flat(tensors: dict[str, torch.Tensor], index: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_flat`."""
    groups = []
    for g in index["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    state = {
        int(pid): {
            name: tensors[v["tensor"]] if "tensor" in v else v["value"] for name, v in entry.items()
        }
        for pid, entry in index["state"].items()
    }
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    out_dir: Path,
    model: torch.nn.Module | Trainable,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Write ``out_dir/checkpoint`` atomically (a temporary folder renamed when complete).

    ``model.safetensors`` holds ``model.state_dict()``: every weight of a model, or only the
    trained tensors of a :class:`Trainable` (the LoRA weights of an adapter run).
    """
    dest = out_dir / "checkpoint"
    tmp = out_dir / f".checkpoint.tmp-{uuid.uuid4().hex[:8]}"
    old = out_dir / f".checkpoint.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        save_file(_tensors(model.state_dict()), str(tmp / "model.safetensors"))
        save_file(_tensors(ema.state_dict()), str(tmp / "ema.safetensors"))
        opt_tensors, opt_index = optimizer_to_flat(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "optimizer.json", opt_index)
        write_json(tmp / "state.json", state)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return dest


def read_checkpoint_state(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``checkpoint/state.json`` of a training folder, or None when it has no checkpoint."""
    path = Path(out_dir) / "checkpoint" / "state.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON (corrupt checkpoint?): {err}") from None


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


def _load_checkpoint(
    ckpt: Path, trainable: Trainable, ema: EMA, optimizer: torch.optim.Optimizer
) -> None:
    try:
        trainable.load_state_dict(load_file(str(ckpt / "model.safetensors")), where=str(ckpt))
        ema.load_state_dict(load_file(str(ckpt / "ema.safetensors")))
        index = json.loads((ckpt / "optimizer.json").read_text())
        tensors = load_file(str(ckpt / "optimizer.safetensors"))
        optimizer.load_state_dict(optimizer_from_flat(tensors, index))
    except InputError:
        raise
    except Exception as err:  # missing file, truncated safetensors, shape mismatch...
        raise InputError(f"checkpoint {ckpt} cannot be restored: {err}") from None


def _check_resumable(saved: dict[str, Any], config: TrainConfig, ckpt: Path) -> None:
    now = config.to_json()
    differ = [
        f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}"
        for k in now
        if k not in config.RESUMABLE and saved.get(k) != now[k]
    ]
    if differ:
        raise InputError(
            f"cannot resume {ckpt}: options differ from the checkpoint ({'; '.join(differ)}); "
            f"only {', '.join(config.RESUMABLE)} may change"
        )


def _truncate_log(log_path: Path, step: int) -> None:
    """Keep the log lines of steps <= ``step`` (those after it are about to be rerun)."""
    if not log_path.is_file():
        return
    kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    tmp = log_path.with_name(f".{log_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text("".join(ln + "\n" for ln in kept))
    os.replace(tmp, log_path)


# ---------------------------------------------------------------------------------------
# the run folder and the loop, shared by train() and adapt() (adapt/train.py)

TRAIN_OUTPUTS = ("model", "ema", "train_config.json", "train_log.jsonl")


def open_run(out: Path, resume: bool, outputs: tuple[str, ...]) -> dict[str, Any] | None:
    """Check run folder ``out``; returns its checkpoint state (None for a new run).

    ``resume=False`` refuses a folder that holds a checkpoint or any of ``outputs``;
    ``resume=True`` needs a checkpoint there.
    """
    saved = read_checkpoint_state(out)
    if resume and saved is None:
        raise InputError(f"cannot resume: {out} has no checkpoint (checkpoint/state.json)")
    if not resume:
        if saved is not None:
            raise InputError(
                f"{out} already holds a training checkpoint: pass --resume to continue it, "
                "or choose another --out"
            )
        taken = [n for n in outputs if (out / n).exists()]
        if taken:
            raise InputError(
                f"{out} already holds a training run ({', '.join(taken)}); choose another --out"
            )
    return saved


def check_resumable(saved: dict[str, Any] | None, config: TrainConfig, out: Path) -> None:
    """Refuse to resume checkpoint state ``saved`` with options that change the numbers."""
    if saved is not None:
        _check_resumable(saved["config"], config, out / "checkpoint")


def load_data(config: TrainConfig, saved: dict[str, Any] | None, out: Path, progress: bool):
    """The data pool, its MaskR² spec and fingerprint; refuses data changed since ``saved``."""
    pool = build_pool(config, progress)
    spec = conditioning_spec(config, pool.schema)
    fingerprint = pool.fingerprint()
    if saved is not None and saved.get("data_sha256") != fingerprint:
        raise InputError(
            f"cannot resume {out / 'checkpoint'}: the training data of --data {config.data!r} "
            "changed since the checkpoint was written"
        )
    return pool, spec, fingerprint


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    ema: EMA  # the EMA of the trained parameters
    losses: list[float]  # one per step run by this call
    start_step: int


def _batches(pool: DataPool, config: TrainConfig, start: int) -> Iterator[tuple[int, Any]]:
    for step in range(start, config.steps):
        idx = batch_indices(config.seed, step, config.batch_size, pool.images.shape[0])
        yield step, (pool.images[idx], pool.labels[idx])


def fit(
    config: TrainConfig,
    trainable: Trainable,
    out: Path,
    pool: DataPool,
    spec: Any,
    saved: dict[str, Any] | None,
    run_state: dict[str, Any],
    device: torch.device,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
    """The training loop: optimise ``trainable.params`` from step 0, or from checkpoint
    ``saved`` (restored here), to ``config.steps``; log to ``out/train_log.jsonl`` and write
    ``out/checkpoint`` every ``config.checkpoint_every`` steps and at the end.

    ``run_state`` (JSON) is added to every checkpoint's ``state.json`` beside the step, the
    config and the elapsed seconds (e.g. the data fingerprint, the base model hash).
    """
    from tte2tee_fast.adapt.maskr2 import remap_one_hot

    model = trainable.module
    ema = EMA(trainable, max_decay=config.ema_decay)
    optimizer = torch.optim.AdamW(
        trainable.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.999)
    )
    start = 0
    seconds = 0.0
    if saved is not None:
        _load_checkpoint(out / "checkpoint", trainable, ema, optimizer)
        start, seconds = int(saved["step"]), float(saved.get("seconds", 0.0))
        _truncate_log(out / "train_log.jsonl", start)

    schedule = NoiseSchedule.cosine(1000)
    T = schedule.num_train_timesteps
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if config.bf16
        else contextlib.nullcontext()
    )

    def model_fn(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        with autocast:
            return model(x, t, cond)

    def state(step: int, elapsed: float) -> dict[str, Any]:
        return {
            "step": step,
            "seconds": elapsed,
            "config": config.to_json(),
            **run_state,
            "torch": torch.__version__,
        }

    losses: list[float] = []
    window: list[torch.Tensor] = []  # losses since the last log line (synced only when logging)
    t0, t_log = time.perf_counter(), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "train_log.jsonl").open("a")
    bar = tqdm(
        total=config.steps,
        initial=start,
        unit="step",
        desc=desc,
        disable=None if progress else True,
    )
    try:
        for step, (x0, labels) in _batches(pool, config, start):
            # everything random in this step comes from (seed, step)
            torch.manual_seed(step_seed(config.seed, step, STREAM_GLOBAL))
            gen = _generator(config.seed, step, STREAM_STEP)
            t = torch.randint(0, T, (x0.shape[0],), generator=gen)  # [B]
            noise = torch.randn(x0.shape, generator=gen)  # [B, 1, S, S]
            cond = remap_one_hot(labels, spec)  # [B, C, S, S]
            cond = drop_labels(cond, config.label_dropout, gen)
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # one optimisation step
            loss = diffusion_loss(
                model_fn,
                x0.to(device),
                cond.to(device),
                schedule,
                t.to(device),
                noise.to(device),
                prediction=config.prediction,
                weighting=config.weighting,
                gamma=config.snr_gamma,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable.parameters(), config.grad_clip)
            optimizer.step()
            ema.update(trainable)
            window.append(loss.detach())
            bar.update(1)
            done = step + 1
            # log (also at every checkpoint, so a resumed log loses no step), checkpoint
            at_checkpoint = done % config.checkpoint_every == 0 or done == config.steps
            if done % config.log_every == 0 or at_checkpoint:
                values = torch.stack(window).tolist()
                losses.extend(values)
                mean = math.fsum(values) / len(values)
                if not math.isfinite(mean):
                    raise InputError(
                        f"the loss became non-finite by step {done}: lower --lr, or try --no-bf16"
                    )
                now = time.perf_counter()
                rate = len(window) / max(now - t_log, 1e-9)
                log.write(
                    json.dumps(
                        {
                            "step": done,
                            "loss": mean,
                            "lr": lr,
                            "seconds": round(seconds + now - t0, 3),
                            "steps_per_s": round(rate, 4),
                        }
                    )
                    + "\n"
                )
                log.flush()
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
                window, t_log = [], now
            if at_checkpoint:
                save_checkpoint(
                    out, trainable, ema, optimizer, state(done, seconds + time.perf_counter() - t0)
                )
    finally:
        bar.close()
        log.close()
    return FitResult(ema=ema, losses=losses, start_step=start)


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
            config.preset, sample_size=config.size, label_channels=spec.num_channels
        )
    model.to(device).train()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "train_config.json", config.to_json())
    write_json(out / "maskr2.json", spec.to_json())
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
