"""Model presets: sizes, the paper-scale counts of 2508.13077 / SDM, and preset handling."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from peft import LoraConfig
from torch import nn

from tte2tee_fast.errors import InputError
from tte2tee_fast.models import PRESETS, SemanticUNet, count_parameters, from_preset, preset_config

MLP_TARGETS = r".*(time_embed\.[02]|emb_layers\.1)"


def _resblock_out_channels(cfg: dict) -> list[int]:
    """Output channels of every ResBlock, from the SDM recipe (independent of the model code)."""
    mc, mult, n = cfg["model_channels"], cfg["channel_mult"], cfg["num_res_blocks"]
    enc = [mc * m for m in mult for _ in range(n)]
    down = [mc * m for m in mult[:-1]]
    middle = [mc * mult[-1]] * 2
    dec = [mc * m for m in reversed(mult) for _ in range(n + 1)]
    up = [mc * m for m in reversed(mult[1:])]
    return enc + down + middle + dec + up


def test_sdm256_counts_paper_scale():
    with torch.device("meta"):  # no memory for the ~650M parameters
        model = from_preset("sdm256")
    counts = count_parameters(model)
    assert 640e6 < counts["total"] < 660e6, counts
    linear = [m for m in model.modules() if type(m) is nn.Linear]
    chans = _resblock_out_channels(preset_config("sdm256"))
    assert len(chans) == 42  # 12 encoder + 5 down + 2 middle + 18 decoder + 5 up
    assert len(linear) == counts["linear_layers"] == 2 + len(chans) == 44
    # rank-1 LoRA on every Linear: (in + out) parameters per layer
    emb = 4 * 256
    expected = (256 + emb) + (emb + emb) + sum(emb + 2 * c for c in chans)
    assert expected == sum(m.in_features + m.out_features for m in linear) == 98048


def test_sdm256_rank1_lora_via_peft_matches():
    with torch.device("meta"):
        model = from_preset("sdm256")
        model.add_adapter(LoraConfig(r=1, lora_alpha=1, target_modules=MLP_TARGETS))
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora == 98048 == count_parameters(model)["lora"]


def test_tiny_is_small_and_micro_smaller():
    with torch.device("meta"):
        tiny, micro = from_preset("tiny"), from_preset("micro")
    n_tiny, n_micro = count_parameters(tiny)["total"], count_parameters(micro)["total"]
    assert 3e6 <= n_tiny <= 8e6
    assert n_micro < 1e6
    assert tiny.config.sample_size == 128


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_config_is_the_model_config(name):
    with torch.device("meta"):
        model = SemanticUNet.from_preset(name)
    cfg = asdict(PRESETS[name])
    for key, value in cfg.items():
        got = model.config[key]
        assert (tuple(got) if isinstance(value, tuple) else got) == value, key


def test_overrides_and_unknown_names():
    assert preset_config("micro", label_channels=6)["label_channels"] == 6
    with pytest.raises(InputError, match="unknown model preset 'huge'"):
        from_preset("huge")
    with pytest.raises(InputError, match="bad override"):
        preset_config("micro", not_a_field=1)


def test_cli_info_prints_the_counts(tmp_path):
    from click.testing import CliRunner

    from tte2tee_fast.cli import main
    from tte2tee_fast.models import save_model

    res = CliRunner().invoke(main, ["info", "--preset", "sdm256"])
    assert res.exit_code == 0, res.output
    with torch.device("meta"):
        counts = count_parameters(from_preset("sdm256"))
    assert f"{counts['total']:,}" in res.output and f"{counts['spade']:,}" in res.output
    assert "Linear layers: 44" in res.output
    path = save_model(from_preset("micro"), tmp_path / "m")
    res = CliRunner().invoke(main, ["info", "--model", str(path)])
    assert res.exit_code == 0 and "Linear layers: 12" in res.output
    res = CliRunner().invoke(main, ["info", "--model", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output
