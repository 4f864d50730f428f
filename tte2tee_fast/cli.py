"""The ``tte2tee`` command line. Commands only parse options and call library functions.

Examples::

    tte2tee phantom --modality tee --n 8 --size 128 --out runs/phantom-tee
    tte2tee phantom --modality tte --view a4c --n 16 --preview runs/a4c.png --out runs/a4c
"""

from __future__ import annotations

import sys

import click

from tte2tee_fast import __version__
from tte2tee_fast.commands.adapt import adapt_cmd, merge_cmd
from tte2tee_fast.commands.bench import bench_group
from tte2tee_fast.commands.data import inspect_cmd, phantom_cmd
from tte2tee_fast.commands.evaluate import evaluate_group
from tte2tee_fast.commands.export import export_group
from tte2tee_fast.commands.generate import generate_cmd
from tte2tee_fast.commands.model import info_cmd, sample_cmd, train_cmd
from tte2tee_fast.commands.plan import distill_cmd, tune_plan_cmd
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
    Examples (the data path, in order):
      tte2tee phantom --modality tee --n 8 --size 128 --preview runs/tee.png --out runs/phantom-tee
      tte2tee train --data phantom-tte --preset tiny --steps 20000 --out runs/tiny-tte
      tte2tee sample --model runs/tiny-tte/ema --sampler dpmpp_2m --steps 10 --out runs/sample
      tte2tee adapt --base runs/tiny-tte/ema --targets mlp --rank 1 --out runs/tee-adapter
      tte2tee merge --base runs/tiny-tte/ema --adapter runs/tee-adapter --out runs/tiny-tee
      tte2tee sample --model runs/tiny-tee --masks phantom-tee --out runs/sample-tee
      tte2tee bench samplers --model runs/tiny-tte/ema --out runs/bench-samplers
    """


# The commands live in tte2tee_fast/commands/, one module per area; each only parses options and
# calls the library, with the library imports inside the command function so that
# `tte2tee --help` stays fast and import-time work stays at zero.
for _command in (
    adapt_cmd,
    bench_group,
    distill_cmd,
    evaluate_group,
    export_group,
    generate_cmd,
    info_cmd,
    inspect_cmd,
    merge_cmd,
    phantom_cmd,
    sample_cmd,
    train_cmd,
    tune_plan_cmd,
):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
