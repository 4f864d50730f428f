"""Adaptation training: only the LoRA weights move and the base stays bit-identical; the adapter
(the EMA of the LoRA weights) loads with peft and with attach_adapter; resume is exact; bad
inputs are refused; the ablation table counts parameters like targets.py."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from helpers import random_micro
from peft import PeftModel
from safetensors.torch import load_file

from tte2tee_fast.adapt.adapter import KEY_PREFIX, attach_adapter, read_adapter
from tte2tee_fast.adapt.targets import TARGET_PRESETS, count_lora_parameters
from tte2tee_fast.adapt.train import (
    AdaptConfig,
    ablate,
    adapt,
    base_state,
    check_base_unchanged,
    final_loss,
)
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import load_model, model_hash, save_model

FAST = dict(
    num_cases=3,
    augment=1,
    batch_size=2,
    warmup=0,
    lr=1e-2,
    bf16=False,
    checkpoint_every=3,
    log_every=2,
    ema_decay=0.5,
    seed=5,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def trained_like_base(seed: int = 0, **overrides) -> torch.nn.Module:
    """A micro base (64 px) whose zero-initialised layers (SDM's zero_module) are filled with
    small random values, as after training: with a zero output layer no gradient reaches LoRA."""
    return random_micro(seed, sample_size=64, **overrides)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_model(trained_like_base(), tmp_path_factory.mktemp("base") / "base")


@pytest.fixture(scope="module")
def run6(base_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapt") / "run6"
    return adapt(AdaptConfig(base=str(base_dir), steps=6, **FAST), out, progress=False)


def _log(out) -> list[dict]:
    return [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, 64, 64, generator=g)
    t = torch.tensor([10, 700])
    cond = torch.nn.functional.one_hot(torch.randint(0, 5, (2, 64, 64), generator=g), 5)
    return x, t, cond.permute(0, 3, 1, 2).float()


def test_only_lora_trains_and_the_base_stays_bit_identical(run6, base_dir):
    base = load_model(base_dir)
    assert run6.step == 6 and len(run6.losses) == 6
    assert all(math.isfinite(v) for v in run6.losses)
    # the base weights inside the adapted model are the saved base, bit for bit
    reference = base.state_dict()
    now = base_state(run6.model)
    assert now.keys() == reference.keys()
    assert all(torch.equal(now[k], reference[k]) for k in reference)
    assert run6.base_hash == model_hash(base_dir) == model_hash(base)
    meta = json.loads((run6.out_dir / "tte2tee.json").read_text())
    assert meta["base_model_hash"] == run6.base_hash and meta["target_preset"] == "mlp"
    assert meta["source_schema"] == "tee" and meta["maskr2"]["name"] == "tee->tte"
    # the checkpoint holds the LoRA weights only, and they have moved (B starts at zero)
    raw = load_file(run6.out_dir / "checkpoint" / "model.safetensors")
    assert raw and all(".lora_A." in k or ".lora_B." in k for k in raw)
    assert sum(v.numel() for v in raw.values()) == count_lora_parameters(base, "mlp", 1)
    assert run6.trainable_parameters == count_lora_parameters(base, "mlp", 1)
    assert all(bool(v.any()) for k, v in raw.items() if ".lora_B." in k)
    assert run6.frames == 3 * 2  # num_cases x (1 + augment)


def test_adapter_is_the_ema_and_loads_with_peft_and_attach(run6, base_dir):
    out = run6.out_dir
    adapter = load_file(out / "adapter_model.safetensors")
    ema = load_file(out / "checkpoint" / "ema.safetensors")
    raw = load_file(out / "checkpoint" / "model.safetensors")
    ema.pop("__num_updates__")
    assert len(adapter) == len(ema) == len(raw)
    for name, value in ema.items():
        key = KEY_PREFIX + name.replace(".default.", ".")
        assert torch.equal(adapter[key], value)
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)  # the EMA is an average
    # the same function through peft, attach_adapter and the trained model; unlike the base
    x, t, cond = _inputs()
    with torch.no_grad():
        peft_out = PeftModel.from_pretrained(load_model(base_dir), str(out)).eval()(x, t, cond)
        attached = attach_adapter(load_model(base_dir), out)(x, t, cond)
        trained = run6.model.eval()(x, t, cond)
        plain = load_model(base_dir)(x, t, cond)
    torch.testing.assert_close(peft_out, attached, rtol=0, atol=0)
    torch.testing.assert_close(trained, attached, rtol=0, atol=0)
    assert not torch.allclose(plain, attached)
    assert read_adapter(out).meta.trainable_parameters == run6.trainable_parameters


def test_resume_is_exact(run6, base_dir, tmp_path):
    out = tmp_path / "split"
    first = adapt(AdaptConfig(base=str(base_dir), steps=3, **FAST), out, progress=False)
    second = adapt(
        AdaptConfig(base=str(base_dir), steps=6, **FAST), out, resume=True, progress=False
    )
    assert second.start_step == 3
    assert first.losses + second.losses == run6.losses  # exact float equality
    a = load_file(out / "adapter_model.safetensors")
    b = load_file(run6.out_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [(e["step"], e["loss"]) for e in _log(out)] == [
        (e["step"], e["loss"]) for e in _log(run6.out_dir)
    ]


def test_resume_and_output_guards(run6, base_dir, tmp_path):
    config = AdaptConfig(base=str(base_dir), steps=6, **FAST)
    with pytest.raises(InputError, match="pass --resume"):
        adapt(config, run6.out_dir, progress=False)
    with pytest.raises(InputError, match="no checkpoint"):
        adapt(config, tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(InputError, match="lr: checkpoint"):
        adapt(AdaptConfig(**{**config.to_json(), "lr": 1e-3}), run6.out_dir, resume=True)
    other = save_model(trained_like_base(seed=1), tmp_path / "other")
    moved = AdaptConfig(**{**config.to_json(), "base": str(other)})
    with pytest.raises(InputError, match="trained on base"):
        adapt(moved, run6.out_dir, resume=True, progress=False)
    # a checkpoint of `tte2tee train` is not resumed as an adaptation
    (tmp_path / "train" / "checkpoint").mkdir(parents=True)
    (tmp_path / "train" / "checkpoint" / "state.json").write_text('{"step": 1, "config": {}}')
    with pytest.raises(InputError, match="not an adaptation run"):
        adapt(config, tmp_path / "train", resume=True, progress=False)


def test_changed_base_weights_fail_loudly(run6):
    model = copy.deepcopy(run6.model)
    reference = {k: v.clone() for k, v in base_state(model).items()}
    check_base_unchanged(model, reference)  # untouched: passes
    with torch.no_grad():
        model.get_submodule("time_embed.0").base_layer.weight[0, 0] += 1e-6
    with pytest.raises(RuntimeError, match=r"time_embed\.0\.weight"):
        check_base_unchanged(model, reference)


def test_bad_inputs(base_dir, tmp_path):
    with pytest.raises(InputError, match="maps schema 'tee'"):
        adapt(AdaptConfig(base=str(base_dir), data="phantom-tte", steps=1, **FAST), tmp_path / "a")
    six = save_model(trained_like_base(label_channels=6), tmp_path / "six")
    with pytest.raises(InputError, match="takes 6 label channels"):
        adapt(AdaptConfig(base=str(six), steps=1, **FAST), tmp_path / "b", progress=False)
    with pytest.raises(InputError, match="sample_size 64"):
        adapt(AdaptConfig(base=str(base_dir), size=128, steps=1, **FAST), tmp_path / "c")
    with pytest.raises(InputError, match="does not exist"):
        adapt(AdaptConfig(base=str(tmp_path / "none"), steps=1, **FAST), tmp_path / "d")
    with pytest.raises(InputError, match="unknown LoRA target preset"):
        AdaptConfig(targets="mlps")
    with pytest.raises(InputError, match="rank"):
        AdaptConfig(rank=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_ablation_table(base_dir, tmp_path):
    config = AdaptConfig(base=str(base_dir), steps=3, **{**FAST, "log_every": 1})
    table = ablate(config, tmp_path / "abl", last_k=2, progress=False)
    base = load_model(base_dir)
    rows = table["rows"]
    assert [r["targets"] for r in rows] == list(TARGET_PRESETS)
    for row in rows:
        run = tmp_path / "abl" / row["targets"]
        assert row["trainable_parameters"] == count_lora_parameters(base, row["targets"], 1)
        assert read_adapter(run).meta.target_preset == row["targets"]
        losses = [e["loss"] for e in _log(run)]
        assert row["final_loss"] == pytest.approx((losses[-1] + losses[-2]) / 2, rel=1e-12)
        assert row["final_loss"] == final_loss(run, 2) and row["train_seconds"] > 0
    # the same budget: step 1 (LoRA B = 0, same batch, t and noise) has the same loss for all
    firsts = {_log(tmp_path / "abl" / r["targets"])[0]["loss"] for r in rows}
    assert len(firsts) == 1
    assert len({r["final_loss"] for r in rows}) > 1  # ...and the presets then diverge
    saved = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert saved == json.loads(json.dumps(table)) and saved["frames"] == 6
    md = (tmp_path / "abl" / "ablation.md").read_text()
    for row in rows:
        assert f"| {row['targets']} | {row['trainable_parameters']:,} |" in md


def test_bind_base_takes_size_and_output_parameterization_from_the_base():
    from tte2tee_fast.adapt.train import bind_base
    from tte2tee_fast.models import from_preset

    bound = bind_base(AdaptConfig(), from_preset("micro", prediction_type="v"))
    assert (bound.size, bound.prediction) == (32, "v")
    assert bind_base(AdaptConfig(), from_preset("micro")).prediction == "eps"
    with pytest.raises(InputError, match="sample_size 32"):
        bind_base(AdaptConfig(size=64), from_preset("micro"))
