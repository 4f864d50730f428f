"""The ``tte2tee bench`` group: ``samplers``, ``kernels`` and ``denoiser``."""

from __future__ import annotations

import click

from tte2tee_fast.commands import (
    backend_options,
    device_option,
    karras_options,
    merged_adapter_option,
    model_option,
)


@click.group("bench")
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
@model_option()
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
@karras_options
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
@click.option(
    "--clip/--no-clip",
    default=False,
    show_default=True,
    help="Solve the ODE with the data prediction clamped to [-1, 1] (as `tte2tee sample` "
    "samples) instead of the plain probability-flow ODE.",
)
@click.option(
    "--t-max",
    type=click.IntRange(min=1, max=999),
    default=979,
    show_default=True,
    help="First timestep of every run, the reference included (999: diffusers' start, where "
    "the cosine schedule's alpha is 4.9e-5 and the plain ODE is ill-conditioned).",
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
    from tte2tee_fast.bench.samplers import (
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
    from tte2tee_fast.bench.kernels import (
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
@model_option("Model folder [default: the packaged weights, else --preset tiny, random weights].")
@click.option(
    "--preset",
    type=click.Choice(["micro", "tiny", "sdm256"]),
    default=None,
    help="Time a preset with random weights instead of a model folder.",
)
@click.option(
    "--batch", "batches", default="1,8,16", show_default=True, help="Comma list of batch sizes."
)
@click.option(
    "--adapter",
    default=None,
    help="LoRA adapter folder or packaged name (phantom-tee) merged into the model first.",
)
@click.option(
    "--backends",
    default="torch",
    show_default=True,
    help="Comma list: torch (always: eager fp32 is the baseline), ort, openvino.",
)
@click.option(
    "--bf16/--no-bf16",
    default=True,
    show_default=True,
    help="Also time bf16 (torch autocast, OpenVINO bf16 hint).",
)
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
    adapter: str | None,
    backends: str,
    batches: str,
    bf16: bool,
    use_compile: bool,
    repeats: int,
    device: str,
    json_path: str | None,
) -> None:
    """Forward time per image of the denoiser: eager fp32 (baseline), bf16 autocast, compile,
    ONNX Runtime and OpenVINO engines (f32 / bf16 hint, 1 and 2 streams).

    Ratios are against eager fp32 at the same batch size, in the same process; max_rel_err
    is each mode's output against eager fp32 on the same inputs.

    \b
    Examples:
      tte2tee bench denoiser
      tte2tee bench denoiser --adapter phantom-tee --backends torch,ort,openvino
      tte2tee bench denoiser
      tte2tee bench denoiser --model runs/tiny-tte/ema --batch 1,8 --json runs/denoiser.json
      tte2tee bench denoiser --preset sdm256 --batch 1 --compile --device cuda
    """
    from tte2tee_fast.bench.denoiser import (
        DenoiserBenchConfig,
        bench_denoiser,
        format_table,
        load_bench_setup,
        parse_backends,
        parse_batches,
    )
    from tte2tee_fast.bench.kernels import write_json

    config = DenoiserBenchConfig(
        parse_batches(batches), bf16, use_compile, repeats, backends=parse_backends(backends)
    )
    model, spec, name = load_bench_setup(model_dir, preset, adapter)
    click.echo(f"model: {name}")
    if use_compile:
        click.echo("torch.compile: the first call per batch size compiles (slow)", err=True)
    result = bench_denoiser(model, config, device, model_name=name, spec=spec)
    click.echo(format_table(result), nl=False)
    if json_path:
        click.echo(f"wrote {write_json(json_path, result)}")


@bench_group.command("e2e")
@model_option()
@click.option(
    "--adapter", default="phantom-tee", show_default=True, help="Adapter (merged for ours)."
)
@click.option(
    "--n", type=click.IntRange(min=1), default=8, show_default=True, help="Frames (b, c)."
)
@click.option(
    "--n-reference",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Frames of the 1000-step reference (~1000 forwards each).",
)
@click.option(
    "--sampler",
    default="auto",
    show_default=True,
    help="Ours: sampler, plan:FILE, or auto (generate's default).",
)
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True)
@backend_options
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--pipelines", default="reference,diffusers,ours", show_default=True, help="Comma list."
)
@click.option("--segmenter", default=None, help="Segmenter folder [default: the packaged one].")
@click.option(
    "--quick", is_flag=True, help="A smoke run: 2 frames, 8-step reference, 4-step others."
)
@device_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def bench_e2e_cmd(
    model_dir: str | None,
    adapter: str,
    n: int,
    n_reference: int,
    sampler: str,
    steps: int,
    backend: str,
    precision: str,
    engine: str | None,
    batch_size: int,
    pipelines: str,
    segmenter: str | None,
    quick: bool,
    device: str,
    out_dir: str,
) -> None:
    """Reference (eager fp32, peft unmerged, DDPM 1000) vs diffusers-style (DPMSolver 20) vs
    ours, on the same masks and noise, with fidelity (Dice) beside every speed.

    \b
    Examples:
      tte2tee bench e2e --out runs/bench-e2e
      tte2tee bench e2e --quick --out runs/bench-e2e-quick
      tte2tee bench e2e --pipelines diffusers,ours --n 16 --out runs/bench-e2e
    """
    import dataclasses

    from tte2tee_fast.bench.e2e import QUICK, E2EConfig, bench_e2e, markdown, write_outputs

    config = E2EConfig(
        n=n,
        n_reference=n_reference,
        sampler=sampler,
        steps=steps,
        backend=backend,
        precision=precision,
        batch_size=batch_size,
        model=model_dir,
        adapter=adapter,
        segmenter=segmenter,
        pipelines=tuple(p.strip() for p in pipelines.split(",") if p.strip()),
        device=device,
    )
    if engine is not None:
        raise click.UsageError("bench e2e exports its own engines; --engine is not used here")
    if quick:
        config = dataclasses.replace(config, **QUICK)
    result = bench_e2e(config)
    click.echo(markdown(result), nl=False)
    files = write_outputs(result, out_dir)
    click.echo(f"wrote {', '.join(files.values())}")


@bench_group.command("fewstep")
@model_option()
@merged_adapter_option
@click.option(
    "--methods",
    default=None,
    help="Comma list of SAMPLER:STEPS, plan:FILE|NAME and student:DIR (tte2tee distill) "
    "[default: ddpm:1000, unipc:10, unipc and the packaged learned plans and distilled students "
    "of the model at NFE 2, 3, 4, 6].",
)
@click.option("--n", type=click.IntRange(min=2), default=32, show_default=True)
@click.option(
    "--n-ddpm", type=click.IntRange(min=1), default=8, show_default=True, help="Frames of ddpm."
)
@click.option("--teacher-steps", type=click.IntRange(min=8), default=200, show_default=True)
@click.option(
    "--seed", type=click.IntRange(min=0), default=7, show_default=True, help="Noise and masks."
)
@backend_options
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--segmenter", default=None, help="Segmenter folder [default: the packaged one of the schema]."
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def bench_fewstep_cmd(
    model_dir: str | None,
    adapter: str | None,
    methods: str | None,
    n: int,
    n_ddpm: int,
    teacher_steps: int,
    seed: int,
    backend: str,
    precision: str,
    engine: str | None,
    batch_size: int,
    segmenter: str | None,
    out_dir: str,
) -> None:
    """Few-step samplers (learned plans, unipc) against unipc 10 and DDPM 1000 on held-out masks
    and noise: rel-RMSE to the converged ODE, fidelity (Dice), KID, region means, s/frame.

    \b
    Examples:
      tte2tee bench fewstep --out runs/bench-fewstep-tee
      tte2tee bench fewstep --adapter none --out runs/bench-fewstep-tte
      tte2tee bench fewstep --methods unipc:4,plan:runs/plans/nfe4.json --n-ddpm 2 --out runs/f
    """
    from tte2tee_fast.bench.fewstep import (
        FewStepConfig,
        bench_fewstep,
        default_methods,
        markdown,
        write_outputs,
    )

    if engine is not None:
        raise click.UsageError("bench fewstep exports its own engines; --engine is not used here")
    chosen = (
        tuple(m.strip() for m in methods.split(",") if m.strip())
        if methods
        else default_methods(adapter)
    )
    config = FewStepConfig(
        methods=chosen,
        n=n,
        n_ddpm=n_ddpm,
        model=model_dir,
        adapter=adapter,
        mask_seed=seed,
        seed=seed,
        teacher_steps=teacher_steps,
        backend=backend,
        precision=precision,
        batch_size=batch_size,
        segmenter=segmenter,
    )
    result = bench_fewstep(config)
    click.echo(markdown(result), nl=False)
    files = write_outputs(result, out_dir)
    click.echo(f"wrote {', '.join(files.values())}")
