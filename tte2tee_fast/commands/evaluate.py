"""Evaluation commands: ``tte2tee evaluate segmenter|fidelity|realism|downstream``."""

from __future__ import annotations

import click

_FRAMES_HELP = "phantom-tee, phantom-tte (drawn in memory) or a folder of image/mask pairs."
_SEGMENTER_HELP = "Segmenter folder or packaged name [default: the packaged segmenter-tee]."


def _schema_option(command):
    return click.option(
        "--schema",
        type=click.Choice(["tee", "tte", "tee-alt"]),
        default=None,
        help="Label schema of the frames [default: card.json, report.json, else the segmenter's].",
    )(command)


def _threads_option(command):
    return click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="torch threads (1: on a busy machine 2 threads ran this small net 30x slower).",
    )(command)


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


_json_option = click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the report as JSON.",
)


def _emit(report: dict, json_path: str | None, text: str) -> None:
    from tte2tee_fast.fsutil import write_json_atomic

    if json_path:
        write_json_atomic(json_path, report)
    click.echo(text)


def _command_line() -> str:
    """The running command with every option spelled out (what reproduces it exactly)."""
    ctx = click.get_current_context()
    words = ["tte2tee", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is not None and isinstance(param, click.Option):
            words += [param.opts[0], str(value)]
    return " ".join(words)


def _progress(steps: int):
    """A training log callback that prints the loss every 100 steps and at the end."""

    def log(step: int, loss: float) -> None:
        if step % 100 == 0 or step == steps:
            click.echo(f"step {step}/{steps} loss {loss:.4f}", err=True)

    return log


@click.group("evaluate")
def evaluate_group() -> None:
    """Quality of frames: segmenter training, structural fidelity, realism, downstream Dice.

    \b
    Examples:
      tte2tee evaluate segmenter --data phantom-tee --n 600 --data-seed 1 --out runs/seg-tee
      tte2tee evaluate fidelity --frames runs/s --json runs/s/fidelity.json
      tte2tee evaluate realism --real phantom-tee --frames runs/s
      tte2tee evaluate downstream --synthetic runs/gen-tee --out runs/downstream --quick
    """


@evaluate_group.command("segmenter")
@click.option("--data", default="phantom-tee", show_default=True, help=_FRAMES_HELP)
@click.option(
    "--n",
    type=click.IntRange(min=1),
    default=600,
    show_default=True,
    help="Phantom cases drawn (or the first N pairs of a folder).",
)
@click.option(
    "--data-seed",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Phantom base seed of the training cases.",
)
@click.option(
    "--val-data", default="phantom-tee", show_default=True, help="Held-out frames: " + _FRAMES_HELP
)
@click.option("--val-n", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--val-seed",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Phantom base seed of the held-out cases (other cases than --data-seed).",
)
@click.option("--size", type=click.IntRange(min=16), default=128, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=800, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-3, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@_threads_option
@_schema_option
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Segmenter folder: model.safetensors, config.json, training.json.",
)
def segmenter_cmd(
    data: str,
    n: int,
    data_seed: int,
    val_data: str,
    val_n: int,
    val_seed: int,
    size: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    threads: int,
    schema: str | None,
    out_dir: str,
) -> None:
    """Train a MONAI U-Net segmenter (Dice + CE) and report its Dice on held-out frames.

    The phantom sources draw cases of --data-seed for training and of --val-seed for the
    held-out Dice, so no case is on both sides. A run stopped early resumes from
    OUT/checkpoint with the same options.

    \b
    Examples:
      tte2tee evaluate segmenter --out tte2tee_fast/assets/segmenter-tee
      tte2tee evaluate segmenter --data runs/real-tee --val-data runs/real-tee-test --out runs/seg
    """
    from tte2tee_fast.evaluate.fidelity import train_and_validate

    _threads(threads)
    result = train_and_validate(
        data=data,
        n=n,
        data_seed=data_seed,
        val_data=val_data,
        val_n=val_n,
        val_seed=val_seed,
        size=size,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        schema=schema,
        out=out_dir,
        command=_command_line(),
        log=_progress(steps),
    )
    click.echo(result["text"])


@evaluate_group.command("fidelity")
@click.option("--frames", required=True, help=_FRAMES_HELP)
@click.option("--segmenter", default=None, help=_SEGMENTER_HELP)
@_schema_option
@click.option(
    "--n",
    type=click.IntRange(min=1),
    default=None,
    help="Use the first N frames [default: all; 16 phantom cases].",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Phantom base seed (phantom sources) and bootstrap seed.",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=10),
    default=1000,
    show_default=True,
    help="Bootstrap resamples over frames for the 95 % interval.",
)
@click.option(
    "--remap",
    default=None,
    help="MaskR² spec (JSON file or built-in name) from the masks' schema to the segmenter's, "
    "for masks in another format (e.g. tte2tee_fast/assets/maskr2/tee-alt-to-tee.json).",
)
@_threads_option
@_json_option
def fidelity_cmd(
    frames: str,
    segmenter: str | None,
    schema: str | None,
    n: int | None,
    seed: int,
    bootstrap: int,
    remap: str | None,
    threads: int,
    json_path: str | None,
) -> None:
    """Structural fidelity: Dice of a real-trained segmenter on frames vs their masks.

    The segmenter labels each frame; per structure, the Dice against the frame's own
    conditioning mask (masks/ beside images/), mean and bootstrap 95 % interval over frames.

    \b
    Examples:
      tte2tee evaluate fidelity --frames runs/s
      tte2tee evaluate fidelity --frames phantom-tee --n 64 --json runs/fid-phantom.json
      tte2tee evaluate fidelity --frames runs/gen-alt \
        --remap tte2tee_fast/assets/maskr2/tee-alt-to-tee.json
    """
    from tte2tee_fast.evaluate.fidelity import evaluate_fidelity, format_fidelity

    _threads(threads)
    report = evaluate_fidelity(
        frames, segmenter, schema, n=n, seed=seed, n_boot=bootstrap, remap=remap
    )
    _emit(report, json_path, format_fidelity(report))


@evaluate_group.command("realism")
@click.option("--real", required=True, help="Reference frames: " + _FRAMES_HELP)
@click.option("--frames", required=True, help="Generated frames: " + _FRAMES_HELP)
@click.option(
    "--segmenter", default=None, help=_SEGMENTER_HELP + " Its encoder gives the features."
)
@_schema_option
@click.option(
    "--n",
    type=click.IntRange(min=2),
    default=None,
    help="Use the first N frames of each set [default: all; 16 phantom cases].",
)
@click.option(
    "--real-seed",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Phantom base seed of --real when it is a phantom source.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="KID subset seed (and phantom seed of --frames when it is a phantom source).",
)
@_threads_option
@_json_option
def realism_cmd(
    real: str,
    frames: str,
    segmenter: str | None,
    schema: str | None,
    n: int | None,
    real_seed: int,
    seed: int,
    threads: int,
    json_path: str | None,
) -> None:
    """Realism: Fréchet distance and KID on segmenter-encoder features, and region means.

    Small sets give biased Fréchet distances (it needs many more frames than feature
    dimensions); KID is unbiased and the better number below a few hundred frames.

    \b
    Examples:
      tte2tee evaluate realism --real phantom-tee --frames runs/s
      tte2tee evaluate realism --real runs/real-tee --frames runs/gen --json runs/realism.json
    """
    from tte2tee_fast.evaluate.realism import evaluate_realism, format_realism

    _threads(threads)
    report = evaluate_realism(real, frames, segmenter, schema, n=n, real_seed=real_seed, seed=seed)
    _emit(report, json_path, format_realism(report))


@evaluate_group.command("downstream")
@click.option(
    "--real",
    default="phantom-tee",
    show_default=True,
    help="Real frames: a folder, or phantom-tee (cases of seed 100).",
)
@click.option(
    "--synthetic",
    default=None,
    type=click.Path(file_okay=False, exists=True),
    help="Synthetic frames: a folder of image/mask pairs (tte2tee generate / sample) "
    "[default: generate them into OUT-synthetic with the packaged base + phantom-tee].",
)
@click.option(
    "--test",
    default=None,
    help="A separate real test set (folder or phantom-tee) instead of a split of --real.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Report folder: report.json, report.md, dice.png, and arms.jsonl (finished arms: "
    "a rerun of a killed run continues from them).",
)
@click.option(
    "--quick",
    is_flag=True,
    help="n_real 0/25/50, 50 test frames, 300 steps at 64 px (about 25 min on 2 busy cores).",
)
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Segmenter steps per arm [default: 800; 300 with --quick].",
)
@_schema_option
@_threads_option
def downstream_cmd(
    real: str,
    synthetic: str | None,
    test: str | None,
    out_dir: str,
    quick: bool,
    seeds: int,
    steps: int | None,
    schema: str | None,
    threads: int,
) -> None:
    """Downstream experiment: segmentation Dice with real-only vs real + synthetic frames.

    Arms: n_real in {0 (synthetic only), 25, 50, 100, 200} real frames, each alone and with
    synthetic frames at 1:1 and 1:4; every arm once per seed; test frames are a fixed
    split of --real by case (no case on both sides). Reports per-class Dice mean ± std
    and the paired difference real+synthetic − real-only with its 95 % t interval.

    \b
    Examples:
      tte2tee evaluate downstream --quick --out runs/downstream      (embedded default)
      tte2tee evaluate downstream --synthetic runs/gen-tee --out runs/downstream --quick
      tte2tee evaluate downstream --real runs/real-tee --synthetic runs/gen --out runs/ds
    """
    from dataclasses import replace

    from tte2tee_fast.evaluate.downstream import QUICK, DownstreamConfig, run_downstream

    _threads(threads)
    cfg = QUICK if quick else DownstreamConfig()
    cfg = replace(cfg, seeds=tuple(range(seeds)))
    if steps is not None:
        cfg = replace(cfg, segmenter=replace(cfg.segmenter, steps=steps))
    if synthetic is None:
        from pathlib import Path

        from tte2tee_fast.evaluate.downstream import default_synthetic

        # beside OUT, not inside: the report folder is replaced as a whole when it is written
        synthetic = str(default_synthetic(Path(f"{out_dir.rstrip('/')}-synthetic"), cfg))
    run_downstream(
        real,
        synthetic,
        out_dir,
        quick=quick,
        cfg=cfg,
        schema=schema,
        test=test,
        log=lambda line: click.echo(line, err=True),
    )
    from pathlib import Path

    click.echo((Path(out_dir) / "report.md").read_text())
