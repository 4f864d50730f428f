"""EMA: decay schedule and updates against diffusers' EMAModel and a float64 loop; state I/O."""

from __future__ import annotations

import pytest
import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch import nn

from tte2tee_fast.errors import InputError
from tte2tee_fast.training.ema import EMA, ema_decay


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Linear(6, 3))


def _perturb(net: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("power", [None, 2 / 3])
def test_matches_diffusers_ema_model(power):
    net = _net()
    ours = EMA(net, max_decay=0.99, power=power)
    ref = EMAModel(
        net.parameters(), decay=0.99, use_ema_warmup=power is not None, power=power or 2 / 3
    )
    for step in range(40):
        _perturb(net, step)
        d = ours.update(net)
        ref.step(net.parameters())
        assert d == pytest.approx(ref.cur_decay_value, abs=0, rel=1e-15)
    for s, r in zip(ours.shadow, ref.shadow_params, strict=True):
        torch.testing.assert_close(s, r, rtol=1e-6, atol=1e-7)


def test_matches_float64_loop_and_formula():
    net = _net(1)
    ema = EMA(net, max_decay=0.9)
    avg = None
    for step in range(30):
        _perturb(net, step)
        ema.update(net)
        d = 0.0 if step == 0 else min(0.9, (1 + step) / (10 + step))
        cur = [p.detach().double().clone() for p in net.parameters()]
        avg = cur if avg is None else [d * a + (1 - d) * c for a, c in zip(avg, cur, strict=True)]
    for s, a in zip(ema.shadow, avg, strict=True):
        torch.testing.assert_close(s.double(), a, rtol=1e-5, atol=1e-6)
    assert (
        ema_decay(0) == 0.0 and ema_decay(1, 0.999) == 2 / 11 and ema_decay(10**6, 0.999) == 0.999
    )
    assert ema_decay(8, 0.999, power=0.75) == pytest.approx(1 - 9**-0.75)


def test_state_dict_roundtrip_through_safetensors_and_copy_to(tmp_path):
    net = _net(2)
    ema = EMA(net, max_decay=0.95)
    for step in range(5):
        _perturb(net, step)
        ema.update(net)
    save_file(ema.state_dict(), tmp_path / "ema.safetensors")
    other = EMA(_net(3), max_decay=0.95)
    other.load_state_dict(load_file(tmp_path / "ema.safetensors"))
    assert other.num_updates == 5
    for a, b in zip(ema.shadow, other.shadow, strict=True):
        assert torch.equal(a, b)
    target = _net(4)
    other.copy_to(target)
    for p, s in zip(target.parameters(), ema.shadow, strict=True):
        assert torch.equal(p, s)
    # continuing from the reloaded state matches continuing the original bit for bit
    _perturb(net, 9)
    ema.update(net)
    other.update(net)
    for a, b in zip(ema.shadow, other.shadow, strict=True):
        assert torch.equal(a, b)


def test_mismatched_state_raises():
    ema = EMA(_net())
    state = ema.state_dict()
    state.pop("0.weight")
    with pytest.raises(InputError, match="missing"):
        EMA(_net()).load_state_dict(state)
    with pytest.raises(InputError, match="decay"):
        EMA(_net(), max_decay=1.0)
