"""`tte2tee adapt` (and --ablate, --resume), and `tte2tee merge` with the packaged base by
default: parameter counts printed, one `Error:` line and exit 2 for bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import error_line

from tte2tee_fast import packaged
from tte2tee_fast.adapt.adapter import read_adapter
from tte2tee_fast.adapt.targets import TARGET_PRESETS, count_lora_parameters
from tte2tee_fast.adapt.train import AdaptConfig
from tte2tee_fast.cli import main
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import from_preset, load_model, model_hash, save_model

FAST = ["--num-cases", "2", "--augment", "1", "--batch-size", "2", "--no-bf16", "--warmup", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(from_preset("micro", sample_size=64), tmp_path_factory.mktemp("b") / "base")


@pytest.fixture
def packaged_base(base_dir, tmp_path, monkeypatch):
    """Install ``base_dir`` as the packaged base model (under a temporary assets folder)."""
    assets = tmp_path / "assets"
    shutil.copytree(base_dir, assets / packaged.DEFAULT_MODEL)
    monkeypatch.setattr(packaged, "ASSETS", assets)
    return base_dir


def test_adapt_prints_counts_trains_and_resumes(base_dir, tmp_path):
    out = tmp_path / "lora"
    args = ["adapt", "--base", str(base_dir), *FAST, "--targets", "attn", "--rank", "2"]
    res = CliRunner().invoke(main, [*args, "--steps", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    base = load_model(base_dir)
    n_lora = count_lora_parameters(base, "attn", 2)
    n_base = sum(p.numel() for p in base.parameters())
    assert f"{n_lora:,} trainable parameters on a frozen base of {n_base:,}" in res.output
    adapter = read_adapter(out)
    assert adapter.meta.rank == 2 and adapter.meta.alpha == 2.0  # alpha defaults to the rank
    assert adapter.meta.base_model_hash == model_hash(base_dir)
    # --resume takes the saved options; --steps extends the run
    res = CliRunner().invoke(
        main, ["adapt", "--base", str(base_dir), "--out", str(out), "--resume", "--steps", "3"]
    )
    assert res.exit_code == 0, res.output
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["config"]["targets"] == "attn"
    assert state["config"]["size"] == 64  # bound to the base's sample_size


def test_adapt_and_merge_default_to_the_packaged_base(packaged_base, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["adapt", *FAST, "--steps", "1", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert read_adapter(tmp_path / "a").meta.base_model_hash == model_hash(packaged_base)
    res = runner.invoke(
        main, ["merge", "--adapter", str(tmp_path / "a"), "--out", str(tmp_path / "m")]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / "maskr2.json").is_file()


def test_missing_packaged_base_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setattr(packaged, "ASSETS", tmp_path / "no-assets")
    res = CliRunner().invoke(main, ["adapt", *FAST, "--steps", "1", "--out", str(tmp_path / "a")])
    assert "packaged weights 'phantom-tte' not found" in error_line(res)
    res = CliRunner().invoke(
        main, ["merge", "--adapter", str(tmp_path), "--out", str(tmp_path / "m")]
    )
    assert "packaged weights" in error_line(res)


def test_adapt_errors(base_dir, tmp_path):
    runner = CliRunner()
    common = ["adapt", *FAST, "--steps", "1"]
    res = runner.invoke(
        main, [*common, "--base", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    )
    assert "does not exist" in error_line(res)
    res = runner.invoke(
        main, [*common, "--ablate", "--eval-frames", "1", "--out", str(tmp_path / "e")]
    )
    assert "--eval-frames 1" in error_line(res) and not (tmp_path / "e").exists()
    # the remap's source schema must be the data's schema
    res = runner.invoke(
        main,
        [*common, "--base", str(base_dir), "--data", "phantom-tte", "--out", str(tmp_path / "o")],
    )
    assert "maps schema 'tee'" in error_line(res)
    # the spec's channels must be the base's label channels
    torch.manual_seed(0)
    six = save_model(from_preset("micro", sample_size=64, label_channels=6), tmp_path / "six")
    res = runner.invoke(main, [*common, "--base", str(six), "--out", str(tmp_path / "o")])
    assert "takes 6 label channels" in error_line(res)
    res = runner.invoke(
        main, [*common, "--base", str(base_dir), "--targets", "mlps", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "Invalid value for '--targets'" in res.output
    res = runner.invoke(
        main,
        [
            *common,
            "--base",
            str(base_dir),
            "--ablate",
            "--targets",
            "mlp",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert "--ablate trains every target preset" in error_line(res)
    assert not (tmp_path / "o").exists()


def test_adapt_ablate(base_dir, tmp_path):
    out = tmp_path / "abl"
    args = ["adapt", "--base", str(base_dir), *FAST, "--steps", "1", "--ablate", "--out", str(out)]
    res = CliRunner().invoke(main, [*args, "--eval-frames", "0"])  # scoring: the tests below
    assert res.exit_code == 0, res.output
    table = json.loads((out / "ablation.json").read_text())
    assert not any("quality" in r for r in table["rows"])
    base = load_model(base_dir)
    assert [r["targets"] for r in table["rows"]] == list(TARGET_PRESETS)
    for row in table["rows"]:
        assert row["trainable_parameters"] == count_lora_parameters(base, row["targets"], 1)
        assert f"| {row['targets']} | {row['trainable_parameters']:,} |" in res.output
        assert read_adapter(out / row["targets"]).meta.target_preset == row["targets"]


def test_cli_defaults_match_adapt_config():
    """The CLI keeps its defaults literal (no torch import for --help): they must agree."""
    defaults = AdaptConfig()
    checked = 0
    for param in main.commands["adapt"].params:
        if hasattr(defaults, param.name):
            assert param.default == getattr(defaults, param.name), param.name
            checked += 1
    assert checked >= 15


def test_adapt_on_a_folder_of_pairs(base_dir, tmp_path):
    runner = CliRunner()
    pairs = tmp_path / "tee-pairs"
    args = ["phantom", "--modality", "tee", "--n", "3", "--size", "64", "--out", str(pairs)]
    assert runner.invoke(main, args).exit_code == 0
    out = tmp_path / "lora"
    args = ["adapt", "--base", str(base_dir), "--data", str(pairs), *FAST, "--steps", "1"]
    res = runner.invoke(main, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert read_adapter(out).meta.source_schema == "tee"
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 1


def test_ablation_quality_scores_every_adapter(base_dir, tmp_path):
    from tte2tee_fast.adapt.train import ablate
    from tte2tee_fast.bench.adapters import AdapterEvalConfig, ablation_quality, evaluate_adapter

    out = tmp_path / "abl"
    fast = {"num_cases": 2, "augment": 1, "batch_size": 2, "bf16": False, "warmup": 0}
    config = AdaptConfig(base=str(base_dir), steps=1, **fast)
    ablate(config, out, presets=("mlp", "all"), progress=False)
    cfg = AdapterEvalConfig(n=2, n_real=2, backend="torch", precision="fp32", batch_size=2)
    table = ablation_quality(out, cfg, progress=False)
    md = (out / "ablation.md").read_text()
    assert md.count("## Fidelity and realism per preset") == 1
    for row in table["rows"]:
        q = row["quality"]
        assert 0.0 <= q["fidelity"]["mean_dice"]["mean"] <= 1.0
        assert set(q["fidelity"]["per_class"]) == {"la", "lv", "ra", "rv"}  # the TEE schema's
        assert q["regions"]["la"]["phantom"] > 0 and np.isfinite(q["kid"]["mean"])
        assert f"| {row['targets']} | {100 * q['fidelity']['mean_dice']['mean']:.1f} |" in md
    # the same adapter, masks and noise give the same numbers again (deterministic sampling)
    assert (
        evaluate_adapter(str(base_dir), out / "all", cfg)["fidelity"]
        == (table["rows"][1]["quality"]["fidelity"])
    )
    # rescoring rewrites the table instead of appending a second one
    ablation_quality(out, cfg, progress=False)
    assert (out / "ablation.md").read_text().count("## Fidelity") == 1
    with pytest.raises(InputError, match=r"no ablation\.json"):
        ablation_quality(tmp_path / "nothing", cfg)


@pytest.mark.slow  # five engine exports (--backend auto): ~2 min
def test_adapt_ablate_cli_writes_the_fidelity_table(base_dir, tmp_path):
    out = tmp_path / "abl"
    args = ["adapt", "--base", str(base_dir), *FAST, "--steps", "1", "--ablate"]
    res = CliRunner().invoke(main, [*args, "--eval-frames", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "ablation.json").read_text())["rows"]
    assert all("quality" in r for r in rows)
    assert "## Fidelity and realism per preset" in (out / "ablation.md").read_text()
