"""Model commands: ``tte2tee info``, ``tte2tee train`` and ``tte2tee sample``."""

from __future__ import annotations

import click

from tte2tee_fast.commands import (
    backend_options,
    explicit_options,
    karras_options,
    model_option,
    precision_of,
    training_options,
)
from tte2tee_fast.errors import InputError


@click.command("info")
@click.option(
    "--preset",
    type=click.Choice(["micro", "tiny", "sdm256"]),
    default=None,
    help="Describe a model preset (no weights are allocated) [default: tiny].",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Describe a saved model folder instead (config.json + safetensors, checked on load).",
)
def info_cmd(preset: str | None, model_dir: str | None) -> None:
    """Print a model's configuration and its parameters by layer kind.

    Kinds: conv, linear, attention, spade, norm (and lora when adapters are attached);
    the last line gives the number of nn.Linear layers (the "mlp" LoRA targets).

    \b
    Examples:
      tte2tee info --preset sdm256
      tte2tee info --model runs/tiny-tte/ema
    """
    from tte2tee_fast.models.unet import describe_model

    if preset is not None and model_dir is not None:
        raise InputError("give --preset or --model, not both")
    click.echo(describe_model(preset, model_dir))


# Defaults below mirror tte2tee_fast.training.train.TrainConfig (kept literal so --help needs no
# torch import; tests/test_train.py checks that they agree).
@click.command("train")
@click.option(
    "--data",
    default="phantom-tte",
    show_default=True,
    help="phantom-tte, phantom-tee (generated on the fly), or a folder of image/mask pairs.",
)
@click.option(
    "--preset",
    type=click.Choice(["micro", "tiny", "sdm256"]),
    default="tiny",
    show_default=True,
    help="Network size.",
)
@click.option("--steps", type=click.IntRange(min=1), default=10000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-4, show_default=True)
@click.option(
    "--lr-schedule",
    type=click.Choice(["constant", "cosine"]),
    default="constant",
    show_default=True,
    help="LR after the warm-up.",
)
@click.option("--warmup", type=click.IntRange(min=0), default=200, show_default=True)
@click.option("--size", type=click.IntRange(min=8), default=128, show_default=True)
@click.option(
    "--num-cases",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Phantom cases generated into the in-memory pool.",
)
@click.option(
    "--remap",
    default=None,
    help="MaskR² spec (JSON file or built-in name, e.g. tee->tte) from the data labels to the "
    "model channels; default: one channel per label.",
)
@click.option(
    "--augment",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Augmented copies (affine + elastic) of every case added to the pool.",
)
@click.option(
    "--prediction",
    type=click.Choice(["eps", "v"]),
    default="eps",
    show_default=True,
    help="What the network's output layer predicts (the model returns eps either way); "
    "v bounds the clean-image estimate at high noise.",
)
@click.option(
    "--init",
    default=None,
    help="Start from this model folder or packaged name (fine-tuning; same architecture).",
)
@click.option(
    "--ema-decay",
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=0.999,
    show_default=True,
)
@click.option(
    "--num-workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Processes that build the data pool.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder: checkpoint/, model/, ema/, train_log.jsonl.",
)
@training_options(checkpoint_every=500)
def train_cmd(out_dir: str, resume: bool, device: str, **options) -> None:
    """Train a mask-conditioned diffusion model; resumable bit for bit.

    Writes OUT/ema (EMA weights: sample with these), OUT/model (raw weights),
    OUT/checkpoint (every --checkpoint-every steps) and OUT/train_log.jsonl.

    \b
    Examples:
      tte2tee train --data phantom-tte --preset tiny --steps 20000 --out runs/tiny-tte
      tte2tee train --out runs/tiny-tte --resume --steps 40000
      tte2tee train --init phantom-tte --prediction v --steps 2000 --out runs/tte-v
      tte2tee train --data my_pngs --schema tte --preset micro --size 64 --steps 50 --out runs/t
    """
    from tte2tee_fast.training.train import TrainConfig, resume_config, train

    if resume:
        config = resume_config(out_dir, **explicit_options(options))
    else:
        config = TrainConfig(**options)
    result = train(config, out_dir, resume=resume, device=device)
    click.echo(
        f"trained {result.step} steps ({result.step - result.start_step} this run): "
        f"EMA weights in {result.out_dir / 'ema'}, raw weights in {result.out_dir / 'model'}"
    )


@click.command("sample")
@model_option()
@click.option(
    "--masks",
    default="phantom-tte",
    show_default=True,
    help="Conditioning masks: phantom-tte, phantom-tee or a data folder.",
)
@click.option(
    "--remap", default=None, help="MaskR² spec (JSON file or built-in name, e.g. tee->tte)."
)
@click.option("--n", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--sampler",
    default="ddim",
    show_default=True,
    help="ddpm, ddim, euler, heun, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde, unipc, or plan:FILE|NAME "
    "(a learned plan: tte2tee tune-plan; packaged: plan:phantom-tee-nfe4; --steps unused).",
)
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--spacing",
    type=click.Choice(["trailing", "leading", "linspace", "karras"]),
    default="trailing",
    show_default=True,
)
@karras_options
@click.option(
    "--guidance",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="Classifier-free guidance scale (1 = none).",
)
@click.option(
    "--eta",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="DDIM eta (0 = deterministic).",
)
@click.option(
    "--clip/--no-clip",
    default=True,
    show_default=True,
    help="Clamp each step's clean-image estimate to [-1, 1] (as SDM / diffusers clip_sample).",
)
@click.option(
    "--t-max",
    type=click.IntRange(min=1, max=999),
    default=None,
    help="Start at this training timestep instead of 999 (trailing/linspace/karras spacing).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed.")
@click.option("--mask-seed", type=int, default=0, show_default=True, help="Phantom mask seed.")
@click.option(
    "--view",
    type=click.Choice(["a4c", "a2c", "me4c"]),
    default=None,
    help="Phantom view (default: the modality's first).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@backend_options
@click.option(
    "--bf16/--no-bf16",
    default=None,
    help="Shorthand for --precision bf16 / fp32.",
)
@click.option(
    "--adapter",
    default=None,
    help="Adapter folder or packaged name (e.g. phantom-tee), merged into --model in memory "
    "(any LoRA targets); its MaskR² spec applies.",
)
@click.option(
    "--unmerged",
    is_flag=True,
    help="Serve the --adapters unmerged on the base (fused LoRA), several in one batch.",
)
@click.option(
    "--adapters",
    default=None,
    help="With --unmerged: comma list of adapter folders A1,A2,...; frame i uses adapter "
    "i % K and that adapter's own MaskR² spec.",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
def sample_cmd(
    out_dir: str,
    model_dir: str | None,
    masks: str,
    remap: str | None,
    n: int,
    mask_seed: int,
    view: str | None,
    unmerged: bool,
    adapters: str | None,
    adapter: str | None,
    backend: str,
    precision: str,
    engine: str | None,
    bf16: bool | None,
    **options,
) -> None:
    """Sample frames for conditioning masks and write PNGs, a grid and a report.

    With --adapter A the adapter is merged into the model in memory (as tte2tee merge would,
    any LoRA targets) and its MaskR² spec conditions the frames.
    With --unmerged --adapters A1,A2,... the adapters (trained on the --model base, all
    taking the same mask schema) are fused into the base unmerged and share every batch:
    frame i is drawn by adapter i % K, conditioned through that adapter's own MaskR² spec.

    \b
    Examples:
      tte2tee sample --n 8 --sampler ddpm --steps 1000 --out runs/sample-ddpm
      tte2tee sample --sampler dpmpp_2m --steps 10 --out runs/sample-fast
      tte2tee sample --adapter phantom-tee --masks phantom-tee --out runs/sample-tee
      tte2tee sample --model runs/merged-tee --masks phantom-tee --out runs/sample-tee
      tte2tee sample --adapter phantom-tee --masks phantom-tee --backend ort --out runs/s-ort
      tte2tee sample --model runs/base --unmerged --adapters runs/tee-a,runs/tee-b \\
        --masks phantom-tee --out runs/sample-mixed
    """
    from pathlib import Path

    from tte2tee_fast.evaluate.intensity import sample_report
    from tte2tee_fast.fsutil import write_json_atomic
    from tte2tee_fast.generate.multi_adapter import parse_adapter_list
    from tte2tee_fast.generate.sample import SampleConfig, run_sample

    if unmerged != (adapters is not None):
        raise InputError("--unmerged and --adapters go together (--unmerged --adapters A1,A2)")
    folders = parse_adapter_list(adapters) if adapters is not None else None

    run = run_sample(
        out_dir,
        model_dir,
        masks,
        n,
        SampleConfig(**options),
        remap=remap,
        mask_seed=mask_seed,
        view=view,
        adapters=folders,
        adapter=adapter,
        backend="torch" if folders else backend,
        precision=precision_of(precision, bf16),
        engine=engine,
    )
    report = {**run.meta, "schema": run.schema.name, "n": len(run.generated)}
    report.update(sample_report(run.generated, run.masks, run.reference, run.schema))
    write_json_atomic(Path(out_dir) / "report.json", report)
    click.echo(
        f"wrote {n} frames, grid.png and report.json to {out_dir} "
        f"({report['seconds_per_frame']:.3f} s/frame; outside-cone std "
        f"{report['outside_std']:.2f}; max region-mean rel. diff "
        f"{report.get('max_rel_diff', float('nan')):.3f})"
    )
