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


@main.group("bench")
def bench_group() -> None:
    """Benchmarks: samplers, kernels, denoiser (e2e to come).

    \b
    Examples:
      tte2tee bench samplers --out runs/bench-samplers
      tte2tee bench kernels --json runs/bench-kernels.json
      tte2tee bench denoiser --batch 1,8 --json runs/bench-denoiser.json
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
    **options,
) -> None:
    """Sample frames for conditioning masks and write PNGs, a grid and a report.

    With --unmerged --adapters A1,A2,... the adapters (trained on the --model base, all
    taking the same mask schema) are fused into the base unmerged and share every batch:
    frame i is drawn by adapter i % K, conditioned through that adapter's own MaskR² spec.

    \b
    Examples:
      tte2tee sample --n 8 --sampler ddpm --steps 1000 --out runs/sample-ddpm
      tte2tee sample --sampler dpmpp_2m --steps 10 --out runs/sample-fast
      tte2tee sample --model runs/merged-tee --masks phantom-tee --out runs/sample-tee
      tte2tee sample --model runs/base --unmerged --adapters runs/tee-a,runs/tee-b \\
        --masks phantom-tee --out runs/sample-mixed
    """
    from tte2tee_fast.generate.multi_adapter import parse_adapter_list
    from tte2tee_fast.generate.sample import SampleConfig, run_sample

    if unmerged != (adapters is not None):
        raise InputError("--unmerged and --adapters go together (--unmerged --adapters A1,A2)")
    folders = parse_adapter_list(adapters) if adapters is not None else None

    report = run_sample(
        out_dir,
        model_dir,
        masks,
        n,
        SampleConfig(**options),
        remap=remap,
        mask_seed=mask_seed,
        view=view,
        adapters=folders,
    )
    click.echo(
        f"wrote {n} frames, grid.png and report.json to {out_dir} "
        f"({report['seconds_per_frame']:.3f} s/frame; outside-cone std "
        f"{report['outside_std']:.2f}; max region-mean rel. diff "
        f"{report.get('max_rel_diff', float('nan')):.3f})"
    )


@bench_group.command("kernels")
@click.option(
    "--shapes",
    type=click.Choice(["small", "paper"]),
    default="small",
    show_default=True,
    help="small: the tiny model's layer shapes; paper: sdm256's.",
)
@click.option(
    "--kernels",
    default="all",
    show_default=True,
    help="'all' or a comma list: lora_linear,maskr2_one_hot,spade_norm_act.",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="CPU timing calls per case (CUDA: triton's do_bench decides).",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the rows."
)
def bench_kernels_cmd(
    shapes: str, kernels: str, repeats: int, device: str, json_path: str | None
) -> None:
    """Triton kernels (fused LoRA linear, MaskR² one-hot, SPADE norm) against torch.

    Shapes are the model's own (Linear layers, SPADE inputs of the tiny or sdm256 preset);
    LoRA at rows 1/8/64 and ranks 1/4/16. On CUDA: do_bench medians of the Triton kernel,
    torch eager (unmerged, peft-style), the merged GEMM and the bandwidth/compute floor. On
    the CPU: the torch paths only; the Triton columns read "no GPU".

    \b
    Examples:
      tte2tee bench kernels
      tte2tee bench kernels --shapes paper --json runs/bench-kernels.json
      tte2tee bench kernels --kernels maskr2_one_hot --repeats 20
    """
    from tte2tee_fast.evaluate.kernel_bench import (
        config_for,
        format_table,
        parse_kernels,
        run_kernel_bench,
        write_json,
    )

    config = config_for(shapes, repeats, parse_kernels(kernels))
    result = run_kernel_bench(config, device)
    click.echo(format_table(result["rows"]), nl=False)
    for note in result["notes"]:
        click.echo(f"# {note}")
    if json_path:
        click.echo(f"wrote {write_json(json_path, result)}")


@bench_group.command("denoiser")
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(path_type=str),
    help="Model folder [default: the packaged weights, else --preset tiny, random weights].",
)
@click.option(
    "--preset",
    type=click.Choice(["micro", "tiny", "sdm256"]),
    default=None,
    help="Time a preset with random weights instead of a model folder.",
)
@click.option(
    "--batch", "batches", default="1,8,16", show_default=True, help="Comma list of batch sizes."
)
@click.option("--bf16/--no-bf16", default=True, show_default=True, help="Also time bf16 autocast.")
@click.option(
    "--compile/--no-compile",
    "use_compile",
    default=False,
    show_default=True,
    help="Also time torch.compile (compiles first: slow, minutes for sdm256).",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="CPU timing calls per case (CUDA: triton's do_bench decides).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the rows."
)
def bench_denoiser_cmd(
    model_dir: str | None,
    preset: str | None,
    batches: str,
    bf16: bool,
    use_compile: bool,
    repeats: int,
    device: str,
    json_path: str | None,
) -> None:
    """Forward time per image of the denoiser: eager fp32 (baseline), bf16 autocast, compile.

    Ratios are against eager fp32 at the same batch size, in the same process; max_rel_err
    is each mode's output against eager fp32 on the same inputs.

    \b
    Examples:
      tte2tee bench denoiser
      tte2tee bench denoiser --model runs/tiny-tte/ema --batch 1,8 --json runs/denoiser.json
      tte2tee bench denoiser --preset sdm256 --batch 1 --compile --device cuda
    """
    from tte2tee_fast.evaluate.denoiser_bench import (
        DenoiserBenchConfig,
        bench_denoiser,
        format_table,
        load_bench_model,
        parse_batches,
    )
    from tte2tee_fast.evaluate.kernel_bench import write_json

    config = DenoiserBenchConfig(parse_batches(batches), bf16, use_compile, repeats)
    model, name = load_bench_model(model_dir, preset)
    click.echo(f"model: {name}")
    if use_compile:
        click.echo("torch.compile: the first call per batch size compiles (slow)", err=True)
    result = bench_denoiser(model, config, device, model_name=name)
    click.echo(format_table(result), nl=False)
    if json_path:
        click.echo(f"wrote {write_json(json_path, result)}")


# Defaults below mirror tte2tee_fast.adapt.train.AdaptConfig (kept literal so --help needs no
# torch import; tests/test_cli_adapt.py checks that they agree).
@main.command("adapt")
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
    "--schema",
    type=click.Choice(["tte", "tee", "camus"]),
    default=None,
    help="Label schema of a --data folder without card.json.",
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
    "--bf16/--no-bf16", default=True, show_default=True, help="bf16 autocast for the network."
)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=250, show_default=True)
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Adapter folder (also holds checkpoint/ and train_log.jsonl); with --ablate, the "
    "folder of the table and one adapter per preset.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the checkpoint in --out (its saved options apply; pass --steps to extend).",
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
def adapt_cmd(
    out_dir: str, resume: bool, device: str, ablate: bool, last_k: int, **options
) -> None:
    """Train a LoRA adapter of a frozen base model on new-modality data (MaskR² remap).

    Prints the trainable parameter count, then trains with the loop of `tte2tee train`
    (checkpoints, exact --resume). OUT is the adapter (the EMA of the LoRA weights), ready
    for `tte2tee merge` and `tte2tee sample --unmerged --adapters`.

    \b
    Examples:
      tte2tee adapt --out runs/tee-lora                       (packaged base, phantom TEE)
      tte2tee adapt --base runs/tiny-tte/ema --targets mlp --rank 4 --out runs/tee-lora
      tte2tee adapt --data my_tee_pngs --schema tee --remap tee->tte --out runs/tee-lora
      tte2tee adapt --out runs/tee-lora --resume --steps 2000
      tte2tee adapt --base runs/tiny-tte/ema --ablate --steps 500 --out runs/ablation
    """
    from pathlib import Path

    from tte2tee_fast.adapt.train import AdaptConfig, adapt
    from tte2tee_fast.adapt.train import ablate as run_ablation
    from tte2tee_fast.models.train import resume_config

    ctx = click.get_current_context()
    given = {
        k: v
        for k, v in options.items()
        if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT
    }
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
        click.echo(f"ablation of {len(table['rows'])} presets in {out_dir}:")
        click.echo((Path(out_dir) / "ablation.md").read_text())
        return
    result = adapt(config, out_dir, resume=resume, device=device, report=click.echo)
    click.echo(
        f"trained {result.step} steps ({result.step - result.start_step} this run): adapter "
        f"(EMA of the LoRA weights) in {result.out_dir}"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
