"""The packaged phantom-trained weights: present, small, loadable, and consistent with each other."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner
from peft import PeftModel
from safetensors import safe_open

from tte2tee_fast.adapt.adapter import load_adapter_meta
from tte2tee_fast.cli import main
from tte2tee_fast.models import load_model, model_hash
from tte2tee_fast.models.io import WEIGHTS_NAME
from tte2tee_fast.packaged import (
    DEFAULT_ADAPTER,
    DEFAULT_MODEL,
    packaged_path,
    resolve_model_path,
)


def test_base_is_small_tiny_and_says_how_it_was_trained():
    path = packaged_path(DEFAULT_MODEL)
    assert resolve_model_path(None) == path
    weights = path / WEIGHTS_NAME
    assert weights.stat().st_size < 12e6  # fp16 storage of the 5.2M-parameter tiny preset
    with safe_open(str(weights), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    model = load_model(path)
    assert model.config.sample_size == 128 and model.config.label_channels == 5
    provenance = json.loads((path / "training.json").read_text())
    assert provenance["train_config"]["data"] == "phantom-tte"  # trained on phantoms
    assert provenance["train_config"]["preset"] == "tiny"
    x = torch.randn(1, 1, 128, 128)
    cond = torch.zeros(1, 5, 128, 128)
    cond[:, 2] = 1.0
    with torch.no_grad():
        assert bool(torch.isfinite(model(x, torch.tensor([500]), cond)).all())


def test_adapter_belongs_to_the_packaged_base_and_loads_in_peft():
    base_dir, adapter_dir = packaged_path(DEFAULT_MODEL), packaged_path(DEFAULT_ADAPTER)
    meta = load_adapter_meta(adapter_dir)
    assert meta.base_model_hash == model_hash(base_dir)
    assert meta.maskr2.name == "tee->tte"
    peft_model = PeftModel.from_pretrained(load_model(base_dir), str(adapter_dir))
    trainable = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert trainable == meta.trainable_parameters


def test_packaged_names_work_as_cli_arguments(tmp_path):
    """`--adapter phantom-tee` (no such folder here) means the packaged adapter."""
    result = CliRunner().invoke(
        main, ["merge", "--adapter", DEFAULT_ADAPTER, "--out", str(tmp_path / "tee")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "tee" / "maskr2.json").read_text())["name"] == "tee->tte"
