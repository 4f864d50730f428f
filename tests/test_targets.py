"""LoRA target presets: resolution by module type, peft configs, analytic parameter counts."""

import copy

import pytest
import torch
from torch import nn

from tte2tee_fast.adapt.targets import (
    TARGET_PRESETS,
    count_lora_parameters,
    lora_config,
    resolve_targets,
)
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import from_preset


@pytest.fixture(scope="module")
def micro() -> nn.Module:
    torch.manual_seed(0)
    return from_preset("micro")


def _peft_counts(model: nn.Module, preset: str, rank: int) -> tuple[int, set[str]]:
    """Trainable parameters and adapted module names as peft itself reports them."""
    model.add_adapter(lora_config(model, preset, rank))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapted = {n for n, m in model.named_modules() if hasattr(m, "lora_A")}
    return trainable, adapted


def test_mlp_is_every_linear_layer(micro):
    linears = [n for n, m in micro.named_modules() if isinstance(m, nn.Linear)]
    assert resolve_targets(micro, "mlp") == linears
    assert {n.rsplit(".", 2)[-2] for n in linears} == {"time_embed", "emb_layers"}


def test_presets_split_the_block_convs(micro):
    groups = {p: resolve_targets(micro, p) for p in ("mlp", "attn", "conv", "spade")}
    names = [n for g in groups.values() for n in g]
    assert len(names) == len(set(names))  # disjoint
    assert set(resolve_targets(micro, "all")) == set(names)
    assert all(n.endswith((".attn.qkv", ".attn.proj_out")) for n in groups["attn"])
    assert all(n.endswith(("in_layers.2", "out_layers.3", ".skip")) for n in groups["conv"])
    assert all(".spade_" in n for n in groups["spade"])
    assert all(isinstance(micro.get_submodule(n), nn.Conv2d) for p in ("attn", "conv", "spade")
               for n in groups[p])  # fmt: skip
    # every conv of the network is a target except the stem and the output conv
    convs = {n for n, m in micro.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs - set(names) == {"conv_in", "out.2"}


@pytest.mark.parametrize("preset", TARGET_PRESETS)
@pytest.mark.parametrize("rank", [1, 3])
def test_count_matches_peft(micro, preset, rank):
    model = copy.deepcopy(micro)
    expected = count_lora_parameters(micro, preset, rank)
    trainable, adapted = _peft_counts(model, preset, rank)
    assert trainable == expected
    assert adapted == set(resolve_targets(micro, preset))


def test_sdm256_mlp_rank1_is_about_1e5():
    with torch.device("meta"):
        model = from_preset("sdm256")
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    n = count_lora_parameters(model, "mlp", 1)
    assert 5e4 <= n <= 2e5  # the paper's ~1e5-parameter adapter
    trainable, adapted = _peft_counts(model, "mlp", 1)  # peft works on the meta device
    assert trainable == n
    assert adapted == linears


def test_lora_config_fields(micro):
    cfg = lora_config(micro, "attn", 4)
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (4, 4.0, 0.0)
    assert sorted(cfg.target_modules) == sorted(resolve_targets(micro, "attn"))
    assert lora_config(micro, "mlp", 2, alpha=8, dropout=0.1).lora_alpha == 8.0


@pytest.mark.parametrize(
    ("args", "match"),
    [(("bogus", 1), "unknown LoRA target preset 'bogus'"), (("mlp", 0), "rank"),
     (("mlp", 1.5), "rank")],
)  # fmt: skip
def test_bad_options(micro, args, match):
    with pytest.raises(InputError, match=match):
        lora_config(micro, *args)


def test_refuses_model_with_lora(micro):
    model = copy.deepcopy(micro)
    model.add_adapter(lora_config(model, "mlp", 1))
    with pytest.raises(InputError, match="already carries LoRA"):
        resolve_targets(model, "mlp")
