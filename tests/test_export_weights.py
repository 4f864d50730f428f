"""Half-precision weight storage (save_model dtype=, export_weights, `tte2tee export weights`)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import error_line, random_micro
from safetensors import safe_open

from tte2tee_fast.cli import main
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import load_model, model_hash, save_model
from tte2tee_fast.models.io import WEIGHTS_NAME, export_weights


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage_loads_as_rounded_fp32(tmp_path, dtype):
    model = random_micro(seed=3)
    full = save_model(model, tmp_path / "full")
    half = save_model(model, tmp_path / "half", dtype)
    with safe_open(str(half / WEIGHTS_NAME), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {dtype}
    ratio = (half / WEIGHTS_NAME).stat().st_size / (full / WEIGHTS_NAME).stat().st_size
    assert 0.45 < ratio < 0.55
    loaded = load_model(half)
    for k, ref in model.state_dict().items():  # reference: torch's own rounding of each tensor
        got = loaded.state_dict()[k]
        assert got.dtype == torch.float32
        assert torch.equal(got, ref.to(dtype).float()), k
    # the file hashes as the model it loads to (what adapters record), not as the fp32 source
    assert model_hash(half) == model_hash(loaded) != model_hash(model)


def test_overflowing_weight_is_refused_and_nothing_written(tmp_path):
    model = random_micro()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = 1e6  # > fp16 max 65504
    with pytest.raises(InputError, match="overflows"):
        save_model(model, tmp_path / "m", torch.float16)
    assert list(tmp_path.iterdir()) == []


def test_export_cli_copies_run_provenance(tmp_path):
    run = tmp_path / "run"
    save_model(random_micro(), run / "ema")
    (run / "train_config.json").write_text(json.dumps({"preset": "micro", "steps": 7}))
    (run / "train_log.jsonl").write_text('{"step": 6}\n{"step": 7, "loss": 0.5}\n')
    (run / "maskr2.json").write_text('{"name": "tte->tte"}')
    out = tmp_path / "packaged"
    result = CliRunner().invoke(
        main, ["export", "weights", "--model", str(run / "ema"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "float16" in result.output
    prov = json.loads((out / "training.json").read_text())
    assert prov["train_config"]["steps"] == 7 and prov["last_log"] == {"step": 7, "loss": 0.5}
    assert (out / "maskr2.json").read_text() == '{"name": "tte->tte"}'
    load_model(out)  # a normal model folder


def test_export_missing_model_is_one_error_line(tmp_path):
    result = CliRunner().invoke(
        main, ["export", "weights", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    error_line(result, "does not exist")
    assert not (tmp_path / "o").exists()


def test_export_returns_weights_size(tmp_path):
    save_model(random_micro(), tmp_path / "m")
    path, size = export_weights(tmp_path / "m", tmp_path / "h", "bfloat16")
    assert size == (path / WEIGHTS_NAME).stat().st_size
