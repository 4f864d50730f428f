"""Export commands for GPU engines and reduced precision: ``tte2tee export trt``, ``refit`` and
``quantize`` (registered on the ``export`` group in :mod:`tte2tee_fast.commands.export`)."""

from __future__ import annotations

import click


@click.command("trt")
@click.option(
    "--onnx",
    "onnx_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Denoiser ONNX from `tte2tee export onnx`.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Plan file to write (its sidecar is OUT.json).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp16", "bf16", "fp32"]),
    default="fp16",
    show_default=True,
    help="Kernel precision TensorRT may use.",
)
@click.option(
    "--batch",
    default="1:8:32",
    show_default=True,
    help="Batch of the optimisation profile: N or MIN:OPT:MAX.",
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    default=None,
    help="Timing cache file, read if present and written back (faster rebuilds).",
)
@click.option(
    "--refittable",
    is_flag=True,
    help="Build with REFIT so `export refit` can swap an adapter without a rebuild.",
)
@click.option(
    "--workspace-gib",
    type=click.FloatRange(0.25, 256),
    default=4.0,
    show_default=True,
    help="Builder workspace memory limit.",
)
def trt_cmd(onnx_path, out, precision, batch, timing_cache, refittable, workspace_gib) -> None:
    """Build a TensorRT engine (plan + JSON sidecar) from a denoiser ONNX. Needs ``tensorrt``
    and an NVIDIA GPU; the plan runs only on that GPU model and TensorRT version.

    \b
    Example:
      tte2tee export trt --onnx runs/tee.onnx --out runs/tee.plan --precision fp16 \\
          --batch 1:8:32 --timing-cache runs/trt.cache --refittable
    """
    from tte2tee_fast.export.tensorrt import build_engine

    path = build_engine(onnx_path, out, precision, batch, timing_cache, refittable, workspace_gib)
    click.echo(f"wrote {path} and {path.name}.json ({precision}, batch {batch})")


@click.command("refit")
@click.option(
    "--engine",
    "plan",
    required=True,
    type=click.Path(dir_okay=False),
    help="Refittable plan from `tte2tee export trt --refittable`.",
)
@click.option("--adapter", required=True, help="Adapter folder or packaged name to swap in.")
@click.option("--model", default=None, help="Base model folder; default: the packaged base.")
@click.option(
    "--onnx",
    "onnx_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="The ONNX the plan was built from; default: the path in its sidecar.",
)
@click.option(
    "--onnx-adapter",
    default=None,
    help="Adapter the ONNX was exported with, if any (to match its weights).",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(0, None),
    default=None,
    help="Max relative eps error against torch after the refit; default 1e-3 for "
    "fp32 plans, 5e-2 for fp16 / bf16.",
)
def refit_cmd(plan, adapter, model, onnx_path, onnx_adapter, tolerance) -> None:
    """Swap the adapter of a refittable TensorRT engine in place, without a rebuild, then
    check its eps against torch.

    \b
    Example:
      tte2tee export refit --engine runs/tte.plan --adapter phantom-tee
    """
    from tte2tee_fast.errors import InputError
    from tte2tee_fast.export.tensorrt import read_sidecar
    from tte2tee_fast.export.trt_refit import refit_engine

    report = refit_engine(plan, adapter, model, onnx_path, onnx_adapter)
    if tolerance is None:
        tolerance = 1e-3 if read_sidecar(plan).get("precision") == "fp32" else 5e-2
    click.echo(
        f"refitted {report.plan}: {report.weights_set} weights from the merged model, "
        f"{report.constants_set} from the ONNX; max relative eps error vs torch "
        f"{report.max_rel_error:.2e}"
    )
    if not report.max_rel_error <= tolerance:
        raise InputError(
            f"refitted engine {plan} is off torch by {report.max_rel_error:.2e} "
            f"(tolerance {tolerance:.0e})"
        )


@click.command("quantize")
@click.option(
    "--onnx",
    "onnx_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="fp32 denoiser ONNX from `tte2tee export onnx`.",
)
@click.option(
    "--backend",
    type=click.Choice(["ort", "openvino"]),
    default="ort",
    show_default=True,
    help="ort: a QDQ / fp16 ONNX; openvino: an NNCF int8 IR.",
)
@click.option(
    "--precision",
    type=click.Choice(["int8", "fp16"]),
    default="int8",
    show_default=True,
    help="fp16: an ONNX for GPUs (ort backend only).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output .onnx (ort) or .xml (openvino).",
)
@click.option(
    "--calib",
    type=click.IntRange(1, 100000),
    default=200,
    show_default=True,
    help="Calibration rows recorded from sampling runs (int8).",
)
@click.option(
    "--calib-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Calibration .npz to read (or, when absent, to write) instead of recording "
    "afresh each time.",
)
@click.option(
    "--steps",
    type=click.IntRange(1, 1000),
    default=10,
    show_default=True,
    help="Sampler steps of the calibration runs (ddim).",
)
@click.option("--model", default=None, help="Base model the ONNX came from; default: packaged.")
@click.option("--adapter", default=None, help="Adapter merged into the ONNX, if any.")
@click.option(
    "--ignore",
    type=click.Choice(["none", "first_last", "first_last_time"]),
    default="first_last",
    show_default=True,
    help="Layers kept in float (int8): first/last conv, and the time embedding.",
)
@click.option("--seed", type=click.IntRange(0, None), default=0, show_default=True)
def quantize_cmd(
    onnx_path, backend, precision, out, calib, calib_file, steps, model, adapter, ignore, seed
) -> None:
    """Write an int8 engine (calibrated on U-Net inputs of real sampling runs over phantom
    masks) or an fp16 ONNX, and print its eps error against the fp32 engine.

    \b
    Examples:
      tte2tee export quantize --onnx runs/tee.onnx --adapter phantom-tee --out runs/tee-int8.onnx
      tte2tee export quantize --onnx runs/tee.onnx --backend openvino --adapter phantom-tee \\
          --calib-file runs/calib.npz --out runs/tee-int8.xml
      tte2tee export quantize --onnx runs/tee.onnx --precision fp16 --out runs/tee-fp16.onnx
    """
    from tte2tee_fast.export.quantize import quantize_engine

    path, err = quantize_engine(
        onnx_path, out, backend, precision, calib, calib_file, steps, model, adapter, ignore, seed
    )
    click.echo(f"wrote {path} ({backend} {precision}); max relative eps error vs fp32 {err:.2e}")
