"""Checked save/load of model folders, the weight hash, and peft adapters on the model."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from torch import nn

from tte2tee_fast.errors import InputError
from tte2tee_fast.models import SemanticUNet, from_preset, load_model, model_hash, save_model
from tte2tee_fast.models.io import CONFIG_NAME, WEIGHTS_NAME


def _random_micro(seed: int = 0, **overrides) -> SemanticUNet:
    torch.manual_seed(seed)
    model = from_preset("micro", **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # no zero-init tensors: every byte matters
    return model.eval()


@pytest.fixture
def saved(tmp_path):
    model = _random_micro()
    path = save_model(model, tmp_path / "m")
    return model, path


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_round_trip_is_bit_exact_both_loaders(saved):
    model, path = saved
    assert sorted(os.listdir(path)) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    assert not [p for p in os.listdir(path.parent) if p.startswith(".")]  # no temp folders left
    _assert_same_state(model, load_model(path))
    _assert_same_state(model, SemanticUNet.from_pretrained(path))
    x, cond = torch.randn(1, 1, 32, 32), torch.zeros(1, 5, 32, 32)
    with torch.no_grad():  # load_model gives aligned storage: same kernels, same bits
        assert torch.equal(model(x, 3, cond), load_model(path)(x, 3, cond))


def test_save_replaces_existing_folder(saved, tmp_path):
    _, path = saved
    other = _random_micro(seed=1)
    save_model(other, path)
    _assert_same_state(other, load_model(path))
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_model_hash_stable_and_sensitive(saved, tmp_path):
    model, path = saved
    h = model_hash(model)
    assert len(h) == 64 and h == model_hash(path) == model_hash(path / WEIGHTS_NAME)
    assert h == model_hash(load_model(path))
    with torch.no_grad():
        model.out[2].bias[0] += 1e-3
    assert model_hash(model) != h


def test_missing_folder_config_and_weights(saved, tmp_path):
    _, path = saved
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "nope")
    no_cfg = tmp_path / "no_cfg"
    shutil.copytree(path, no_cfg)
    (no_cfg / CONFIG_NAME).unlink()
    with pytest.raises(InputError, match=f"no {CONFIG_NAME}"):
        load_model(no_cfg)
    no_w = tmp_path / "no_w"
    shutil.copytree(path, no_w)
    (no_w / WEIGHTS_NAME).unlink()
    with pytest.raises(InputError, match=f"no {WEIGHTS_NAME}"):
        load_model(no_w)
    (no_w / CONFIG_NAME).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_model(no_w)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights_file(saved, damage):
    _, path = saved
    w = path / WEIGHTS_NAME
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 64 + data[64:])
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_model(path)


def test_non_finite_weight_is_named(saved):
    _, path = saved
    state = load_file(path / WEIGHTS_NAME)
    name = "output_blocks.1.res.spade_out.mlp_gamma.weight"
    state[name][0, 0, 0, 0] = float("nan")
    save_file(state, path / WEIGHTS_NAME)
    with pytest.raises(InputError, match=f"non-finite.*{name}"):
        load_model(path)


def test_config_of_another_preset_is_reported(saved, tmp_path):
    _, path = saved
    other = save_model(from_preset("tiny"), tmp_path / "tiny")
    shutil.copy(other / CONFIG_NAME, path / CONFIG_NAME)
    with pytest.raises(InputError, match=r"do not match.*another preset"):
        load_model(path)


def test_shape_mismatch_names_the_tensor(saved):
    _, path = saved
    cfg = json.loads((path / CONFIG_NAME).read_text())
    cfg["label_channels"] = 6  # same structure, different SPADE input width
    (path / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=r"shape mismatch.*spade_in\.shared\.0\.weight"):
        load_model(path)


def test_wrong_class_and_bad_config_values(saved):
    _, path = saved
    cfg = json.loads((path / CONFIG_NAME).read_text())
    (path / CONFIG_NAME).write_text(json.dumps({**cfg, "_class_name": "UNet2DModel"}))
    with pytest.raises(InputError, match="UNet2DModel"):
        load_model(path)
    (path / CONFIG_NAME).write_text(json.dumps({**cfg, "num_head_channels": 5}))
    with pytest.raises(InputError, match="not a valid SemanticUNet config"):
        load_model(path)


def test_peft_lora_on_micro(tmp_path):
    model = _random_micro()
    linear = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    x, cond = torch.randn(2, 1, 32, 32), torch.zeros(2, 5, 32, 32)
    with torch.no_grad():
        base = model(x, torch.tensor([1, 2]), cond)
    model.add_adapter(
        LoraConfig(r=2, lora_alpha=2, target_modules=r".*(time_embed\.[02]|emb_layers\.1)")
    )
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert sum(p.numel() for p in lora.values()) == 2 * sum(
        m.in_features + m.out_features for _, m in linear
    )
    with torch.no_grad():  # lora_B starts at zero: same function as the base
        assert torch.equal(model(x, torch.tensor([1, 2]), cond), base)
    # gradients reach the adapters
    model(x, torch.tensor([1, 2]), cond).square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values())
    with pytest.raises(InputError, match="LoRA"):
        save_model(model, tmp_path / "with_lora")
    # attention / conv / spade targets resolve to the intended Conv2d layers
    for pattern in [
        r".*attn\.(qkv|proj_out)",
        r".*(in_layers\.2|out_layers\.3)",
        r".*mlp_(gamma|beta)",
    ]:
        m2 = _random_micro()
        m2.add_adapter(LoraConfig(r=1, target_modules=pattern))
        assert any("lora_" in n for n, _ in m2.named_parameters()), pattern
