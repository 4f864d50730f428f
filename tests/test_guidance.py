"""Classifier-free guidance: one batched forward equals separate cond / uncond evaluations
combined by the formula; scale 1 and 0 cost one forward of B rows; NFE counting."""

from __future__ import annotations

import pytest
import torch

from tte2tee_fast.diffusion import NFECounter, NoiseSchedule, cfg_eps_fn, get_sampler
from tte2tee_fast.errors import InputError


class Net:
    """A conditional 'network' that records every forward's batch size."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(3, 2, generator=g, dtype=torch.float64)

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        c = torch.einsum("bkhw,kc->bchw", cond, self.w)  # [B, 2, H, W]
        return torch.sin(x + c) * (1 + t.view(-1, 1, 1, 1) / 1000)


def _inputs(B=4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 2, 5, 5, generator=g, dtype=torch.float64)
    cond = torch.nn.functional.one_hot(torch.randint(0, 3, (B, 5, 5), generator=g), 3)
    return x, torch.randint(0, 1000, (B,), generator=g), cond.permute(0, 3, 1, 2).double()


@pytest.mark.parametrize("scale", [1.5, 3.0, 7.5])
def test_guided_equals_formula_in_one_forward(scale):
    x, t, cond = _inputs()
    net = Net()
    out = cfg_eps_fn(net, cond, scale)(x, t)
    assert net.batches == [8]
    ref_net = Net()
    e_c, e_u = ref_net(x, t, cond), ref_net(x, t, torch.zeros_like(cond))
    torch.testing.assert_close(out, e_u + scale * (e_c - e_u), rtol=1e-12, atol=1e-12)


def test_scale_one_and_zero_are_single_forwards():
    x, t, cond = _inputs()
    net = Net()
    torch.testing.assert_close(cfg_eps_fn(net, cond, 1.0)(x, t), Net()(x, t, cond))
    torch.testing.assert_close(
        cfg_eps_fn(net, cond, 0.0)(x, t), Net()(x, t, torch.zeros_like(cond))
    )
    assert net.batches == [4, 4]


def test_negative_scale_rejected():
    with pytest.raises(InputError, match="scale"):
        cfg_eps_fn(Net(), torch.zeros(1, 3, 2, 2), -1.0)


@pytest.mark.parametrize(
    ("name", "scale", "nfe"), [("heun", 2.0, 2 * 9), ("dpmpp_2m", 2.0, 2 * 5), ("dpmpp_2m", 1.0, 5)]
)
def test_nfe_counter_counts_guided_calls_twice(name, scale, nfe):
    x, _, cond = _inputs()
    net = Net()
    counter = NFECounter(cfg_eps_fn(net, cond, scale))
    get_sampler(name)(
        counter, x, NoiseSchedule.cosine(1000), NoiseSchedule.cosine(1000).timesteps(5)
    )
    assert counter.nfe == nfe == sum(net.batches) // 4
    assert counter.rows == sum(net.batches)
    assert counter.calls == len(net.batches)
    counter.reset()
    assert counter.nfe == counter.calls == counter.rows == 0
