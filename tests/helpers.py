"""Helpers shared by several test files (imported as ``from helpers import ...``: pytest puts
the tests folder on ``sys.path``)."""

from __future__ import annotations

import torch
from torch import nn

from tte2tee_fast.models import from_preset


def randomise_zero_params(
    model: nn.Module, std: float = 0.05, generator: torch.Generator | None = None
) -> nn.Module:
    """Fill every all-zero parameter of ``model`` (SDM's zero-initialised output convs) with
    N(0, ``std``) values, as after training: a fresh model otherwise predicts eps == 0, hides
    every difference and passes no gradient back to LoRA layers."""
    with torch.no_grad():
        for p in model.parameters():
            if not bool(p.any()):
                p.normal_(0.0, std, generator=generator)
    return model


def random_micro(seed: int = 0, std: float = 0.05, **overrides) -> nn.Module:
    """A ``micro`` SemanticUNet drawn with torch seed ``seed``, zero layers randomised too."""
    torch.manual_seed(seed)
    return randomise_zero_params(from_preset("micro", **overrides), std)


def error_line(result, *fragments: str) -> str:
    """The one ``Error: ...`` line of a CLI ``result`` that must exit with code 2 (no traceback,
    nothing else printed); each of ``fragments`` must be in it."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


def generate_on(backends: tuple[str, ...], args: list[str], out_root) -> dict[str, tuple]:
    """``tte2tee generate ARGS --backend B --precision fp32 --format npz`` per backend (fp32:
    auto is bf16 for torch on a CPU with bf16 hardware, not for ORT): per backend the images
    (int) and the dataset.json text."""
    import numpy as np
    from click.testing import CliRunner

    from tte2tee_fast.cli import main

    outs = {}
    for backend in backends:
        out = out_root / backend
        run = CliRunner().invoke(
            main,
            ["generate", "--no-progress", *args, "--backend", backend, "--precision", "fp32",
             "--format", "npz", "--out", str(out)],
        )  # fmt: skip
        assert run.exit_code == 0, run.output
        with np.load(next(out.glob("*.npz"))) as z:
            outs[backend] = (z["images"].astype(int), (out / "dataset.json").read_text())
    return outs
