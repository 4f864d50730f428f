"""Adapter folders: peft-loadable, checked metadata, base-hash guard, atomic writes.

The helpers at the top (``micro_base``, ``lora_model``, ``make_adapter``, ``inputs``,
``rewrite_weights``) and the ``one_thread`` fixture are shared with test_merge.py.
"""

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from tte2tee_fast.adapt.adapter import (
    CONFIG_NAME,
    FORMAT_VERSION,
    META_NAME,
    WEIGHTS_NAME,
    attach_adapter,
    load_adapter_meta,
    save_adapter,
)
from tte2tee_fast.adapt.targets import count_lora_parameters, lora_config
from tte2tee_fast.condition.maskr2 import builtin_spec
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import from_preset, model_hash


def micro_base(seed: int = 0, **overrides) -> nn.Module:
    """A micro SemanticUNet whose zero-initialised output convs are re-initialised, so every
    layer (and every LoRA on it) changes the output (``overrides``: preset fields)."""
    torch.manual_seed(seed)
    model = from_preset("micro", **overrides)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    return model.eval()


def lora_model(
    base: nn.Module, preset: str, rank: int, alpha: float | None = None, seed: int = 1
) -> nn.Module:
    """A copy of ``base`` with a LoRA adapter whose B weights are random (peft starts B at 0)."""
    model = copy.deepcopy(base)
    model.add_adapter(lora_config(model, preset, rank, alpha))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def make_adapter(
    base: nn.Module, out: Path, preset: str = "mlp", rank: int = 2, alpha: float | None = None
) -> nn.Module:
    """Save a random adapter for ``base`` to ``out``; returns the LoRA model it came from."""
    model = lora_model(base, preset, rank, alpha)
    save_adapter(model, model_hash(base), builtin_spec("tee->tte"), preset, out)
    return model


def inputs(seed: int = 2, b: int = 2, size: int = 32) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, size, size, generator=gen)  # [B, 1, H, W]
    t = torch.randint(0, 1000, (b,), generator=gen)  # [B]
    labels = torch.randint(0, 5, (b, size, size), generator=gen)
    cond = nn.functional.one_hot(labels, 5).permute(0, 3, 1, 2).float()  # [B, 5, H, W]
    return x, t, cond


def rewrite_weights(folder: Path, edit) -> None:
    """Apply ``edit(dict of tensors)`` to the adapter's safetensors file in place."""
    path = folder / WEIGHTS_NAME
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base() -> nn.Module:
    return micro_base()


@pytest.fixture(scope="module")
def saved(base, tmp_path_factory) -> tuple[nn.Module, Path]:
    folder = tmp_path_factory.mktemp("adapters") / "tee-mlp"
    return make_adapter(base, folder, "mlp", 2), folder


@torch.no_grad()
def test_peft_and_attach_reproduce_the_saved_model(base, saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [CONFIG_NAME, WEIGHTS_NAME, META_NAME]
    )
    x, t, cond = inputs()
    want = model(x, t, cond)
    assert (want - base(x, t, cond)).abs().max() > 1e-2  # the adapter does something
    by_peft = PeftModel.from_pretrained(copy.deepcopy(base), str(folder))(x, t, cond)
    by_attach = attach_adapter(copy.deepcopy(base), folder)(x, t, cond)
    assert torch.equal(by_peft, want)
    assert torch.equal(by_attach, want)


def test_meta_records_the_adapter(base, saved):
    _, folder = saved
    meta = load_adapter_meta(folder)
    assert meta.format_version == FORMAT_VERSION
    assert meta.base_model_hash == model_hash(base)
    assert meta.maskr2 == builtin_spec("tee->tte")
    assert (meta.source_schema, meta.target_preset, meta.rank, meta.alpha) == ("tee", "mlp", 2, 2.0)
    assert meta.trainable_parameters == count_lora_parameters(base, "mlp", 2)
    on_disk = json.loads((folder / META_NAME).read_text())
    assert on_disk["source_schema"] == "tee" and on_disk["maskr2"]["source_schema"] == "tee"


def test_save_from_a_peft_model(base, tmp_path):
    peft_model = get_peft_model(copy.deepcopy(base), lora_config(base, "attn", 3))
    save_adapter(peft_model, model_hash(base), builtin_spec("tee->tte"), "attn", tmp_path / "a")
    assert load_adapter_meta(tmp_path / "a").trainable_parameters == count_lora_parameters(
        base, "attn", 3
    )


def test_attach_refuses_another_base(base, saved):
    _, folder = saved
    other = micro_base(seed=5)
    with pytest.raises(InputError) as err:
        attach_adapter(other, folder)
    assert model_hash(base) in str(err.value) and model_hash(other) in str(err.value)
    assert not any("lora_" in k for k in other.state_dict())  # left untouched


def test_attach_refuses_a_base_with_lora(saved):
    model, folder = saved
    with pytest.raises(InputError, match="already carries LoRA"):
        attach_adapter(copy.deepcopy(model), folder)


def _copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    dst.mkdir()
    for f in folder.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("name", [CONFIG_NAME, WEIGHTS_NAME, META_NAME])
def test_missing_file_is_named(saved, tmp_path, name):
    folder = _copy(saved[1], tmp_path)
    (folder / name).unlink()
    with pytest.raises(InputError, match=f"has no {name}"):
        load_adapter_meta(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_adapter_meta(tmp_path / "nope")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: "{not json", "tte2tee.json: invalid JSON at line 1"),
        (lambda d: json.dumps({**d, "format_version": 99}), "unknown format_version 99"),
        (lambda d: json.dumps({k: v for k, v in d.items() if k != "rank"}), "missing key 'rank'"),
        (lambda d: json.dumps({**d, "rank": "2"}), "rank has the wrong type"),
        (lambda d: json.dumps({**d, "target_preset": "ffn"}), "unknown target_preset 'ffn'"),
        (lambda d: json.dumps({**d, "source_schema": "camus"}), "differs from the MaskR"),
    ],
)
def test_bad_meta_is_named(saved, tmp_path, edit, match):
    folder = _copy(saved[1], tmp_path)
    meta = folder / META_NAME
    meta.write_text(edit(json.loads(meta.read_text())))
    with pytest.raises(InputError, match=match):
        load_adapter_meta(folder)


def test_bad_adapter_config_is_named(base, saved, tmp_path):
    folder = _copy(saved[1], tmp_path)
    (folder / CONFIG_NAME).write_text("[1, 2")
    with pytest.raises(InputError, match=re.escape("adapter_config.json: invalid JSON")):
        attach_adapter(copy.deepcopy(base), folder)


def test_nan_weights_are_named(base, saved, tmp_path):
    folder = _copy(saved[1], tmp_path)
    key = "base_model.model.time_embed.0.lora_B.weight"
    rewrite_weights(folder, lambda d: d[key].view(-1)[3:5].fill_(float("nan")))
    with pytest.raises(InputError, match=re.escape(f"tensor {key} holds non-finite")):
        attach_adapter(copy.deepcopy(base), folder)


def test_preset_must_match_weights(base, saved, tmp_path):
    folder = _copy(saved[1], tmp_path)
    meta = folder / META_NAME
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "target_preset": "attn"}))
    with pytest.raises(InputError, match="do not match target preset 'attn'"):
        attach_adapter(copy.deepcopy(base), folder)


def test_save_is_atomic(base, saved, tmp_path):
    model, _ = saved
    out = tmp_path / "adapter"
    save_adapter(model, model_hash(base), builtin_spec("tee->tte"), "mlp", out)
    before = (out / WEIGHTS_NAME).read_bytes()
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.get_submodule("time_embed.2").lora_A["default"].weight[0, 0] = float("inf")
    with pytest.raises(InputError, match="non-finite"):
        save_adapter(bad, model_hash(base), builtin_spec("tee->tte"), "mlp", out)
    assert (out / WEIGHTS_NAME).read_bytes() == before  # old folder kept
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary left
    save_adapter(model, model_hash(base), builtin_spec("tee->tte"), "mlp", out)  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_save_refuses_bad_arguments(base, saved, tmp_path):
    model, _ = saved
    spec = builtin_spec("tee->tte")
    with pytest.raises(InputError, match="no adapter 'x'"):
        save_adapter(model, model_hash(base), spec, "mlp", tmp_path / "a", adapter_name="x")
    with pytest.raises(InputError, match="sha256"):
        save_adapter(model, "abc", spec, "mlp", tmp_path / "a")
    with pytest.raises(InputError, match="no LoRA adapter"):
        save_adapter(base, model_hash(base), spec, "mlp", tmp_path / "a")
