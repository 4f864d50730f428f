"""``tte2tee tune-plan``: learned step plans (timesteps + coefficients) for a frozen model."""

from __future__ import annotations

from collections.abc import Callable

import click

from tte2tee_fast.commands import backend_options, merged_adapter_option, model_option


def _nfes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        out = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(f"expected NFEs like 4 or 3,4,6, got {value!r}") from None
    if not out or out[0] < 1:
        raise click.BadParameter(f"NFEs must be >= 1, got {value!r}")
    return out


def pair_masks_option(command: Callable) -> Callable:
    """``--masks``: the mask source of the teacher's (noise, mask) pairs (tune-plan, distill)."""
    return click.option(
        "--masks",
        default="phantom:tee",
        show_default=True,
        help="Mask source of the (noise, mask) pairs: phantom:tee, phantom:tte[:VIEW], a folder.",
    )(command)


@click.command("tune-plan")
@model_option()
@merged_adapter_option
@pair_masks_option
@click.option("--nfe", "nfes", default="4", show_default=True, callback=_nfes, help="e.g. 3,4,6")
@click.option(
    "--pairs", type=click.IntRange(min=2), default=48, show_default=True, help="Teacher pairs."
)
@click.option(
    "--train",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Pairs that fit the plan; the rest validate it.",
)
@click.option(
    "--teacher-sampler",
    type=click.Choice(["unipc", "dpmpp_3m", "dpmpp_2m"]),
    default="unipc",
    show_default=True,
)
@click.option("--teacher-steps", type=click.IntRange(min=8), default=200, show_default=True)
@click.option(
    "--teacher",
    "teacher_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder of the teacher trajectories (resumable) [default: in the engine cache, keyed "
    "by model, masks and teacher].",
)
@click.option("--t-max", type=click.IntRange(min=1, max=999), default=999, show_default=True)
@click.option(
    "--sweeps",
    type=click.IntRange(min=0),
    default=6,
    show_default=True,
    help="Most timestep-search sweeps (it stops at a sweep that moves nothing).",
)
@click.option(
    "--init",
    type=click.Path(dir_okay=False),
    default=None,
    help="Start the timestep search from this plan's timesteps (one --nfe of its size).",
)
@click.option(
    "--guidance", type=click.FloatRange(min=0.0), default=1.0, show_default=True, help="CFG scale."
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Noise and mask seed of the pairs (keep it apart from the seeds you evaluate with).",
)
@backend_options
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="Plan file (.json) for one NFE, or a folder that receives nfe<K>.json per NFE.",
)
def tune_plan_cmd(out: str, nfes: tuple[int, ...], **options) -> None:
    """Fit a learned step plan: timesteps and solver coefficients that bring K network
    evaluations closest to the converged ODE solution of this model (network frozen). Use it
    as --sampler plan:FILE in sample, generate, bench and the torch-free runtime.

    \b
    Examples:
      tte2tee tune-plan --nfe 4 --out runs/plans/tee-nfe4.json
      tte2tee tune-plan --nfe 3,4,6 --out runs/plans/tee
      tte2tee tune-plan --adapter none --masks phantom:tte --nfe 4 --out runs/plans/tte-nfe4.json
      tte2tee generate --sampler plan:runs/plans/tee-nfe4.json --out runs/tee-plan4
    """
    from tte2tee_fast.generate.plan_fit import tune_plans

    written = tune_plans(out, nfes, **options)
    for path, plan in written:
        src = plan.source or {}
        click.echo(
            f"{path}: NFE {plan.nfe}, timesteps {list(plan.timesteps)}; rel-RMSE to the "
            f"converged ODE on {src.get('val_pairs')} held-out pairs "
            f"{100 * src.get('val_rel_rmse', float('nan')):.3g} % (unipc, trailing grid, "
            f"same NFE: {100 * src.get('val_rel_rmse_unipc', float('nan')):.3g} %)"
        )


@click.command("distill")
@model_option()
@merged_adapter_option
@pair_masks_option
@click.option("--nfe", type=click.IntRange(min=1, max=8), default=4, show_default=True)
@click.option(
    "--plan",
    default=None,
    help="The student's sampler: a plan file or packaged name [default: the packaged plan of "
    "this NFE tuned for the teacher, else unipc on the trailing grid].",
)
@click.option(
    "--pairs", type=click.IntRange(min=1), default=128, show_default=True, help="Training pairs."
)
@click.option(
    "--val-pairs",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Held-out pairs (other masks, other noise) that select the student.",
)
@click.option("--teacher-steps", type=click.IntRange(min=8), default=100, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=2000, show_default=True)
@click.option("--val-seed", type=click.IntRange(min=0), default=3000, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-4, show_default=True)
@click.option(
    "--extra-rank",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="LoRA components added to the teacher adapter's (or the rank of a fresh LoRA).",
)
@click.option(
    "--targets",
    type=click.Choice(["mlp", "attn", "conv", "spade", "all"]),
    default="all",
    show_default=True,
    help="Target preset of a fresh LoRA (--adapter none); a teacher adapter keeps its own.",
)
@click.option(
    "--landing-weight",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Loss weight of the intermediate landing points (the frame's is 1).",
)
@click.option("--bf16/--no-bf16", default=False, show_default=True, help="bf16 autocast.")
@click.option("--val-every", type=click.IntRange(min=1), default=25, show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=25, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out.")
@backend_options
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Student folder.")
def distill_cmd(
    out: str,
    steps: int,
    batch_size: int,
    lr: float,
    extra_rank: int,
    targets: str,
    landing_weight: float,
    bf16: bool,
    val_every: int,
    checkpoint_every: int,
    engine: str | None,
    **options,
) -> None:
    """Distil a few-step student: a LoRA adapter trained so that its own NFE-step sampler
    lands on the teacher's converged ODE trajectory (the teacher: --model + --adapter). The
    folder is an adapter (use --adapter DIR anywhere) carrying its plan (plan.json, picked by
    --sampler auto). Resumable: rerun with --resume (and a larger --steps).

    \b
    Examples:
      tte2tee distill --nfe 4 --out runs/distill/tee-nfe4
      tte2tee distill --nfe 4 --steps 600 --resume --out runs/distill/tee-nfe4
      tte2tee distill --adapter none --masks phantom:tte --nfe 4 --out runs/distill/tte-nfe4
      tte2tee generate --adapter runs/distill/tee-nfe4 --out runs/tee-distilled
    """
    from tte2tee_fast.adapt.distill import DistillConfig
    from tte2tee_fast.generate.distill_fit import distill_adapter

    if engine is not None:
        raise click.UsageError("--engine: the teacher runs the cached export of its backend")
    config = DistillConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        extra_rank=extra_rank,
        targets=targets,
        landing_weight=landing_weight,
        bf16=bf16,
        val_every=val_every,
        checkpoint_every=checkpoint_every,
    )
    result, path, plan = distill_adapter(out, config=config, **options)
    src = plan.source or {}
    click.echo(
        f"{out}: student of {result.trainable_parameters:,} LoRA weights ({result.preset}, rank "
        f"{result.rank}), {result.step} steps in {result.seconds:.0f} s (best at {result.best_step}); "
        f"{plan.nfe} NFE at {list(plan.timesteps)}: rel-RMSE to the teacher's ODE on "
        f"{src['teacher']['val_pairs']} held-out pairs {100 * src['val_rel_rmse']:.3g} % "
        f"(the teacher with the same plan: {100 * src['val_rel_rmse_teacher']:.3g} %); plan {path}"
    )
