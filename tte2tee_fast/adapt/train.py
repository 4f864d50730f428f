"""Adaptation training: a LoRA adapter on a frozen base model (arXiv 2508.13077).

The loop is the one of :mod:`tte2tee_fast.training.loop` (:func:`~tte2tee_fast.training.loop.fit`):
same in-memory data pool, same ``(seed, step)`` seeding, log, checkpoints and exact resume. Only
what is trained differs: the base model is loaded and frozen, its hash is recorded *before* LoRA
is added (``models.model_hash``), peft LoRA layers are added on the chosen target preset
(:mod:`tte2tee_fast.adapt.targets`), and the optimizer, the EMA and the checkpoints hold only the
LoRA weights. After training the base weights are compared bit for bit with a copy taken before
training (a host copy of the base: twice the base's size in host memory while adapting); any
difference stops the run with a RuntimeError.

Defaults follow the paper's small-data regime: TEE phantom masks remapped by MaskR² ``tee->tte``
(RA+RV onto the free LV-epicardium channel), ``num_cases = 20`` cases and ``augment = 8``
augmented copies of each (random affine + elastic, data/augment.py): 20 x (1 + 8) = 180 frames,
under the paper's 200 real frames from at most 20 cases. Labels are dropped to the null label
with probability ``label_dropout`` (0.1) so classifier-free guidance keeps working.

Output folder (``--out``): it *is* the adapter folder, plus the run's files::

    adapter_config.json, adapter_model.safetensors, tte2tee.json
                        the adapter (adapt/adapter.py): the EMA of the LoRA weights
    adapt_config.json   the AdaptConfig
    train_log.jsonl     the loop's log (step, loss, lr, seconds, steps_per_s)
    checkpoint/         the raw LoRA weights (model.safetensors), their EMA, the optimizer,
                        state.json (step, config, data fingerprint, base model hash)

:func:`ablate` trains every target preset with the same budget (steps, data, seed: every step
sees the same batch, timesteps and noise whatever the preset) and tabulates trainable
parameters, training time and final loss.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from tte2tee_fast.adapt.adapter import CONFIG_NAME, META_NAME, WEIGHTS_NAME, save_adapter
from tte2tee_fast.adapt.targets import TARGET_PRESETS, count_lora_parameters, lora_config
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import write_json_atomic, write_text_atomic
from tte2tee_fast.training.checkpoint import read_checkpoint_state
from tte2tee_fast.training.config import RESUMABLE_FIELDS, TrainConfig
from tte2tee_fast.training.loop import (
    STREAM_INIT,
    Trainable,
    check_resumable,
    fit,
    load_data,
    open_run,
    step_seed,
)

CONFIG_FILE = "adapt_config.json"
LOG_FILE = "train_log.jsonl"
ADAPT_OUTPUTS = (CONFIG_NAME, WEIGHTS_NAME, META_NAME, CONFIG_FILE, LOG_FILE)
RUN_KIND = "adapt"  # state.json "kind": refuses to resume a checkpoint of `tte2tee train`
ABLATION_JSON, ABLATION_MD = "ablation.json", "ablation.md"


@dataclass(frozen=True)
class AdaptConfig(TrainConfig):
    """A :class:`TrainConfig` with adaptation defaults and the LoRA options; saved as
    ``adapt_config.json``. ``preset`` is unused (the base fixes the architecture) and ``size``
    0 means the base's ``sample_size`` (:func:`adapt` fills it in)."""

    # data: the paper's small-data regime, 20 cases x (1 + 8 augmented copies) = 180 frames
    data: str = "phantom-tee"
    remap: str | None = "tee->tte"
    num_cases: int = 20
    augment: int = 8
    size: int = 0
    preset: str = "base"
    # loop
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 50
    checkpoint_every: int = 250
    # adapter
    base: str | None = None  # base model folder; None: the packaged weights
    targets: str = "mlp"  # LoRA target preset: mlp | attn | conv | spade | all
    rank: int = 1
    alpha: float | None = None  # None: alpha = rank (LoRA scale 1)
    lora_dropout: float = 0.0

    POSITIVE: ClassVar[tuple[str, ...]] = tuple(n for n in TrainConfig.POSITIVE if n != "size")
    # the base may move (its weight hash is what a resumption checks)
    RESUMABLE: ClassVar[tuple[str, ...]] = (*RESUMABLE_FIELDS, "base")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.size < 0:
            raise InputError(f"size must be >= 0 (0: the base's sample_size), got {self.size}")
        if self.init is not None:
            raise InputError("init is a training option; an adapter starts from its --base")
        if self.targets not in TARGET_PRESETS:
            raise InputError(
                f"unknown LoRA target preset {self.targets!r}; choose one of {TARGET_PRESETS}"
            )
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise InputError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise InputError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise InputError(f"LoRA dropout must be in [0, 1), got {self.lora_dropout!r}")


@dataclass
class AdaptResult:
    """What :func:`adapt` returns."""

    model: nn.Module  # the base with LoRA layers holding the written (EMA) adapter weights
    losses: list[float]  # one per step run by this call
    start_step: int
    step: int
    out_dir: Path  # the adapter folder
    base_hash: str  # models.model_hash of the base, taken before LoRA was added
    trainable_parameters: int
    base_parameters: int
    frames: int  # training frames in the data pool


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base weights of ``model`` under their names before LoRA was added."""
    return {
        k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k
    }


def check_base_unchanged(model: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    """Raise RuntimeError unless ``model``'s base weights equal ``reference`` bit for bit."""
    now = base_state(model)
    if now.keys() != reference.keys():
        raise RuntimeError("adaptation changed the base model's tensor names: a bug")
    changed = [k for k in reference if not torch.equal(now[k].detach().cpu(), reference[k])]
    if changed:
        raise RuntimeError(
            f"adaptation changed {len(changed)} base weights (first: {changed[0]}): the base "
            "must stay frozen; the adapter was not written"
        )


def add_lora(base: nn.Module, config: AdaptConfig) -> Trainable:
    """Freeze ``base`` and add peft LoRA layers (in place); the LoRA weights are the trainable
    parameters. The LoRA initialisation is a pure function of ``config.seed``."""
    base.requires_grad_(False)
    cfg = lora_config(base, config.targets, config.rank, config.alpha, config.lora_dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(step_seed(config.seed, 0, STREAM_INIT))
        base.add_adapter(cfg)
    params = {n: p for n, p in base.named_parameters() if "lora_" in n}
    for p in params.values():
        p.requires_grad_(True)
    thawed = [n for n, p in base.named_parameters() if p.requires_grad and n not in params]
    if thawed or not params:
        raise RuntimeError(f"LoRA setup left base weights trainable ({thawed[:3]}): a bug")
    return Trainable(base, params)


def bind_base(config: AdaptConfig, base: nn.Module) -> AdaptConfig:
    """``config`` with ``size`` set to the base's sample_size (refuses another size) and
    ``prediction`` to the base's output parameterization (the space the loss is measured in)."""
    sample_size = int(base.config.sample_size)
    if config.size not in (0, sample_size):
        raise InputError(
            f"size {config.size} differs from the base model's sample_size {sample_size}"
        )
    prediction = str(base.config.get("prediction_type", "eps"))
    return dataclasses.replace(config, size=sample_size, prediction=prediction)


def write_adapter(model: nn.Module, base_hash: str, spec: Any, preset: str, out: Path) -> None:
    """Write the adapter files into run folder ``out``: staged in a temporary folder, then
    moved in with ``tte2tee.json`` last, so a crash leaves an incomplete (refused) adapter,
    never a mixed one."""
    tmp = out / f".adapter.tmp-{uuid.uuid4().hex[:8]}"
    try:
        save_adapter(model, base_hash, spec, preset, tmp)
        (out / META_NAME).unlink(missing_ok=True)
        for name in (CONFIG_NAME, WEIGHTS_NAME, META_NAME):
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def adapt(
    config: AdaptConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> AdaptResult:
    """Train (or resume) a LoRA adapter of ``config.base`` into folder ``out_dir``.

    ``resume=False`` refuses a folder that already holds a run; ``resume=True`` needs a
    checkpoint there and continues it exactly (same base weights, data and options; only
    ``steps``, ``checkpoint_every``, ``log_every``, ``num_workers`` and the base's path may
    change). ``report`` receives one line with the parameter counts before training.
    """
    from tte2tee_fast.models import load_model, model_hash
    from tte2tee_fast.packaged import resolve_model_path

    out = Path(out_dir)
    saved = open_run(out, resume, ADAPT_OUTPUTS)
    if saved is not None and saved.get("kind") != RUN_KIND:
        raise InputError(f"cannot resume {out}: its checkpoint is not an adaptation run")
    base = load_model(resolve_model_path(config.base))
    config = bind_base(config, base)
    check_resumable(saved, config, out)
    base_hash = model_hash(base)  # before LoRA: what the adapter records
    if saved is not None and saved.get("base_model_hash") != base_hash:
        raise InputError(
            f"cannot resume {out}: its checkpoint was trained on base "
            f"{saved.get('base_model_hash')}, but the given base hashes to {base_hash}"
        )
    device = torch.device(device)

    # data (MaskR² spec from the data's schema to the base's channels)
    pool, spec, fingerprint = load_data(config, saved, out, progress)
    channels = int(base.config.label_channels)
    if spec.num_channels != channels:
        raise InputError(
            f"MaskR² spec {spec.name!r} gives {spec.num_channels} channels but the base model "
            f"takes {channels} label channels"
        )

    # frozen base + LoRA; a host copy of the base weights for the check after training
    reference = {k: v.detach().cpu().clone() for k, v in base.state_dict().items()}
    base_parameters = sum(p.numel() for p in base.parameters())
    expected = count_lora_parameters(base, config.targets, config.rank)
    trainable = add_lora(base.to(device), config)  # peft puts LoRA on the base layer's device
    n_lora = sum(p.numel() for p in trainable.parameters())
    if n_lora != expected:
        raise RuntimeError(f"peft's LoRA has {n_lora} weights, targets.py counts {expected}")
    if report is not None:
        report(
            f"LoRA {config.targets} rank {config.rank}: {n_lora:,} trainable parameters on a "
            f"frozen base of {base_parameters:,} ({base_hash[:12]})"
        )
    model = trainable.module.train()
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / CONFIG_FILE, config.to_json())
    run_state = {"kind": RUN_KIND, "data_sha256": fingerprint, "base_model_hash": base_hash}
    desc = f"adapt {config.targets}"
    result = fit(config, trainable, out, pool, spec, saved, run_state, device, progress, desc)

    # the base must be untouched; the adapter is the EMA of the LoRA weights
    check_base_unchanged(model, reference)
    result.ema.copy_to(trainable)
    model.eval()
    write_adapter(model, base_hash, spec, config.targets, out)
    return AdaptResult(
        model=model,
        losses=result.losses,
        start_step=result.start_step,
        step=max(result.start_step, config.steps),
        out_dir=out,
        base_hash=base_hash,
        trainable_parameters=n_lora,
        base_parameters=base_parameters,
        frames=int(pool.images.shape[0]),
    )


# ---------------------------------------------------------------------------------------
# ablation over the target presets


def final_loss(run_dir: str | os.PathLike, last: int) -> float:
    """Mean of the last ``last`` logged losses of a run (each the mean of its log interval)."""
    path = Path(run_dir) / LOG_FILE
    entries = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    if not entries:
        raise InputError(f"{path} holds no logged loss")
    tail = [e["loss"] for e in entries[-last:]]
    return math.fsum(tail) / len(tail)


def ablation_markdown(table: dict[str, Any]) -> str:
    """The ablation table as Markdown (what ``ablation.md`` holds)."""
    c = table["config"]
    lines = [
        f"# LoRA target ablation: rank {c['rank']}, {c['steps']} steps, batch "
        f"{c['batch_size']}, lr {c['lr']:g}, data {c['data']} ({table['frames']} frames), "
        f"seed {c['seed']}",
        "",
        f"Final loss: mean of the last {table['last_k']} logged losses (log every "
        f"{c['log_every']} steps). Every preset sees the same batches, timesteps and noise.",
        "",
        "| targets | trainable parameters | train time (s) | final loss |",
        "|---|---:|---:|---:|",
    ]
    for row in table["rows"]:
        lines.append(
            f"| {row['targets']} | {row['trainable_parameters']:,} | "
            f"{row['train_seconds']:.1f} | {row['final_loss']:.5f} |"
        )
    return "\n".join(lines) + "\n"


def ablate(
    config: AdaptConfig,
    out_dir: str | os.PathLike,
    presets: tuple[str, ...] = TARGET_PRESETS,
    last_k: int = 5,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train one adapter per target preset into ``out_dir/<preset>`` with the same budget
    (``config`` except ``targets``); write ``ablation.json`` and ``ablation.md`` and return the
    table: per preset the trainable parameters, the loop's training time (seconds, summed over
    resumptions, without data building) and the final loss (:func:`final_loss`).

    With ``resume=True`` the presets whose folder holds a checkpoint continue from it and the
    others start afresh.
    """
    if last_k < 1:
        raise InputError(f"last_k must be >= 1, got {last_k}")
    unknown = [p for p in presets if p not in TARGET_PRESETS]
    if unknown or not presets:
        raise InputError(f"ablation presets {list(presets)}: choose among {TARGET_PRESETS}")
    out = Path(out_dir)
    rows, frames, bound = [], 0, config
    for preset in presets:
        run = out / preset
        again = resume and read_checkpoint_state(run) is not None
        res = adapt(
            dataclasses.replace(config, targets=preset), run, again, device, progress, report
        )
        state = read_checkpoint_state(run) or {}
        bound = AdaptConfig.from_json(state["config"])
        frames = res.frames
        rows.append(
            {
                "targets": preset,
                "trainable_parameters": res.trainable_parameters,
                "base_parameters": res.base_parameters,
                "train_seconds": round(float(state["seconds"]), 3),
                "final_loss": final_loss(run, last_k),
                "steps": res.step,
                "adapter": preset,
            }
        )
    cfg = {k: v for k, v in bound.to_json().items() if k != "targets"}
    table = {"config": cfg, "frames": frames, "last_k": last_k, "rows": rows}
    write_json_atomic(out / ABLATION_JSON, table)
    write_text_atomic(out / ABLATION_MD, ablation_markdown(table))
    return table
