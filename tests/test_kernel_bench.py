"""Kernel benchmark: shapes taken from the models, the torch baselines against float64, the CPU
run (Triton columns "no GPU", valid JSON), the Triton code path under the interpreter, the CLI."""

import json

import pytest
import torch
from click.testing import CliRunner
from tte2tee_fast.kernels._triton import interpret_mode, interpreter_complete

from tte2tee_fast.bench.kernels import (
    KERNELS,
    NO_GPU,
    KernelBenchConfig,
    config_for,
    eager_mixed,
    eager_unmerged,
    format_table,
    linear_shapes,
    lora_problem,
    parse_kernels,
    run_kernel_bench,
    spade_shapes,
    write_json,
)
from tte2tee_fast.cli import main
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import PRESETS, from_preset
from tte2tee_fast.models.blocks import SPADEGroupNorm

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("preset", ["tiny", "sdm256"])
def test_linear_shapes_are_the_presets_mlp_layers(preset):
    p = PRESETS[preset]
    mc, emb = p.model_channels, 4 * p.model_channels
    # time MLP (mc -> emb -> emb) and every ResBlock's emb projection (emb -> 2 * channels)
    want = {(mc, emb), (emb, emb)} | {(emb, 2 * mc * m) for m in p.channel_mult}
    assert set(linear_shapes(preset)) == want


def test_spade_shapes_match_a_real_forward():
    torch.manual_seed(0)
    model = from_preset("micro").eval()
    seen = set()
    for name, mod in model.named_modules():
        if isinstance(mod, SPADEGroupNorm):
            emb = name.endswith("spade_out")
            mod.register_forward_hook(  # the SPADE norm's input x [B, C, H, W]
                lambda m, args, out, emb=emb: seen.add((*args[0].shape[1:], m.norm.num_groups, emb))
            )
    s = model.config.sample_size
    with torch.no_grad():
        model(torch.randn(2, 1, s, s), torch.tensor([3, 500]), torch.zeros(2, 5, s, s))
    assert set(spade_shapes("micro")) == seen
    assert any(e for *_, e in seen) and not all(e for *_, e in seen)


def test_torch_baselines_against_float64():
    x, w, b, a, bb, s, idx = lora_problem(8, 24, 40, 3, 4, torch.float32, "cpu", seed=1)
    scales = s.tolist()
    assert idx.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # rows grouped by adapter
    want = torch.stack(
        [
            x[i].double() @ (w.double() + scales[k] * bb[k].double() @ a[k].double()).T + b.double()
            for i, k in enumerate(idx.tolist())
        ]
    )
    groups = [(k, (idx == k).nonzero().flatten(), scales[k]) for k in range(4)]
    torch.testing.assert_close(
        eager_mixed(x, w, b, a, bb, groups).double(), want, rtol=1e-5, atol=1e-5
    )
    one = eager_unmerged(x, w, b, a[0], bb[0], scales[0])  # adapter 0 on every row
    torch.testing.assert_close(one[:2].double(), want[:2], rtol=1e-5, atol=1e-5)
    assert (one[2:].double() - want[2:]).abs().max() > 1e-3


def _check_rows(rows, triton_ran: bool):
    for row in rows:
        ms = row["ms"]
        assert row["kernel"] in KERNELS and row["baseline"] in ms
        assert row["vs_baseline"][row["baseline"]] == 1.0
        for variant, value in ms.items():
            if variant == "floor" or (variant == "triton" and not triton_ran):
                assert value == NO_GPU
                continue
            assert isinstance(value, float) and value > 0
            ratio = ms[row["baseline"]] / value
            assert row["vs_baseline"][variant] == pytest.approx(ratio, rel=2e-2, abs=2e-3)
        assert row["triton_of_floor"] == NO_GPU


def test_cpu_run_writes_json_with_no_gpu_rows(tmp_path):
    config = KernelBenchConfig(
        "tiny", rows=(1, 8), ranks=(1, 4), label_batches=(1,), label_size=64, spade_batch=1,
        repeats=1,
    )  # fmt: skip
    result = run_kernel_bench(config, device="cpu", progress=False)
    rows = result["rows"]
    kinds = [r["kernel"] for r in rows]
    assert kinds.count("lora_linear") == len(linear_shapes("tiny")) * 2 * 2
    assert kinds.count("maskr2_one_hot") == 2  # nchw, nhwc
    assert kinds.count("spade_norm_act") == len(spade_shapes("tiny"))
    _check_rows(rows, triton_ran=False)
    assert all(r["triton_rel_err"] == NO_GPU and r["device"] == "cpu" for r in rows)
    assert {tuple(r["shape"][1:]) for r in rows if r["kernel"] == "lora_linear"} == set(
        linear_shapes("tiny")
    )
    path = write_json(tmp_path / "sub" / "kernels.json", result)
    loaded = json.loads(path.read_text())
    assert loaded["rows"] == rows and loaded["config"]["preset"] == "tiny"
    assert [p.name for p in path.parent.iterdir()] == ["kernels.json"]  # no temp file left
    table = format_table(rows)
    assert all(k in table for k in KERNELS) and NO_GPU in table


@pytest.mark.skipif(
    not (interpret_mode() and interpreter_complete()),
    reason="needs TRITON_INTERPRET=1 before triton's first import (tests/conftest.py, no CUDA)",
)
def test_triton_code_path_under_the_interpreter():
    config = KernelBenchConfig(
        "micro", rows=(8,), ranks=(4,), label_batches=(2,), label_size=16, spade_batch=1,
        repeats=1,
    )  # fmt: skip
    rows = run_kernel_bench(config, device="cpu", progress=False, triton=True)["rows"]
    _check_rows(rows, triton_ran=True)
    assert {r["kernel"] for r in rows} == set(KERNELS)
    assert all(r["triton_rel_err"] < 1e-5 for r in rows)  # kernel == torch on each case


def test_config_and_parsing():
    assert config_for("small").preset == "tiny" and config_for("paper").preset == "sdm256"
    assert parse_kernels("all") == KERNELS
    assert parse_kernels("spade_norm_act, lora_linear") == ("spade_norm_act", "lora_linear")
    for bad in ("nope", " , "):
        with pytest.raises(InputError, match="--kernels"):
            parse_kernels(bad)
    with pytest.raises(InputError, match="shapes"):
        config_for("huge")
    with pytest.raises(InputError, match=">= 1"):
        KernelBenchConfig(rows=(0,))
    with pytest.raises(InputError, match="use auto, cpu or cuda"):
        run_kernel_bench(KernelBenchConfig(), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            run_kernel_bench(KernelBenchConfig(), device="cuda")


def test_cli(tmp_path):
    out = tmp_path / "k.json"
    args = ["bench", "kernels", "--kernels", "maskr2_one_hot", "--repeats", "1", "--json", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "maskr2_one_hot" in res.output and NO_GPU in res.output
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and all(r["ms"]["triton"] == NO_GPU for r in rows)
    res = CliRunner().invoke(main, ["bench", "kernels", "--kernels", "bogus"])
    assert res.exit_code == 2 and res.output.strip().startswith("Error: --kernels")
    res = CliRunner().invoke(main, ["bench", "kernels", "--json", str(tmp_path)])
    assert res.exit_code == 2
