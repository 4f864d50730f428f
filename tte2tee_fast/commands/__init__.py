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


def model_option(
    help: str = "Model folder [default: the packaged phantom-tte weights].",
) -> Callable:
    """``--model`` (as ``model_dir``): a model folder, ``None`` for the packaged weights."""
    return click.option(
        "--model", "model_dir", default=None, type=click.Path(path_type=str), help=help
    )


def merged_adapter_option(command: Callable) -> Callable:
    """``--adapter``: a LoRA adapter merged in memory, the packaged ``phantom-tee`` by default,
    ``none`` (passed on as ``None``) for the bare model; shared by ``generate``, ``tune-plan``
    and ``bench fewstep``."""
    return click.option(
        "--adapter",
        default="phantom-tee",
        show_default=True,
        callback=lambda _ctx, _param, value: None if value.lower() == "none" else value,
        help="LoRA adapter folder or packaged name, merged in memory; 'none' for the bare model.",
    )(command)


def device_option(command: Callable) -> Callable:
    """``--device``: a torch device name."""
    return click.option(
        "--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ..."
    )(command)


def training_options(checkpoint_every: int) -> Callable[[Callable], Callable]:
    """The options of the training loop that ``tte2tee train`` and ``tte2tee adapt`` share
    (same meaning, same defaults but ``--checkpoint-every``): ``--schema``, ``--bf16``,
    ``--checkpoint-every``, ``--log-every``, ``--seed``, ``--device``, ``--resume``."""

    def decorate(command: Callable) -> Callable:
        for option in reversed(
            (
                click.option(
                    "--schema",
                    type=click.Choice(["tte", "tee", "camus"]),
                    default=None,
                    help="Label schema of a --data folder without card.json.",
                ),
                click.option(
                    "--bf16/--no-bf16",
                    default=True,
                    show_default=True,
                    help="bf16 autocast for the network.",
                ),
                click.option(
                    "--checkpoint-every",
                    type=click.IntRange(min=1),
                    default=checkpoint_every,
                    show_default=True,
                ),
                click.option(
                    "--log-every", type=click.IntRange(min=1), default=10, show_default=True
                ),
                click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
                device_option,
                click.option(
                    "--resume",
                    is_flag=True,
                    help="Continue the checkpoint in --out (its saved options apply; pass "
                    "--steps to extend).",
                ),
            )
        ):
            command = option(command)
        return command

    return decorate


def backend_options(command: Callable) -> Callable:
    """``--backend``, ``--precision``, ``--engine``: which denoiser runs
    (:mod:`tte2tee_fast.generate.backends`); shared by ``sample``, ``generate`` and ``bench``."""
    command = click.option(
        "--engine",
        type=click.Path(dir_okay=False, path_type=str),
        default=None,
        help="Engine file to run (.onnx, .xml, .plan) instead of the one exported on first use.",
    )(command)
    command = click.option(
        "--precision",
        type=click.Choice(["auto", "fp32", "bf16"]),
        default="auto",
        show_default=True,
        help="auto: bf16 only where the device computes it in hardware (CUDA, AVX512_BF16, AMX).",
    )(command)
    return click.option(
        "--backend",
        type=click.Choice(["auto", "torch", "compile", "ort", "openvino", "trt"]),
        default="auto",
        show_default=True,
        help="Denoiser backend; auto: the fastest installed here (generate/backends.py).",
    )(command)


def precision_of(precision: str, bf16: bool | None) -> str:
    """``--precision`` with the ``--bf16/--no-bf16`` shorthand applied (when given)."""
    if bf16 is None or precision != "auto":
        return precision
    return "bf16" if bf16 else "fp32"
