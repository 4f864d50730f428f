"""The ``tte2tee`` command line. Commands only parse options and call library functions.

Examples::

    tte2tee phantom --modality tee --n 8 --size 128 --out runs/phantom-tee
    tte2tee phantom --modality tte --view a4c --n 16 --preview runs/a4c.png --out runs/a4c
"""

from __future__ import annotations

import sys

import click

from tte2tee_fast import __version__
from tte2tee_fast.errors import InputError


class _Group(click.Group):
    """Click group that turns :class:`InputError` into one clear line and exit code 2."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except InputError as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tte2tee")
def main() -> None:
    """tte2tee-fast: synthetic transesophageal echo from label masks.

    \b
    Examples:
      tte2tee phantom --modality tee --n 8 --size 128 --out runs/phantom-tee
      tte2tee phantom --modality tte --view a4c --n 16 --preview runs/a4c.png --out runs/a4c
    """


# Commands are registered below, one block per command; each block only parses options
# and calls the library. Keep the library imports inside the command functions so that
# `tte2tee --help` stays fast and import-time work stays at zero.


@main.command("inspect")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(path_type=str),
    help="Dataset folder: images/ + masks/ (or X.png + X_mask.png), or a CAMUS tree.",
)
@click.option(
    "--schema",
    type=click.Choice(["tte", "tee", "camus"]),
    default=None,
    help="Label schema of the masks [default: from card.json; CAMUS: tte].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "folder", "camus"]),
    default="auto",
    show_default=True,
    help="Dataset layout; auto detects it.",
)
@click.option(
    "--value-map",
    type=click.Path(path_type=str),
    default=None,
    help='JSON {"<mask value>": "<label name>"} for masks stored in another value order.',
)
def inspect_cmd(data_dir: str, schema: str | None, fmt: str, value_map: str | None) -> None:
    """Check every image/mask pair of a dataset and print a summary.

    Reports the number of pairs, frame sizes and the pixel fraction of every label; the
    first bad file (missing mask, size mismatch, unreadable file, label value outside the
    schema) stops it with one `Error:` line and exit code 2.

    \b
    Examples:
      tte2tee inspect --data runs/phantom-tee
      tte2tee inspect --data my_pngs --schema tee
      tte2tee inspect --data CAMUS/database_nifti --format camus
      tte2tee inspect --data camus_pngs --schema tte --value-map camus_variant.json
    """
    from tte2tee_fast.data.camus import read_value_map
    from tte2tee_fast.data.dataset import detect_format, open_source, summarize

    vmap = None if value_map is None else read_value_map(value_map)
    fmt = detect_format(data_dir) if fmt == "auto" else fmt
    summary = summarize(open_source(data_dir, fmt, schema, vmap))
    click.echo(f"data: {data_dir} (format {fmt})")
    click.echo(summary.describe())


# Defaults below mirror tte2tee_fast.models.train.TrainConfig (kept literal so --help needs no
# torch import; tests/test_train.py checks that they agree).
@main.command("train")
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
    "--schema",
    type=click.Choice(["tte", "tee", "camus"]),
    default=None,
    help="Label schema of a --data folder without card.json.",
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
    "--ema-decay",
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=0.999,
    show_default=True,
)
@click.option(
    "--bf16/--no-bf16", default=True, show_default=True, help="bf16 autocast for the network."
)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--num-workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Processes that build the data pool.",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder: checkpoint/, model/, ema/, train_log.jsonl.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the checkpoint in --out (its saved options apply; pass --steps to extend).",
)
def train_cmd(out_dir: str, resume: bool, device: str, **options) -> None:
    """Train a mask-conditioned diffusion model; resumable bit for bit.

    Writes OUT/ema (EMA weights: sample with these), OUT/model (raw weights),
    OUT/checkpoint (every --checkpoint-every steps) and OUT/train_log.jsonl.

    \b
    Examples:
      tte2tee train --data phantom-tte --preset tiny --steps 20000 --out runs/tiny-tte
      tte2tee train --out runs/tiny-tte --resume --steps 40000
      tte2tee train --data my_pngs --schema tte --preset micro --size 64 --steps 50 --out runs/t
    """
    from tte2tee_fast.models.train import TrainConfig, resume_config, train

    ctx = click.get_current_context()
    if resume:
        given = {
            k: v
            for k, v in options.items()
            if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT
        }
        config = resume_config(out_dir, **given)
    else:
        config = TrainConfig(**options)
    result = train(config, out_dir, resume=resume, device=device)
    click.echo(
        f"trained {result.step} steps ({result.step - result.start_step} this run): "
        f"EMA weights in {result.out_dir / 'ema'}, raw weights in {result.out_dir / 'model'}"
    )


@main.command("phantom")
@click.option(
    "--modality",
    type=click.Choice(["tte", "tee"]),
    default="tte",
    show_default=True,
    help="tte: apical views, tte label schema; tee: mid-oesophageal view, tee schema.",
)
@click.option(
    "--view",
    type=click.Choice(["a4c", "a2c", "me4c"]),
    default=None,
    help="a4c/a2c (tte) or me4c (tee) [default: a4c for tte, me4c for tee].",
)
@click.option("--n", "n", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--size", type=click.IntRange(64, 512), default=256, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Dataset folder: images/, masks/, card.json.",
)
@click.option(
    "--preview",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a contact sheet PNG (images beside their mask overlays).",
)
@click.option("--preview-n", type=click.IntRange(min=1), default=16, show_default=True)
def phantom_cmd(
    modality: str,
    view: str | None,
    n: int,
    size: int,
    seed: int,
    out_dir: str,
    preview: str | None,
    preview_n: int,
) -> None:
    """Generate phantom image/mask pairs (parametric heart + pseudo-ultrasound renderer).

    Case i of a run depends only on (--seed, i), not on --n; same options give
    byte-identical files.

    \b
    Examples:
      tte2tee phantom --modality tee --n 8 --size 128 --out runs/phantom-tee
      tte2tee phantom --modality tte --view a4c --n 16 --preview runs/a4c.png --out runs/a4c
      tte2tee phantom --modality tte --view a2c --n 1000 --seed 7 --out runs/a2c
    """
    from tte2tee_fast.data.pairs import write_pairs

    out = write_pairs(out_dir, modality, view, n, size, seed, preview, preview_n)
    click.echo(f"wrote {n} pairs to {out}" + (f", preview {preview}" if preview else ""))


@main.command("info")
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


@main.command("merge")
@click.option(
    "--base",
    "base_dir",
    required=True,
    type=click.Path(path_type=str),
    help="Base model folder the adapter was trained on.",
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
def merge_cmd(base_dir: str, adapter_dir: str, out_dir: str) -> None:
    """Merge a LoRA adapter into its base model (fp32) and write a plain model folder.

    The output also holds the adapter's MaskR² spec (maskr2.json), so it takes label maps of
    the adapter's modality. An adapter trained on another base, or non-finite weights, stop
    it with one `Error:` line and exit code 2.

    \b
    Examples:
      tte2tee merge --base runs/base --adapter runs/tee-lora --out runs/tee-merged
    """
    from tte2tee_fast.adapt.merge import merge_to_folder

    out = merge_to_folder(base_dir, adapter_dir, out_dir)
    click.echo(f"merged {adapter_dir} into {base_dir}: {out}")


@main.group("bench")
def bench_group() -> None:
    """Benchmarks: samplers (more subcommands: denoiser, kernels, e2e).

    \b
    Examples:
      tte2tee bench samplers --out runs/bench-samplers
    """


# Sampler names are literal so --help needs no torch import; tests/test_sampler_bench.py
# checks them against tte2tee_fast.diffusion.SAMPLERS.
_BENCH_REFERENCE_SAMPLERS = ("dpmpp_3m", "heun", "dpmpp_2m", "unipc", "ddim", "euler")


@bench_group.command("samplers")
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(path_type=str),
    help="Model folder [default: the packaged phantom-tte weights].",
)
@click.option(
    "--masks",
    default="phantom-tte",
    show_default=True,
    help="phantom-tte, phantom-tee, or a folder of image/mask pairs.",
)
@click.option("--n", type=click.IntRange(min=1), default=4, show_default=True, help="Frames.")
@click.option(
    "--nfe", default="5,10,20,50", show_default=True, help="Comma list of NFE budgets (>= 1)."
)
@click.option(
    "--samplers",
    default="all",
    show_default=True,
    help="'all' or a comma list: ddpm,ddim,euler,heun,dpmpp_2m,dpmpp_3m,dpmpp_2m_sde,unipc.",
)
@click.option(
    "--spacing",
    type=click.Choice(["trailing", "linspace", "karras"]),
    default="trailing",
    show_default=True,
)
@click.option(
    "--guidance",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Classifier-free guidance scale (1 = none; a guided call costs 2 NFE).",
)
@click.option(
    "--reference-nfe",
    type=click.IntRange(min=2),
    default=500,
    show_default=True,
    help="NFE of the reference ODE solution (its error is estimated at half this).",
)
@click.option(
    "--reference-sampler",
    type=click.Choice(_BENCH_REFERENCE_SAMPLERS),
    default="dpmpp_3m",
    show_default=True,
)
@click.option(
    "--ddpm-full/--no-ddpm-full",
    default=False,
    show_default=True,
    help="Add a ddpm row at 1000 NFE (the paper's ancestral sampling; costly).",
)
@click.option(
    "--bf16/--no-bf16",
    default=False,
    show_default=True,
    help="bf16 autocast for the network (the reference too).",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--threshold",
    type=click.FloatRange(min=0, max=100, min_open=True, max_open=True),
    default=2.0,
    show_default=True,
    help="rel-RMSE (%) of the verdict.",
)
@click.option(
    "--remap",
    default=None,
    help="MaskR² spec (file or built-in name) from the masks to the model channels "
    "[default: identity].",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for sampler_bench.json/.md, error_vs_nfe.png, samples_grid.png.",
)
def bench_samplers_cmd(
    model_dir: str | None,
    masks: str,
    n: int,
    nfe: str,
    samplers: str,
    threshold: float,
    remap: str | None,
    device: str,
    out_dir: str,
    **options,
) -> None:
    """Error vs NFE of every sampler against a fine ODE reference, and time per frame.

    Same masks and counter-based noise for every run; stochastic samplers are marked and
    left out of the verdict (the deterministic sampler reaching the threshold at the fewest
    NFE).

    \b
    Examples:
      tte2tee bench samplers --out runs/bench-samplers
      tte2tee bench samplers --model runs/tiny-tte/ema --n 8 --nfe 5,10,20 --out runs/bs
      tte2tee bench samplers --samplers heun,dpmpp_2m,unipc --guidance 2 --out runs/bs-cfg
    """
    from tte2tee_fast.evaluate.sampler_bench import (
        SamplerBenchConfig,
        bench_samplers,
        parse_nfes,
        parse_samplers,
    )

    config = SamplerBenchConfig(
        samplers=parse_samplers(samplers),
        nfes=parse_nfes(nfe),
        threshold=threshold / 100.0,
        **options,
    )
    _, paths = bench_samplers(model_dir, masks, n, config, out_dir, remap, device)
    click.echo(open(paths["markdown"]).read().rstrip())
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


@main.command("sample")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Model folder (default: the packaged phantom-trained weights).",
)
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
    help="ddpm, ddim, euler, heun, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde, unipc.",
)
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--spacing",
    type=click.Choice(["trailing", "leading", "linspace", "karras"]),
    default="trailing",
    show_default=True,
)
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
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed.")
@click.option("--mask-seed", type=int, default=0, show_default=True, help="Phantom mask seed.")
@click.option(
    "--view",
    type=click.Choice(["a4c", "a2c", "me4c"]),
    default=None,
    help="Phantom view (default: the modality's first).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--bf16/--no-bf16",
    default=True,
    show_default=True,
    help="bf16 autocast for the network (weights stay fp32).",
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
    **options,
) -> None:
    """Sample frames for conditioning masks and write PNGs, a grid and a report.

    \b
    Examples:
      tte2tee sample --n 8 --sampler ddpm --steps 1000 --out runs/sample-ddpm
      tte2tee sample --sampler dpmpp_2m --steps 10 --out runs/sample-fast
      tte2tee sample --model runs/merged-tee --masks phantom-tee --out runs/sample-tee
    """
    from tte2tee_fast.generate.sample import SampleConfig, run_sample

    report = run_sample(
        out_dir,
        model_dir,
        masks,
        n,
        SampleConfig(**options),
        remap=remap,
        mask_seed=mask_seed,
        view=view,
    )
    click.echo(
        f"wrote {n} frames, grid.png and report.json to {out_dir} "
        f"({report['seconds_per_frame']:.3f} s/frame; outside-cone std "
        f"{report['outside_std']:.2f}; max region-mean rel. diff "
        f"{report.get('max_rel_diff', float('nan')):.3f})"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
