"""The commands of the ``tte2tee`` command line, one module per area; the click group that
registers them is :mod:`tte2tee_fast.cli`. Commands only parse options and call the library:
library imports stay inside the command functions, so ``tte2tee --help`` imports no torch."""

from collections.abc import Callable
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


def karras_options(command: Callable) -> Callable:
    """``--t-min`` and ``--rho``: where a karras grid ends and how it spaces its steps (the
    ``t_min`` and ``rho`` of :meth:`~tte2tee_fast.diffusion.NoiseSchedule.timesteps`); shared by
    ``tte2tee sample`` and ``tte2tee bench samplers``."""
    command = click.option(
        "--rho",
        type=click.FloatRange(min=0, min_open=True),
        default=7.0,
        show_default=True,
        help="karras spacing only: sigmas evenly spaced in sigma^(1/rho) "
        "(large rho: log-SNR uniform).",
    )(command)
    return click.option(
        "--t-min",
        type=click.IntRange(min=0, max=998),
        default=None,
        help="karras spacing only: end the grid at this training timestep instead of 0 (the "
        "last step then jumps to the clean estimate).",
    )(command)
