"""Data commands: ``tte2tee phantom`` (generate image/mask pairs) and ``tte2tee inspect``
(check a dataset)."""

from __future__ import annotations

import click


@click.command("phantom")
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


@click.command("inspect")
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
