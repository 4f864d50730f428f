"""Denoiser benchmark: rows, ratios against eager fp32, bf16 error against an independent
forward, model choice, JSON output, and the CLI."""

import json

import pytest
import torch
from click.testing import CliRunner

from tte2tee_fast.bench.denoiser import (
    DenoiserBenchConfig,
    bench_denoiser,
    format_table,
    load_bench_model,
    load_bench_setup,
    parse_batches,
)
from tte2tee_fast.bench.kernels import write_json
from tte2tee_fast.cli import main
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import from_preset, model_hash, save_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rows_ratios_and_bf16_error(tmp_path):
    model, name = load_bench_model(None, "micro")
    assert name == "preset micro (random weights)"
    config = DenoiserBenchConfig(batches=(1, 3), bf16=True, repeats=2)
    result = bench_denoiser(model, config, "cpu", progress=False, model_name=name)
    rows = result["rows"]
    assert [(r["batch"], r["mode"]) for r in rows] == [
        (1, "eager_fp32"), (1, "eager_bf16"), (3, "eager_fp32"), (3, "eager_bf16"),
    ]  # fmt: skip
    for fp32, bf16 in (rows[0:2], rows[2:4]):
        assert fp32["vs_eager_fp32"] == 1.0 and fp32["max_rel_err"] == 0.0
        assert bf16["vs_eager_fp32"] == pytest.approx(fp32["ms"] / bf16["ms"], rel=2e-2)
        assert bf16["ms_per_image"] == pytest.approx(bf16["ms"] / bf16["batch"], rel=1e-3)
    # bf16 error against an independent fp32 / bf16 pair of forwards on the bench's inputs
    gen = torch.Generator().manual_seed(config.seed + 3)
    x = torch.randn(3, 1, 32, 32, generator=gen)
    t = torch.randint(0, 1000, (3,), generator=gen)
    labels = torch.randint(0, 5, (3, 32, 32), generator=gen)
    cond = torch.nn.functional.one_hot(labels, 5).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        ref = model(x, t, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, cond).float()
    want = float((low - ref).abs().max() / ref.abs().max())
    assert 1e-4 < want < 0.2  # random weights give a non-zero output, bf16 costs accuracy
    assert rows[3]["max_rel_err"] == pytest.approx(want, rel=1e-2)
    path = write_json(tmp_path / "d.json", result)
    assert json.loads(path.read_text())["rows"] == rows
    assert "eager_bf16" in format_table(result)


def test_model_choice(tmp_path):
    torch.manual_seed(0)
    saved = from_preset("micro")
    save_model(saved, tmp_path / "m")
    model, name = load_bench_model(str(tmp_path / "m"), None)
    assert model_hash(model) == model_hash(saved) and name == str(tmp_path / "m")
    with pytest.raises(InputError, match="not both"):
        load_bench_model(str(tmp_path / "m"), "tiny")
    # no packaged weights in this checkout: the default is tiny with random weights
    model, name = load_bench_model(None, None)
    assert model.config.sample_size == 128 and ("packaged" in name or "tiny" in name)


def test_parsing():
    assert parse_batches("1, 8,16") == (1, 8, 16)
    for bad in ("a", "0", ""):
        with pytest.raises(InputError, match="--batch"):
            parse_batches(bad)
    assert DenoiserBenchConfig(compile=True).modes == (
        "eager_fp32", "eager_bf16", "compile_fp32", "compile_bf16",
    )  # fmt: skip
    assert DenoiserBenchConfig(bf16=False).modes == ("eager_fp32",)


def test_cli(tmp_path):
    out = tmp_path / "d.json"
    args = ["bench", "denoiser", "--preset", "micro", "--batch", "1,2", "--repeats", "1"]
    res = CliRunner().invoke(main, [*args, "--no-bf16", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "preset micro" in res.output and "eager_fp32" in res.output
    data = json.loads(out.read_text())
    assert [r["batch"] for r in data["rows"]] == [1, 2] and data["config"]["modes"] == [
        "eager_fp32"
    ]
    res = CliRunner().invoke(main, [*args, "--model", str(tmp_path / "none")])
    assert res.exit_code == 2 and res.output.startswith("Error: ")
    res = CliRunner().invoke(main, ["bench", "denoiser", "--batch", "x"])
    assert res.exit_code == 2 and "--batch" in res.output


def test_engine_backends():
    """ORT and OpenVINO rows: the same model exported inside the bench, errors against eager
    fp32 at float32 rounding level (not zero: a separate computation), the compiled precision."""
    model, spec, _ = load_bench_setup(None, "micro")
    assert spec.name == "tte->tte"
    config = DenoiserBenchConfig(batches=(3,), bf16=False, repeats=1, backends=("ort", "openvino"))
    assert config.modes == ("eager_fp32", "ort_fp32", "openvino_f32", "openvino_f32_2s")
    rows = bench_denoiser(model, config, "cpu", progress=False, spec=spec)["rows"]
    assert [r["mode"] for r in rows] == list(config.modes)
    for r in rows[1:]:
        assert 0 < r["max_rel_err"] <= 1e-4 and r["precision"] in ("fp32", "f32")
        assert r["vs_eager_fp32"] == pytest.approx(rows[0]["ms"] / r["ms"], rel=2e-2)
    with pytest.raises(InputError, match="unknown backends"):
        DenoiserBenchConfig(backends=("trt",))
