"""Adaptation commands: ``tte2tee adapt`` (train a LoRA adapter) and ``tte2tee merge``."""

from __future__ import annotations

import click

from tte2tee_fast.commands import explicit_options, training_options
from tte2tee_fast.errors import InputError


# Defaults below mirror tte2tee_fast.adapt.train.AdaptConfig (kept literal so --help needs no
# torch import; tests/test_cli_adapt.py checks that they agree).
@click.command("adapt")
@click.option(
    "--base",
    default=None,
    type=click.Path(path_type=str),
    help="Base model folder [default: the packaged weights].",
)
@click.option(
    "--data",
    default="phantom-tee",
    show_default=True,
    help="phantom-tee (generated on the fly) or a folder of image/mask pairs.",
)
@click.option(
    "--remap",
    default="tee->tte",
    show_default=True,
    help="MaskR² spec (JSON file or built-in name) from the data labels to the base channels.",
)
@click.option(
    "--targets",
    type=click.Choice(["mlp", "attn", "conv", "spade", "all"]),
    default="mlp",
    show_default=True,
    help="LoRA target preset (mlp: the Linear layers, as in the paper).",
)
@click.option("--rank", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--alpha",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="LoRA alpha [default: the rank, i.e. scale 1].",
)
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=50, show_default=True)
@click.option(
    "--num-cases",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Phantom cases in the pool (a folder uses all its pairs).",
)
@click.option(
    "--augment",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="Augmented copies of every case: 20 cases x (1 + 8) = 180 frames.",
)
@click.option(
    "--label-dropout",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Probability of the null label (classifier-free guidance).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Adapter folder (also holds checkpoint/ and train_log.jsonl); with --ablate, the "
    "folder of the table and one adapter per preset.",
)
@click.option(
    "--ablate",
    is_flag=True,
    help="Train every target preset with the same budget; write ablation.md / .json.",
)
@click.option(
    "--last-k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="--ablate: final loss = mean of the last K logged losses.",
)
@click.option(
    "--eval-frames",
    type=click.IntRange(min=0),
    default=32,
    show_default=True,
    help="--ablate: held-out frames each adapter samples (unipc 10) for its structural fidelity, "
    "KID and region means (bench/adapters.py); 0 skips.",
)
@training_options(checkpoint_every=250)
def adapt_cmd(
    out_dir: str,
    resume: bool,
    device: str,
    ablate: bool,
    last_k: int,
    eval_frames: int,
    **options,
) -> None:
    """Train a LoRA adapter of a frozen base model on new-modality data (MaskR² remap).

    Prints the trainable parameter count, then trains with the loop of `tte2tee train`
    (checkpoints, exact --resume). OUT is the adapter (the EMA of the LoRA weights), ready
    for `tte2tee merge` and `tte2tee sample --unmerged --adapters`.

    \b
    Examples:
      tte2tee adapt --out runs/tee-lora                       (packaged base, phantom TEE)
      tte2tee adapt --base runs/tiny-tte/ema --targets mlp --rank 4 --out runs/tee-lora
      tte2tee adapt --data my_tee_pngs --schema tee --remap 'tee->tte' --out runs/tee-lora
      tte2tee adapt --out runs/tee-lora --resume --steps 2000
      tte2tee adapt --base runs/tiny-tte/ema --ablate --steps 500 --out runs/ablation
      tte2tee adapt --ablate --steps 500 --eval-frames 64 --out runs/ablation
    """
    from pathlib import Path

    from tte2tee_fast.adapt.train import AdaptConfig, adapt
    from tte2tee_fast.adapt.train import ablate as run_ablation
    from tte2tee_fast.training.train import resume_config

    given = explicit_options(options)
    if ablate and eval_frames == 1:
        raise InputError(
            "--eval-frames 1: KID and the Dice interval need at least 2 frames (0 skips)"
        )
    if ablate and "targets" in given:
        raise InputError("--ablate trains every target preset: leave out --targets")
    if resume:
        saved_in = Path(out_dir) / "mlp" if ablate else Path(out_dir)
        config = resume_config(saved_in, AdaptConfig, **given)
    else:
        config = AdaptConfig(**options)
    if ablate:
        table = run_ablation(
            config, out_dir, last_k=last_k, resume=resume, device=device, report=click.echo
        )
        if eval_frames:
            from tte2tee_fast.bench.adapters import AdapterEvalConfig, ablation_quality

            table = ablation_quality(out_dir, AdapterEvalConfig(n=eval_frames))
        click.echo(f"ablation of {len(table['rows'])} presets in {out_dir}:")
        click.echo((Path(out_dir) / "ablation.md").read_text())
        return
    result = adapt(config, out_dir, resume=resume, device=device, report=click.echo)
    click.echo(
        f"trained {result.step} steps ({result.step - result.start_step} this run): adapter "
        f"(EMA of the LoRA weights) in {result.out_dir}"
    )


@click.command("merge")
@click.option(
    "--base",
    "base_dir",
    default=None,
    type=click.Path(path_type=str),
    help="Base model folder the adapter was trained on [default: the packaged weights].",
)
@click.option(
    "--adapter",
    "adapter_dir",
    required=True,
    type=click.Path(path_type=str),
    help="Adapter folder (peft LoRA files + tte2tee.json).",
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(path_type=str), help="Merged model folder."
)
def merge_cmd(base_dir: str | None, adapter_dir: str, out_dir: str) -> None:
    """Merge a LoRA adapter into its base model (fp32) and write a plain model folder.

    The output also holds the adapter's MaskR² spec (maskr2.json), so it takes label maps of
    the adapter's modality. An adapter trained on another base, or non-finite weights, stop
    it with one `Error:` line and exit code 2.

    \b
    Examples:
      tte2tee merge --base runs/base --adapter runs/tee-lora --out runs/tee-merged
      tte2tee merge --adapter runs/tee-lora --out runs/tee-merged   (packaged base)
    """
    from tte2tee_fast.adapt.merge import merge_to_folder
    from tte2tee_fast.packaged import resolve_model_path

    base = resolve_model_path(base_dir)
    out = merge_to_folder(base, adapter_dir, out_dir)
    click.echo(f"merged {adapter_dir} into {base}: {out}")
