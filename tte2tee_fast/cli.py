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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
