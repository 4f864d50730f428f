"""The commands of the ``tte2tee`` command line, one module per area; the click group that
registers them is :mod:`tte2tee_fast.cli`. Commands only parse options and call the library:
library imports stay inside the command functions, so ``tte2tee --help`` imports no torch."""

from typing import Any

import click


def explicit_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``options`` the user gave on the command line (not left at their defaults): what a
    ``--resume`` applies over the saved run config."""
    ctx = click.get_current_context()
    return {
        k: v
        for k, v in options.items()
        if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT
    }
