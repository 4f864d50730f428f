"""NoiseSchedule against diffusers: cosine = squaredcos_cap_v2 / betas_for_alpha_bar, spacing
rules = each scheduler's set_timesteps, karras = rounded use_karras_sigmas, q_sample = add_noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar

from tte2tee_fast.diffusion import NoiseSchedule
from tte2tee_fast.errors import InputError

SCHED = NoiseSchedule.cosine(1000)


def test_cosine_matches_diffusers_squaredcos_cap_v2():
    ref_betas = betas_for_alpha_bar(1000, alpha_transform_type="cosine").double()  # float32 values
    torch.testing.assert_close(SCHED.betas, ref_betas, rtol=1e-6, atol=1e-9)
    d = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(SCHED.alphas_cumprod, d.alphas_cumprod.double(), rtol=1e-4, atol=0)
    # float64 from the formula (Nichol & Dhariwal eq. 17, beta capped at 0.999)
    f = [math.cos((i / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(1001)]
    abar = np.cumprod(1 - np.minimum(1 - np.array(f[1:]) / np.array(f[:-1]), 0.999))
    np.testing.assert_allclose(SCHED.alphas_cumprod.numpy(), abar, rtol=1e-12)


def test_derived_quantities():
    ab = SCHED.alphas_cumprod
    torch.testing.assert_close(SCHED.alpha**2 + SCHED.sigma**2, torch.ones_like(ab))
    torch.testing.assert_close(SCHED.k_sigmas, ((1 - ab) / ab).sqrt())
    torch.testing.assert_close(SCHED.log_snr, 0.5 * torch.log(ab / (1 - ab)))
    again = NoiseSchedule.from_alphas_cumprod(ab.numpy())
    assert torch.equal(again.alphas_cumprod, ab)


def test_q_sample_matches_diffusers_add_noise():
    d = DDPMScheduler(num_train_timesteps=1000, trained_betas=SCHED.betas.tolist())
    d.alphas_cumprod = SCHED.alphas_cumprod.clone()
    g = torch.Generator().manual_seed(0)
    x0, noise = (
        torch.randn(4, 3, 5, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 5, generator=g, dtype=torch.float64),
    )
    t = torch.tensor([0, 17, 500, 999])
    torch.testing.assert_close(
        SCHED.q_sample(x0, t, noise), d.add_noise(x0, noise, t), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("n", [1, 7, 8, 13, 25, 50, 999, 1000])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler])
def test_spacing_matches_diffusers(cls, spacing, n):
    d = cls(num_train_timesteps=1000, timestep_spacing=spacing)
    d.set_timesteps(n)
    ref = d.timesteps.double()
    if cls is EulerDiscreteScheduler and spacing == "linspace":
        ref = ref.round()  # Euler/Heun keep linspace fractional; we round like DDIM/DDPM
    assert torch.equal(SCHED.timesteps(n, spacing).double(), ref)


@pytest.mark.parametrize("n", [1, 7, 8, 13, 25, 50, 500])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("cls", [DPMSolverMultistepScheduler, UniPCMultistepScheduler])
def test_multistep_spacing_is_n_plus_one_rule(cls, spacing, n):
    d = cls(num_train_timesteps=1000, timestep_spacing=spacing)
    d.set_timesteps(n)
    ours = (
        SCHED.timesteps(n, spacing)
        if spacing == "trailing"
        else SCHED.timesteps(n + 1, spacing)[:-1]
    )
    assert torch.equal(ours, d.timesteps.long())


@pytest.mark.parametrize("n", [4, 10, 20])
def test_karras_matches_rounded_diffusers_karras(n):
    """On a linear-beta schedule (where diffusers rounds Karras timesteps) and without collisions,
    our karras spacing is diffusers' use_karras_sigmas timesteps."""
    d = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", use_karras_sigmas=True
    )
    d.set_timesteps(n)
    ours = NoiseSchedule.from_alphas_cumprod(d.alphas_cumprod.double()).timesteps(n, "karras")
    assert torch.equal(ours, d.timesteps.long())


@pytest.mark.parametrize("n", [1, 5, 10, 37, 980])
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_t_max_is_diffusers_rule_on_the_cut_schedule(spacing, n):
    """t_max = 979: diffusers' spacing of a 980-step schedule (the same first 980 timesteps)."""
    d = DDIMScheduler(num_train_timesteps=980, timestep_spacing=spacing)
    d.set_timesteps(n)
    assert torch.equal(SCHED.timesteps(n, spacing, t_max=979), d.timesteps.long())


@pytest.mark.parametrize("n", [4, 10, 20])
def test_karras_t_max_is_karras_on_the_cut_schedule(n):
    full = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    cut = DPMSolverMultistepScheduler(
        num_train_timesteps=800, trained_betas=full.betas[:800].tolist(), use_karras_sigmas=True
    )
    cut.set_timesteps(n)
    ours = NoiseSchedule.from_alphas_cumprod(full.alphas_cumprod.double())
    assert torch.equal(ours.timesteps(n, "karras", t_max=799), cut.timesteps.long())


@pytest.mark.parametrize("n", [4, 10, 20])
@pytest.mark.parametrize("t_min", [3, 10, 50])
def test_karras_t_min_is_diffusers_sigma_min(n, t_min):
    """t_min: diffusers' karras sigmas with sigma_min = the k-sigma of t_min (Euler's config),
    mapped back to timesteps (rounded; on a linear-beta schedule, free of collisions)."""
    d = EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    k_sigmas = ((1 - d.alphas_cumprod) / d.alphas_cumprod).sqrt()
    d = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        use_karras_sigmas=True,
        sigma_min=float(k_sigmas[t_min]),
        sigma_max=float(k_sigmas[-1]),
    )
    d.set_timesteps(n)
    ours = NoiseSchedule.from_alphas_cumprod(d.alphas_cumprod.double())
    got = ours.timesteps(n, "karras", t_min=t_min)
    assert int(got[-1]) == t_min
    assert torch.equal(got, d.timesteps.round().long())


def test_t_min_bad_values():
    with pytest.raises(InputError, match="karras spacing only"):
        SCHED.timesteps(10, "trailing", t_min=5)
    with pytest.raises(InputError, match="t_min must be between 0 and 898"):
        SCHED.timesteps(10, "karras", t_max=899, t_min=899)
    with pytest.raises(InputError, match="at most t_max - t_min \\+ 1 = 6"):
        SCHED.timesteps(7, "karras", t_max=15, t_min=10)


def test_t_max_bad_values():
    with pytest.raises(InputError, match="leading"):
        SCHED.timesteps(10, "leading", t_max=900)
    for bad in (0, 1000):
        with pytest.raises(InputError, match="t_max must be between 1 and 999"):
            SCHED.timesteps(10, "trailing", t_max=bad)
    with pytest.raises(InputError, match="at most t_max \\+ 1 = 11"):
        SCHED.timesteps(12, "trailing", t_max=10)


@pytest.mark.parametrize("n", [1, 2, 10, 50, 200, 1000])
def test_karras_on_cosine_gives_distinct_descending_steps(n):
    ts = SCHED.timesteps(n, "karras")
    assert ts.shape == (n,) and int(ts[0]) == 999
    assert n == 1 or int(ts[-1]) == 0
    assert bool((ts[1:] < ts[:-1]).all()) and int(ts.min()) >= 0


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing", "karras"])
def test_spacings_are_strictly_descending_in_range(spacing):
    for n in (1, 3, 7, 64, 333, 1000):
        ts = SCHED.timesteps(n, spacing)
        assert ts.dtype == torch.int64 and ts.shape == (n,)
        assert bool((ts[1:] < ts[:-1]).all()) and 0 <= int(ts.min()) and int(ts.max()) < 1000


def test_bad_inputs_raise():
    with pytest.raises(InputError, match="trailing"):
        SCHED.timesteps(10, "cosine")
    for n in (0, 1001):
        with pytest.raises(InputError, match="between 1 and 1000"):
            SCHED.timesteps(n)
    with pytest.raises(InputError, match="rho"):
        SCHED.timesteps(10, "karras", rho=0)
    with pytest.raises(InputError):
        NoiseSchedule.from_alphas_cumprod(torch.tensor([0.5, 0.9]))
