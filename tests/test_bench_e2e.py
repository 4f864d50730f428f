"""``tte2tee bench e2e`` on a micro model: every pipeline runs on the same masks, the report has
speed and fidelity for each, the files are written (a smoke run: no timing assertions)."""

from __future__ import annotations

import copy
import json

import pytest
from click.testing import CliRunner
from test_adapter import make_adapter, micro_base

from tte2tee_fast.adapt.adapter import attach_adapter
from tte2tee_fast.bench import e2e
from tte2tee_fast.bench.e2e import E2EConfig, forward_flops, label_part_flops
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
    roof = result["ours_network_share_of_peak"]  # torch fp32: against the fp32 peak
    assert roof["precision"] == "fp32" and len(roof["pairs"]) == 5
    for net, peak, share, size in roof["pairs"]:
        assert share == pytest.approx(net / peak) and peak > 0 and size in e2e.PEAK_SIZES
    assert roof["share"] == pytest.approx(sorted(p[2] for p in roof["pairs"])[2])
    peaks = result["mm_gflops_by_size"]["fp32"]
    assert result["peak_gflops"]["fp32"] == max(peaks.values())
    bf16 = result["mm_gflops_by_size"].get("bf16")  # measured only where bf16 runs in hardware
    assert result["peak_gflops"]["bf16"] == (max(bf16.values()) if bf16 else None)
    # FLOPs of the network the reference runs: the base with its LoRA layers unmerged
    peft = attach_adapter(copy.deepcopy(base), tmp_path / "lora")
    assert result["flops_per_forward"] == forward_flops(peft, 32, 5) > forward_flops(base, 32, 5)
    assert (out / "e2e.png").stat().st_size > 0 and "| ours |" in (out / "e2e.md").read_text()
    # torch has no label cache: every step runs the whole network
    assert 0.0 <= result["ours_share_outside_network"] < 1.0
    assert not result["ours_label_cache"] and result["flops_label_part"] == 0
    assert result["flops_per_step"] == result["flops_per_forward"]


def test_bench_e2e_counts_the_label_cache(tmp_path) -> None:
    """OpenVINO caches the SPADE heads: ours' FLOPs per frame are label part + NFE x step."""
    pytest.importorskip("openvino")
    base = micro_base(2)
    save_model(base, tmp_path / "base")
    make_adapter(base, tmp_path / "lora", preset="mlp", rank=1)
    config = E2EConfig(
        n=2, n_reference=1, reference_steps=4, diffusers_steps=3, steps=3, sampler="ddim",
        model=str(tmp_path / "base"), adapter=str(tmp_path / "lora"), backend="openvino",
        precision="fp32", batch_size=2, pipelines=("ours",),
    )  # fmt: skip
    result = e2e.bench_e2e(config, progress=False)
    peft = attach_adapter(copy.deepcopy(base), tmp_path / "lora")
    label = label_part_flops(peft, 32, 5)
    assert result["ours_label_cache"] and result["flops_label_part"] == label > 0
    assert result["flops_per_step"] == result["flops_per_forward"] - label
    row = result["pipelines"]["ours"]
    executed = label + row["nfe"] * result["flops_per_step"]
    assert row["achieved_gflops"] == pytest.approx(executed / row["seconds_per_frame"] / 1e9)
    # the warm-up ran on other masks: the timed run's one mask batch ran its label part once
    assert result["ours_label_part_runs"] == 1
    # timed inside ours' own run: the denoiser calls are part of that run's time
    assert 0.0 <= result["ours_share_outside_network"] < 1.0
    assert "label cache" in e2e.markdown(result)


def test_label_part_flops_against_the_conv_formula() -> None:
    """The SPADE heads' FLOPs (multiply-add = 2) from each norm's resolution and conv shapes."""
    import torch

    from tte2tee_fast.models.blocks import SPADEGroupNorm

    model = micro_base(0)
    expected = []

    def count(mod, args):
        h, w = args[0].shape[-2:]
        for conv in (mod.shared[0], mod.mlp_gamma, mod.mlp_beta):
            k = conv.kernel_size[0] * conv.kernel_size[1]
            expected.append(2 * h * w * conv.in_channels * conv.out_channels * k)

    hooks = [
        m.register_forward_pre_hook(count) for m in model.modules() if isinstance(m, SPADEGroupNorm)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 1, 32, 32), torch.tensor([5]), torch.zeros(1, 5, 32, 32))
    for h in hooks:
        h.remove()
    assert hooks and label_part_flops(model, 32, 5) == sum(expected)
    assert label_part_flops(model, 32, 5) < forward_flops(model, 32, 5)


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


def test_mm_rates_time_windows_and_take_the_best(monkeypatch) -> None:
    """On a fake clock where a product of size n takes 2 n^3 / rate(n) seconds, and the untimed
    product plus the first window of size 64 (8 calls) run at half speed: each size's rate is
    its fast windows' exactly and the peak is the faster size."""
    import torch

    rate = {64: 100e9, 128: 300e9}  # FLOP/s
    clock = {"now": 0.0, "calls": 0}

    def fake_mm(a, b):
        clock["calls"] += 1
        slow = 2.0 if clock["calls"] <= 8 else 1.0
        clock["now"] += slow * 2 * a.shape[0] ** 3 / rate[a.shape[0]]
        return a

    monkeypatch.setattr(e2e.torch, "mm", fake_mm)
    monkeypatch.setattr(e2e.time, "perf_counter", lambda: clock["now"])
    seconds = 5 * 2 * 128**3 / rate[128]  # five products of 128: 6.7 slow ones of 64
    rates = e2e.mm_rates(torch.float32, sizes=(64, 128), seconds=seconds, windows=3)
    assert rates == pytest.approx({64: 100.0, 128: 300.0}, rel=1e-9)  # GFLOP/s
    assert e2e.peak_gflops(torch.float32, sizes=(64, 128), seconds=seconds) == pytest.approx(300)


def test_bf16_peak_only_where_bf16_runs(monkeypatch) -> None:
    """An emulated bf16 product (no bf16 hardware) is no peak: skipped unless ours runs bf16."""
    from tte2tee_fast.generate import backends

    for hardware in (False, True):
        monkeypatch.setattr(backends, "cpu_has_bf16", lambda h=hardware: h)
        assert set(e2e.peak_dtypes("cpu")) == ({"fp32", "bf16"} if hardware else {"fp32"})
        assert set(e2e.peak_dtypes("cpu", "bf16")) == {"fp32", "bf16"}
        assert set(e2e.peak_dtypes("cuda:0")) == {"fp32", "bf16"}


def test_config_errors() -> None:
    with pytest.raises(InputError, match="unknown pipelines"):
        E2EConfig(pipelines=("fast",))
    with pytest.raises(InputError, match=">= 1"):
        E2EConfig(n=0)
