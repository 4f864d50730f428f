"""Export commands: ``tte2tee export weights | onnx | openvino | check`` (TensorRT joins)."""

from __future__ import annotations

import click


@click.group("export")
def export_group() -> None:
    """Write a model in another form: a smaller weights file, an ONNX / OpenVINO engine; check
    an engine against torch.

    \b
    Examples:
      tte2tee export onnx --adapter phantom-tee --out runs/tee.onnx
      tte2tee export check runs/tee.onnx --adapter phantom-tee
      tte2tee export openvino --onnx runs/tee.onnx --out runs/tee.xml
    """


@export_group.command("weights")
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Model folder to export (config.json + safetensors), e.g. a training run's ema/.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    default="float16",
    show_default=True,
    help="Storage precision of the floating weights; loading always upcasts to float32.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write.")
def weights_cmd(model_dir: str, dtype: str, out: str) -> None:
    """Copy a model folder with its weights stored at ``--dtype`` (fp16: half the size).

    Files beside the weights that describe the model (maskr2.json, training.json) are copied
    too. This is how the packaged ``phantom-tte`` weights were written (README).

    \b
    Example:
      tte2tee export weights --model runs/phantom-tte/ema --dtype float16 --out DIR
    """
    from tte2tee_fast.models.io import export_weights

    path, size = export_weights(model_dir, out, dtype)
    click.echo(f"wrote {path} ({size / 1e6:.1f} MB of weights, {dtype})")


@export_group.command("onnx")
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(path_type=str),
    help="Base model folder or packaged name [default: the packaged phantom-tte weights].",
)
@click.option(
    "--adapter",
    default=None,
    help="LoRA adapter folder or packaged name (phantom-tee), merged in fp32 before export.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .onnx to write.")
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=None,
    help="Fixed batch (static shapes: faster in OpenVINO / TensorRT) [default: dynamic].",
)
@click.option(
    "--guidance/--no-guidance",
    default=False,
    show_default=True,
    help="Export the guided variant: input `guidance`, cond and null rows batched inside.",
)
@click.option("--opset", type=click.IntRange(min=18), default=18, show_default=True)
@click.option(
    "--bake-sampler",
    default=None,
    help="Bake this deterministic sampler's whole fixed-step loop into the graph (inputs noise "
    "and labels, output the frame): ddim, euler, heun, dpmpp_2m, dpmpp_3m, unipc or plan:FILE.",
)
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--spacing",
    type=click.Choice(["trailing", "linspace", "karras"]),
    default="trailing",
    show_default=True,
)
@click.option("--t-min", type=click.IntRange(min=0, max=998), default=10, show_default=True)
@click.option("--t-max", type=click.IntRange(min=1, max=999), default=999, show_default=True)
def onnx_cmd(
    model_dir: str | None,
    adapter: str | None,
    out: str,
    batch: int | None,
    guidance: bool,
    opset: int,
    bake_sampler: str | None,
    steps: int,
    spacing: str,
    t_min: int,
    t_max: int,
) -> None:
    """Export the merged denoiser to ONNX with the MaskR² lookup and one-hot inside the graph.

    Inputs: sample [B,1,H,W] float32, timestep [B] int64, labels [B,H,W] int64 (the adapter's
    schema); output eps. Metadata: schema, MaskR² spec, model / adapter / merged hashes.

    \b
    Examples:
      tte2tee export onnx --adapter phantom-tee --out runs/tee.onnx
      tte2tee export onnx --adapter phantom-tee --batch 8 --out runs/tee-b8.onnx
      tte2tee export onnx --model runs/tiny-tte/ema --guidance --out runs/tte-cfg.onnx
      tte2tee export onnx --adapter phantom-tee --bake-sampler unipc --steps 10 --out b.onnx
    """
    from tte2tee_fast.export.metadata import read_metadata
    from tte2tee_fast.export.onnx_export import export_onnx

    if bake_sampler is not None:
        from tte2tee_fast.diffusion.dense import sampler_plan
        from tte2tee_fast.export.baked import export_baked

        if guidance:
            raise click.UsageError("--bake-sampler bakes the unguided loop; drop --guidance")
        t_lo = t_min if spacing == "karras" else None
        plan = sampler_plan(bake_sampler, steps, spacing, 7.0, t_max, t_lo)
        path = export_baked(model_dir, adapter, plan, out, batch)
    else:
        path = export_onnx(model_dir, adapter, out, batch, guidance, opset)
    meta = read_metadata(path)
    click.echo(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, schema {meta['schema']}, "
        f"batch {meta['batch'] or 'dynamic'}, variant {meta['variant']}, opset {opset})"
    )


@export_group.command("openvino")
@click.option(
    "--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False), help="Engine .onnx."
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .xml to write.")
@click.option(
    "--compress-fp16/--no-compress-fp16",
    default=False,
    show_default=True,
    help="Store weights in fp16 (half the .bin; CPU inference decompresses them, so no speed-up, "
    "and its error, 1.6e-4 on the packaged model, is above the 1e-4 f32 parity bar).",
)
def openvino_cmd(onnx_path: str, out: str, compress_fp16: bool) -> None:
    """Convert an engine .onnx to OpenVINO IR (.xml + .bin + .meta.json sidecar).

    \b
    Examples:
      tte2tee export openvino --onnx runs/tee.onnx --out runs/tee.xml
      tte2tee export openvino --onnx runs/tee.onnx --compress-fp16 --out runs/tee-fp16.xml
    """
    from tte2tee_fast.export.openvino import convert_to_ir

    path = convert_to_ir(onnx_path, out, compress_fp16)
    size = path.with_suffix(".bin").stat().st_size
    click.echo(f"wrote {path} (+ .bin {size / 1e6:.1f} MB, fp16 weights: {compress_fp16})")


@export_group.command("check")
@click.argument("engine", type=click.Path(dir_okay=False))
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(path_type=str),
    help="Base model the engine claims [default: the packaged phantom-tte weights].",
)
@click.option("--adapter", default=None, help="Adapter the engine claims (folder or phantom-tee).")
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=1e-4,
    show_default=True,
    help="Max relative error of fp32 runners (denoiser output).",
)
@click.option(
    "--frame-steps",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="DDIM steps of the frame check (0: skip it); fp32 frames must stay within 1e-3.",
)
@click.option(
    "--runners",
    default=",".join(("ort_fp32", "openvino_f32", "openvino_bf16")),
    show_default=True,
    help="Comma list of runners: ort_fp32, openvino_f32, openvino_bf16.",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="[default: cores]")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the report."
)
def check_cmd(
    engine: str,
    model_dir: str | None,
    adapter: str | None,
    batch: int,
    tolerance: float,
    frame_steps: int,
    runners: str,
    threads: int | None,
    json_path: str | None,
) -> None:
    """ONNX Runtime and OpenVINO against torch (merged, eager fp32); exit 1 out of tolerance.

    Random and real phantom label maps at timesteps 0..999; the engine's hashes must match
    the given model and adapter.

    \b
    Examples:
      tte2tee export check runs/tee.onnx --adapter phantom-tee
      tte2tee export check runs/tte.onnx --model runs/tiny-tte/ema --json runs/check.json
    """
    from tte2tee_fast.export.check import CheckConfig, check_engine_file, format_report
    from tte2tee_fast.fsutil import write_json_atomic

    names = tuple(r.strip() for r in runners.split(",") if r.strip())
    config = CheckConfig(
        batch=batch, tolerance=tolerance, frame_steps=frame_steps, runners=names, threads=threads
    )
    report = check_engine_file(engine, model_dir, adapter, config)
    click.echo(format_report(report), nl=False)
    if json_path:
        write_json_atomic(json_path, report)
        click.echo(f"wrote {json_path}")
    if not report["ok"]:
        raise SystemExit(1)


def _register_engine_commands() -> None:
    """TensorRT, refit and quantize live in commands/export_trt.py (their own module)."""
    from tte2tee_fast.commands.export_trt import quantize_cmd, refit_cmd, trt_cmd

    for cmd in (trt_cmd, refit_cmd, quantize_cmd):
        export_group.add_command(cmd)


_register_engine_commands()
