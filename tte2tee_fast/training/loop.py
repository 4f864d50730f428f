"""The training loop shared by ``tte2tee train`` (:mod:`tte2tee_fast.training.train`) and
``tte2tee adapt`` (:mod:`tte2tee_fast.adapt.train`): what is trained (:class:`Trainable`), the
in-memory data pool, the pure functions of ``(seed, step)``, the run folder checks and
:func:`fit`, which logs, checkpoints (:mod:`tte2tee_fast.training.checkpoint`) and resumes.

Everything random is a pure function of ``(seed, step)``: the data order (one permutation of
the case pool per epoch), the timesteps, the noise and the label dropout each come from a
``torch.Generator`` seeded from ``(seed, step, stream)``, and the global torch RNG is reseeded
the same way before every step (for dropout layers). So a checkpoint needs no RNG state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tte2tee_fast.diffusion.objective import diffusion_loss, drop_labels
from tte2tee_fast.diffusion.schedule import NoiseSchedule
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import write_text_atomic
from tte2tee_fast.training.checkpoint import load_checkpoint, read_checkpoint_state, save_checkpoint
from tte2tee_fast.training.config import TrainConfig
from tte2tee_fast.training.ema import EMA
from tte2tee_fast.training.trainable import Trainable

PHANTOM_SOURCES = {"phantom-tte": "tte", "phantom-tee": "tee"}
# independent random streams derived from (seed, step)
STREAM_ORDER, STREAM_STEP, STREAM_GLOBAL, STREAM_INIT = 0, 1, 2, 3


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
    from tte2tee_fast.condition.maskr2 import MaskR2Spec, load_spec

    spec = MaskR2Spec.identity(schema) if config.remap is None else load_spec(config.remap)
    if spec.source.name != schema.name:
        raise InputError(
            f"MaskR² spec {spec.name!r} maps schema {spec.source.name!r}, but --data "
            f"{config.data!r} has labels of schema {schema.name!r}"
        )
    return spec


# ---------------------------------------------------------------------------------------
# resuming


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


def truncate_log(log_path: Path, step: int) -> None:
    """Keep the log lines of steps <= ``step`` (those after it are about to be rerun)."""
    if not log_path.is_file():
        return
    kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    write_text_atomic(log_path, "".join(ln + "\n" for ln in kept))


# ---------------------------------------------------------------------------------------
# the run folder and the loop


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
    from tte2tee_fast.condition.maskr2 import remap_one_hot

    model = trainable.module
    ema = EMA(trainable, max_decay=config.ema_decay)
    optimizer = torch.optim.AdamW(
        trainable.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.999)
    )
    start = 0
    seconds = 0.0
    if saved is not None:
        load_checkpoint(out / "checkpoint", trainable, ema, optimizer)
        start, seconds = int(saved["step"]), float(saved.get("seconds", 0.0))
        truncate_log(out / "train_log.jsonl", start)

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
