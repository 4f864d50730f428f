"""``tte2tee generate``: mass generation into a sharded, resumable dataset folder."""

from __future__ import annotations

import click

from tte2tee_fast.commands import backend_options, device_option, merged_adapter_option


@click.command("generate")
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(path_type=str),
    help="Base model folder or packaged name [default: the packaged phantom-tte].",
)
@merged_adapter_option
@click.option(
    "--masks",
    default="phantom:tee",
    show_default=True,
    help="phantom:tee, phantom:tte[:a4c|a2c], a folder of masks, or a CAMUS folder.",
)
@click.option("--n", "n", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--sampler",
    default="auto",
    show_default=True,
    help="auto, ddpm, ddim, euler, heun, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde, unipc, or "
    "plan:FILE|NAME (a learned plan: tte2tee tune-plan; packaged: plan:phantom-tee-nfe4; "
    "--steps unused). auto: the packaged 3-NFE plan tuned for this model, else unipc.",
)
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--guidance",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="Classifier-free guidance scale (1 = none).",
)
@click.option(
    "--spacing",
    type=click.Choice(["trailing", "linspace", "karras"]),
    default="trailing",
    show_default=True,
)
@click.option(
    "--t-min",
    type=click.IntRange(min=0, max=998),
    default=10,
    show_default=True,
    help="karras only: last timestep of the grid.",
)
@click.option(
    "--t-max",
    type=click.IntRange(min=1, max=999),
    default=999,
    show_default=True,
    help="First timestep (999: where the N(0, I) start is exact; from 979 pure noise draws "
    "every region brighter).",
)
@backend_options
@device_option
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Noise + mask seed."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["wds", "png", "npz"]),
    default="wds",
    show_default=True,
    help="wds: WebDataset tar shards; png: the folder-reader layout; npz: numpy shards.",
)
@click.option("--shard-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--augment", is_flag=True, help="Random affine + elastic transform per frame.")
@click.option(
    "--schema",
    type=click.Choice(["tte", "tee", "tee-alt", "camus"]),
    default=None,
    help="Label schema of a mask folder without card.json.",
)
@click.option(
    "--remap",
    default=None,
    help="MaskR² spec (JSON file) from the masks' schema to the model's channels, in place of "
    "the adapter's own (masks in another label order or schema).",
)
@click.option(
    "--value-map",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help='JSON {"<stored value>": "<label name>"} for masks in another value order.',
)
@click.option(
    "--shard",
    "split",
    default=None,
    metavar="I/N",
    help="Generate the shards s with s % N == I [default: from SLURM/torchrun/k8s variables].",
)
@click.option("--plan", is_flag=True, help="Print what is missing in --out and exit.")
@click.option("--ray", "use_ray", is_flag=True, help="Run the shards on Ray actors.")
@click.option("--address", default=None, help="Ray cluster address [default: a local Ray].")
@click.option(
    "--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Ray actors."
)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Dataset folder."
)
def generate_cmd(
    model_dir: str | None,
    adapter: str | None,
    masks: str,
    n: int,
    sampler: str,
    steps: int,
    guidance: float,
    spacing: str,
    t_min: int,
    t_max: int,
    backend: str,
    precision: str,
    engine: str | None,
    device: str,
    batch_size: int,
    seed: int,
    fmt: str,
    shard_size: int,
    augment: bool,
    schema: str | None,
    remap: str | None,
    value_map: str | None,
    split: str | None,
    plan: bool,
    use_ray: bool,
    address: str | None,
    workers: int,
    progress: bool,
    out_dir: str,
) -> None:
    """Generate image–mask pairs into a sharded, resumable dataset (frame i depends only on the
    configuration, --seed and i). A rerun verifies the shards and makes only what is missing.

    \b
    Examples:
      tte2tee generate --out runs/tee-64
      tte2tee generate --masks phantom:tte:a2c --adapter none --n 1000 --out runs/a2c
      tte2tee generate --masks my_masks/ --schema tee --n 5000 --format png --out runs/mine
      tte2tee generate --masks alt_masks/ --schema tee-alt \
        --remap tte2tee_fast/assets/maskr2/tee-alt.json --out runs/alt
      tte2tee generate --n 100000 --shard 3/8 --out /shared/tee-100k
      tte2tee generate --n 100000 --ray --workers 4 --out runs/tee-100k
      tte2tee generate --n 100000 --plan --out runs/tee-100k
    """
    from tte2tee_fast.data.camus import read_value_map
    from tte2tee_fast.generate.backends import FrameConfig
    from tte2tee_fast.generate.distribute import resolve_split
    from tte2tee_fast.generate.run import DatasetConfig, generate_dataset
    from tte2tee_fast.generate.sources import MaskCheckError

    vmap = None if value_map is None else read_value_map(value_map)
    dataset = DatasetConfig(
        masks=masks,
        n=n,
        format=fmt,
        shard_size=shard_size,
        augment=augment,
        schema=schema,
        value_map=DatasetConfig.value_map_pairs(vmap),
    )
    frame_config = FrameConfig(
        model=model_dir,
        adapter=adapter,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        spacing=spacing,
        t_min=t_min if spacing == "karras" else None,
        t_max=t_max,
        seed=seed,
        backend=backend,
        precision=precision,
        batch_size=batch_size,
        device=device,
        engine=engine,
        remap=remap,
    )
    runner = resolve_split(split)
    if runner.count > 1:
        click.echo(f"split {runner.text}: {runner.origin}", err=True)
    try:
        report = generate_dataset(
            out_dir,
            dataset,
            frame_config,
            split=runner,
            plan=plan,
            progress=progress,
            ray={"address": address, "workers": workers} if use_ray else None,
        )
    except MaskCheckError as err:
        for line in err.problems:
            click.echo(line, err=True)
        raise
    for line in report.bad:
        click.echo(f"regenerating {line}", err=True)
    if plan:
        missing = report.missing
        frames = sum(s.count for s in missing)
        click.echo(
            f"{out_dir}: {report.recorded} of {report.shards} shards verified; this runner "
            f"({runner.text}) would generate {len(missing)} shards ({frames} frames)"
        )
        for s in missing:
            click.echo(f"  {s.name}  frames {s.start}..{s.stop - 1}")
        return
    state = "complete" if report.complete else "incomplete (other runners' shards missing)"
    click.echo(
        f"{out_dir}: wrote {report.generated_frames} frames in {len(report.missing)} shards "
        f"({report.frames_per_second:.2f} frames/s); {report.recorded} shards were already "
        f"there; dataset {state}"
    )
