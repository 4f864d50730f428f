"""Training objective: loss against an independent float64 recomputation, min-SNR weights
against the formula (with the cosine schedule rebuilt in numpy), label dropout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tte2tee_fast.diffusion.objective import (
    diffusion_loss,
    drop_labels,
    loss_weights,
)
from tte2tee_fast.diffusion.schedule import NoiseSchedule
from tte2tee_fast.errors import InputError


def _cosine_abar_np(T: int = 1000, s: float = 0.008) -> np.ndarray:
    """alphas_cumprod of the cosine schedule, from the formula (Nichol & Dhariwal eq. 17)."""
    f = [math.cos((i / T + s) / (1 + s) * math.pi / 2) ** 2 for i in range(T + 1)]
    betas = np.minimum(1 - np.array(f[1:]) / np.array(f[:-1]), 0.999)
    return np.cumprod(1 - betas)


class _TinyNet(nn.Module):
    """A small conditional net standing in for the UNet: output depends on x, t and cond."""

    def __init__(self, c: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1 + c, 1, 3, padding=1)

    def forward(self, x, t, cond):
        return self.conv(torch.cat([x, cond], 1)) * (1 + t.to(x.dtype).view(-1, 1, 1, 1) / 1000)


def _batch(seed: int = 0, b: int = 6, c: int = 3, hw: int = 8):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, 1, hw, hw, generator=g) * 2 - 1
    cond = torch.nn.functional.one_hot(torch.randint(0, c, (b, hw, hw), generator=g), c)
    cond = cond.permute(0, 3, 1, 2).float()
    t = torch.tensor([0, 1, 17, 250, 600, 999])[:b]
    noise = torch.randn(b, 1, hw, hw, generator=g)
    return x0, cond, t, noise


def test_min_snr_weights_match_formula():
    sched = NoiseSchedule.cosine(1000)
    abar = _cosine_abar_np()
    snr = abar / (1 - abar)
    t = torch.arange(1000)
    for gamma in (1.0, 5.0):
        w_eps = loss_weights(sched, t, "eps", "min_snr", gamma).numpy()
        w_v = loss_weights(sched, t, "v", "min_snr", gamma).numpy()
        np.testing.assert_allclose(w_eps, np.minimum(snr, gamma) / snr, rtol=1e-10)
        np.testing.assert_allclose(w_v, np.minimum(snr, gamma) / (snr + 1), rtol=1e-10)
    # min-SNR only ever down-weights the low-noise end for eps-prediction
    w = loss_weights(sched, t, "eps", "min_snr", 5.0).numpy()
    assert w[0] < 1e-3 and w[-1] == 1.0 and np.all(np.diff(w) >= 0)
    np.testing.assert_array_equal(loss_weights(sched, t, "eps", "none").numpy(), np.ones(1000))


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("weighting", ["none", "min_snr"])
def test_loss_matches_float64_recomputation(prediction, weighting):
    torch.manual_seed(0)
    net = _TinyNet()
    x0, cond, t, noise = _batch()
    loss = diffusion_loss(
        net, x0, cond, NoiseSchedule.cosine(1000), t, noise, prediction, weighting
    )

    # independent recomputation: numpy schedule, float64 network, explicit loops
    abar = _cosine_abar_np()
    net64 = _TinyNet().double()
    net64.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    total = 0.0
    for i in range(x0.shape[0]):
        a, s = math.sqrt(abar[t[i]]), math.sqrt(1 - abar[t[i]])
        x0i, ni = x0[i : i + 1].double(), noise[i : i + 1].double()
        xt = a * x0i + s * ni
        with torch.no_grad():
            eps = net64(xt, t[i : i + 1], cond[i : i + 1].double())  # the model returns eps
        # v-space: the v the returned eps implies (eps = s x_t + a v) against the true v
        out = eps if prediction == "eps" else (eps - s * xt) / a
        target = ni if prediction == "eps" else a * ni - s * x0i
        snr = abar[t[i]] / (1 - abar[t[i]])
        w = 1.0
        if weighting == "min_snr":
            w = min(snr, 5.0) / (snr if prediction == "eps" else snr + 1)
        total += w * float(((out - target) ** 2).mean())
    ref = total / x0.shape[0]
    assert loss.dtype == torch.float32
    loss = float(loss.detach())
    assert abs(loss - ref) <= 1e-5 * abs(ref) + 1e-7, (loss, ref)


def test_loss_backpropagates_and_plain_mse():
    torch.manual_seed(1)
    net = _TinyNet()
    x0, cond, t, noise = _batch(seed=3)
    sched = NoiseSchedule.cosine(1000)
    loss = diffusion_loss(net, x0, cond, sched, t, noise, weighting="none")
    ref = torch.nn.functional.mse_loss(net(sched.q_sample(x0, t, noise), t, cond), noise)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)
    loss.backward()
    assert net.conv.weight.grad is not None and net.conv.weight.grad.abs().sum() > 0


def test_label_dropout_rate_and_determinism():
    n = 20000
    cond = torch.ones(n, 2, 2, 2)
    out = drop_labels(cond, 0.1, torch.Generator().manual_seed(5))
    per_sample = out.flatten(1)
    dropped = (per_sample == 0).all(1)
    kept = (per_sample == 1).all(1)
    assert bool((dropped | kept).all())  # whole samples only, nothing else touched
    rate = float(dropped.float().mean())
    assert abs(rate - 0.1) < 4 * math.sqrt(0.1 * 0.9 / n), rate  # binomial, 4 standard errors
    again = drop_labels(cond, 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
    assert torch.equal(drop_labels(cond, 0.0, torch.Generator().manual_seed(0)), cond)
    assert not drop_labels(cond, 1.0, torch.Generator().manual_seed(0)).any()
    with pytest.raises(InputError, match="label dropout"):
        drop_labels(cond, 1.5, torch.Generator())


def test_unknown_options_raise():
    sched = NoiseSchedule.cosine(10)
    with pytest.raises(InputError, match="prediction"):
        loss_weights(sched, torch.tensor([1]), prediction="x0")
    with pytest.raises(InputError, match="weighting"):
        loss_weights(sched, torch.tensor([1]), weighting="p2")
