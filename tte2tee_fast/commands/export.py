"""Export commands: ``tte2tee export weights`` (ONNX and TensorRT join this group later)."""

from __future__ import annotations

import click


@click.group("export")
def export_group() -> None:
    """Write a model in another form: a smaller weights file (ONNX / TensorRT: not built yet)."""


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
