"""``tte2tee tune-plan``: learned step plans (timesteps + coefficients) for a frozen model."""

from __future__ import annotations

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


@click.command("tune-plan")
@model_option()
@merged_adapter_option
@click.option(
    "--masks",
    default="phantom:tee",
    show_default=True,
    help="Mask source of the (noise, mask) pairs: phantom:tee, phantom:tte[:VIEW], a folder.",
)
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
