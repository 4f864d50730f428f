"""fp32 LoRA merge, checked against peft (unmerged forward and ``merge_and_unload``), merged
model folders with their MaskR² spec, and the ``tte2tee merge`` command."""

import copy
import json
import re

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from test_adapter import inputs, make_adapter, micro_base, rewrite_weights

from tte2tee_fast.adapt.adapter import attach_adapter
from tte2tee_fast.adapt.merge import (
    MASKR2_NAME,
    load_model_spec,
    merge_adapter,
    merge_to_folder,
    unmerge_adapter,
)
from tte2tee_fast.adapt.targets import TARGET_PRESETS
from tte2tee_fast.cli import main
from tte2tee_fast.condition.maskr2 import MaskR2Spec, builtin_spec
from tte2tee_fast.data.schemas import TTE
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import load_model, model_hash, save_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return micro_base()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
@pytest.mark.parametrize("preset", TARGET_PRESETS)
def test_merge_matches_peft(base, tmp_path, preset):
    rank = 3
    unmerged = make_adapter(base, tmp_path / "a", preset, rank)
    merged = merge_adapter(copy.deepcopy(base), tmp_path / "a")
    x, t, cond = inputs()
    want = unmerged(x, t, cond)  # peft: base layer + scale * B(A(x))
    assert _rel(want, base(x, t, cond)) > 1e-2  # the adapter changes the output
    assert _rel(merged(x, t, cond), want) <= 1e-4
    # the merged weights are peft's merge_and_unload weights
    reference = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "a"))
    reference = reference.merge_and_unload().state_dict()
    ours = merged.state_dict()
    assert set(ours) == set(reference)
    for k in ours:
        torch.testing.assert_close(ours[k], reference[k], rtol=1e-6, atol=1e-7, msg=k)


def test_alpha_scales_the_delta(base, tmp_path):
    """alpha != rank: the scale alpha / r must follow the adapter config."""
    model = make_adapter(base, tmp_path / "a", "conv", 2, alpha=5.0)
    merged = merge_adapter(copy.deepcopy(base), tmp_path / "a")
    with torch.no_grad():
        x, t, cond = inputs()
        assert _rel(merged(x, t, cond), model(x, t, cond)) <= 1e-4


def test_unmerge_restores_the_base(base, tmp_path):
    make_adapter(base, tmp_path / "a", "all", 2)
    model = merge_adapter(copy.deepcopy(base), tmp_path / "a")
    unmerge_adapter(model, tmp_path / "a")
    for k, v in base.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_refuses_another_base(base, tmp_path):
    make_adapter(base, tmp_path / "a")
    other = micro_base(seed=7)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(InputError, match=model_hash(other)):
        merge_adapter(other, tmp_path / "a")
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in before.items())


def test_refuses_nan_adapter(base, tmp_path):
    make_adapter(base, tmp_path / "a", "attn", 2)
    key = "base_model.model.middle_block.0.attn.qkv.lora_A.weight"
    rewrite_weights(tmp_path / "a", lambda d: d[key].view(-1)[0].fill_(float("nan")))
    with pytest.raises(InputError, match=re.escape(f"tensor {key} holds non-finite")):
        merge_adapter(copy.deepcopy(base), tmp_path / "a")


def test_refuses_overflowing_merge_and_changes_nothing(base, tmp_path):
    """Finite LoRA weights whose product overflows fp32: refused, the base left as it was."""
    make_adapter(base, tmp_path / "a", "mlp", 2)
    key = "base_model.model.output_blocks.3.res.emb_layers.1.lora_"
    rewrite_weights(tmp_path / "a", lambda d: [d[f"{key}{ab}.weight"].fill_(1e30) for ab in "AB"])
    model = copy.deepcopy(base)
    with pytest.raises(
        InputError, match=re.escape("output_blocks.3.res.emb_layers.1.weight holds non-finite")
    ):
        merge_adapter(model, tmp_path / "a")
    assert model_hash(model) == model_hash(base)


def test_merge_to_folder_writes_model_and_spec(base, tmp_path):
    save_model(base, tmp_path / "base")
    make_adapter(base, tmp_path / "a", "spade", 2)
    out = merge_to_folder(tmp_path / "base", tmp_path / "a", tmp_path / "merged")
    merged = load_model(out)
    x, t, cond = inputs()
    want = merge_adapter(copy.deepcopy(base), tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(merged(x, t, cond), want(x, t, cond))
    assert load_model_spec(out) == builtin_spec("tee->tte")
    assert json.loads((out / MASKR2_NAME).read_text()) == builtin_spec("tee->tte").to_json()
    assert load_model_spec(tmp_path / "base") == MaskR2Spec.identity(TTE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "base", "merged"]  # no temps


def test_load_model_spec_checks_channels(base, tmp_path):
    save_model(base, tmp_path / "m")
    cfg = tmp_path / "m" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "label_channels": 6}))
    with pytest.raises(InputError, match="takes 6 label channels"):
        load_model_spec(tmp_path / "m")
    with pytest.raises(InputError, match=re.escape("cannot read config.json")):
        load_model_spec(tmp_path / "missing")


def test_attach_then_merge_agree(base, tmp_path):
    make_adapter(base, tmp_path / "a", "all", 4)
    attached = attach_adapter(copy.deepcopy(base), tmp_path / "a")
    merged = merge_adapter(copy.deepcopy(base), tmp_path / "a")
    x, t, cond = inputs(seed=9)
    with torch.no_grad():
        assert _rel(merged(x, t, cond), attached(x, t, cond)) <= 1e-4


def test_cli_merge(base, tmp_path):
    save_model(base, tmp_path / "base")
    make_adapter(base, tmp_path / "a", "mlp", 2)
    runner = CliRunner()
    args = ["merge", "--base", str(tmp_path / "base"), "--adapter", str(tmp_path / "a")]
    res = runner.invoke(main, [*args, "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    with torch.no_grad():
        x, t, cond = inputs()
        want = merge_adapter(copy.deepcopy(base), tmp_path / "a")(x, t, cond)
        assert torch.equal(load_model(tmp_path / "m")(x, t, cond), want)
    assert load_model_spec(tmp_path / "m").source.name == "tee"


@pytest.mark.parametrize("problem", ["missing", "other-base", "nan"])
def test_cli_merge_errors(base, tmp_path, problem):
    adapter = tmp_path / "a"
    if problem != "missing":
        make_adapter(base, adapter, "mlp", 2)
    if problem == "nan":
        rewrite_weights(adapter, lambda d: next(iter(d.values())).fill_(float("nan")))
    model = micro_base(seed=3) if problem == "other-base" else base
    save_model(model, tmp_path / "base")
    args = ["merge", "--base", str(tmp_path / "base"), "--adapter", str(adapter)]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "m")])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    expected = {"missing": "does not exist", "other-base": "was trained on base", "nan": "NaN"}
    assert expected[problem] in lines[0]
    assert not (tmp_path / "m").exists()
