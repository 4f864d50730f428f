"""clip_denoised: DDPM with it equals diffusers' DDPMScheduler(clip_sample=True)."""

from __future__ import annotations

import pytest
import torch
from test_samplers import SCHED, _ref_ddpm, _rel, _step_noise, _x_T, mixture_eps

from tte2tee_fast.diffusion import NFECounter, get_sampler
from tte2tee_fast.diffusion.clip import clip_denoised

RANGE = 0.5  # the mixture puts most x0 mass beyond +-0.5: the clamp bites at every step


def _ours_clipped(ts, z):
    eps = clip_denoised(mixture_eps, SCHED, -RANGE, RANGE)
    noise = lambda i, like: z[i].to(like.dtype)  # noqa: E731
    return get_sampler("ddpm")(eps, _x_T(), SCHED, ts, noise=noise)


@pytest.mark.parametrize(("spacing", "n"), [("leading", 25), ("trailing", 8)])
def test_clipped_ddpm_matches_diffusers_clip_sample(spacing, n, monkeypatch):
    z = _step_noise(n)
    ts, ref = _ref_ddpm(spacing, n, z, "fixed_small", monkeypatch, clip_range=RANGE)
    _, unclipped = _ref_ddpm(spacing, n, z, "fixed_small", monkeypatch)
    ours = _ours_clipped(ts, z)
    assert _rel(ours, ref) < 1e-6
    assert _rel(unclipped, ref) > 1e-2  # the clamp changed the result: the test can fail


def test_clip_keeps_in_range_estimates_and_cost():
    x, t = _x_T(), torch.full((_x_T().shape[0],), 500)
    wide = clip_denoised(mixture_eps, SCHED, -100.0, 100.0)  # never bites: eps unchanged
    assert torch.allclose(wide(x, t), mixture_eps(x, t), rtol=0, atol=1e-12)
    counter = NFECounter(clip_denoised(mixture_eps, SCHED))
    counter(x, t)
    assert counter.nfe == 1
