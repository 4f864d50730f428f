"""``tte2tee bench e2e`` on a micro model: every pipeline runs on the same masks, the report has
speed and fidelity for each, the files are written (a smoke run: no timing assertions)."""

from __future__ import annotations

import copy
import json

import pytest
from click.testing import CliRunner
from test_adapter import make_adapter, micro_base

from tte2tee_fast.adapt.adapter import attach_adapter
from tte2tee_fast.bench.e2e import E2EConfig, forward_flops
from tte2tee_fast.cli import main
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import save_model

pytest.importorskip("monai")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_e2e_quick_on_a_micro_model(tmp_path) -> None:
    base = micro_base(2)
    save_model(base, tmp_path / "base")
    make_adapter(base, tmp_path / "lora", preset="mlp", rank=1)
    out = tmp_path / "e2e"
    res = CliRunner().invoke(
        main,
        ["bench", "e2e", "--quick", "--model", str(tmp_path / "base"), "--adapter",
         str(tmp_path / "lora"), "--backend", "torch", "--precision", "fp32", "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    result = json.loads((out / "e2e.json").read_text())
    assert set(result["pipelines"]) == {"reference", "diffusers", "ours"}
    for row in result["pipelines"].values():
        assert row["frames_per_s"] > 0 and 0.0 <= row["fidelity"]["mean_dice"]["mean"] <= 1.0
    assert result["pipelines"]["reference"]["nfe"] == 8
    assert result["ratios"]["ours/reference"] > 0
    # FLOPs of the network the reference runs: the base with its LoRA layers unmerged
    peft = attach_adapter(copy.deepcopy(base), tmp_path / "lora")
    assert result["flops_per_forward"] == forward_flops(peft, 32, 5) > forward_flops(base, 32, 5)
    assert (out / "e2e.png").stat().st_size > 0 and "| ours |" in (out / "e2e.md").read_text()


def test_forward_flops_counts_a_known_layer() -> None:
    """The counter's convention (multiply-add = 2) on one conv, against the formula."""
    import torch

    class OneConv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)

        def forward(self, x, t, cond):
            return self.conv(x)

    assert forward_flops(OneConv(), 8, 5) == 2 * 4 * 9 * 8 * 8


def test_config_errors() -> None:
    with pytest.raises(InputError, match="unknown pipelines"):
        E2EConfig(pipelines=("fast",))
    with pytest.raises(InputError, match=">= 1"):
        E2EConfig(n=0)
