"""Dense plans (diffusion/dense.py) against the torch samplers (themselves checked against
diffusers in test_samplers.py), the torch-free import, plan files, and the shared noise."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tte2tee_fast.diffusion import NoiseSchedule, frame_noise, get_sampler
from tte2tee_fast.diffusion.clip import clip_denoised
from tte2tee_fast.diffusion.dense import (
    DETERMINISTIC,
    DensePlan,
    build_dense_plan,
    load_plan,
    run_dense_plan,
    sampler_plan,
)
from tte2tee_fast.diffusion.noise import frame_noise_np, frame_seed
from tte2tee_fast.errors import InputError

SCHED = NoiseSchedule.cosine(1000)


def _net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth nonlinear per-pixel 'network' whose clean estimates leave [-1, 1] at high noise
    (so the clamp is exercised)."""
    tt = t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype) / 1000
    return torch.tanh(1.3 * x + 0.5 * tt) * (1.1 - 0.4 * tt) + 0.2 * torch.sin(3 * x)


@pytest.mark.parametrize("sampler", DETERMINISTIC)
@pytest.mark.parametrize(
    ("steps", "spacing", "kw"),
    [(7, "trailing", {}), (12, "karras", {"t_min": 10, "t_max": 979}), (3, "linspace", {})],
)
@pytest.mark.parametrize("clip", [True, False])
def test_dense_plan_equals_the_torch_sampler(sampler, steps, spacing, kw, clip) -> None:
    ts = SCHED.timesteps(steps, spacing, **kw)
    x_T = torch.randn(3, 1, 6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps_fn = clip_denoised(_net, SCHED) if clip else _net
    want = get_sampler(sampler)(eps_fn, x_T.clone(), SCHED, ts)
    plan = build_dense_plan(sampler, ts.tolist())
    calls = []

    def eps_k(x, k):
        calls.append(k)
        return _net(x, torch.full((x.shape[0],), plan.timesteps[k], dtype=torch.long))

    got = run_dense_plan(eps_k, x_T.clone(), plan, clip=clip)
    assert calls == list(range(plan.nfe))
    assert plan.nfe == (2 * steps - 1 if sampler == "heun" else steps)
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 1e-7, err  # float64 rounding, amplified by 1/alpha = 2e4 at t = 999


def test_dense_plan_runs_on_numpy_as_on_torch() -> None:
    plan = sampler_plan("unipc", 10, "karras", t_max=979, t_min=10)
    x_T = frame_noise_np(3, [0, 1], (1, 8, 8))

    def eps_np(x, k):
        t = torch.full((x.shape[0],), plan.timesteps[k], dtype=torch.long)
        return _net(torch.from_numpy(x), t).numpy()

    def eps_t(x, k):
        return _net(x, torch.full((x.shape[0],), plan.timesteps[k], dtype=torch.long))

    got = run_dense_plan(eps_np, x_T, plan)
    want = run_dense_plan(eps_t, torch.from_numpy(x_T), plan)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6)


def test_plan_file_round_trip_and_errors(tmp_path) -> None:
    plan = sampler_plan("dpmpp_2m", 6, "trailing")
    path = tmp_path / "p.json"
    plan.save(path)
    again = load_plan(path)
    assert again == plan
    assert sampler_plan(f"plan:{path}", 99) == plan  # a plan file fixes its own steps
    bad = plan.to_json()
    bad["coef"][0][3] = 0.5  # evaluation 0 would use a later prediction
    path.write_text(json.dumps(bad))
    with pytest.raises(InputError, match="later prediction"):
        load_plan(path)
    path.write_text("{")
    with pytest.raises(InputError, match="invalid JSON"):
        load_plan(path)
    with pytest.raises(InputError, match="no dense plan"):
        build_dense_plan("ddpm", [999, 500])
    with pytest.raises(InputError, match="does not exist"):
        load_plan(tmp_path / "missing.json")
    with pytest.raises(InputError, match="format"):
        DensePlan.from_json({"format": 99})


def test_plans_and_noise_import_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from tte2tee_fast.diffusion.dense import sampler_plan\n"
        "from tte2tee_fast.diffusion.noise import frame_noise_np\n"
        "p = sampler_plan('heun', 4)\n"
        "print(p.nfe, float(frame_noise_np(0, [5], (2, 2))[0, 0, 0]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    nfe, first = out.stdout.split()
    assert int(nfe) == 7
    assert float(first) == float(frame_noise_np(0, [5], (2, 2))[0, 0, 0])


def test_torch_noise_is_the_numpy_noise_bit_for_bit() -> None:
    frames = [4, 0, 17]
    z_np = frame_noise_np(9, frames, (1, 5, 7), step=3)
    z_t = frame_noise(9, torch.tensor(frames), (1, 5, 7), step=3)
    assert torch.equal(z_t, torch.from_numpy(z_np))
    # the definition: Philox keyed by the hash of (seed, frame, step), float32 normals
    ref = np.random.Generator(np.random.Philox(key=frame_seed(9, 17, 3)))
    np.testing.assert_array_equal(z_np[2], ref.standard_normal((1, 5, 7), dtype=np.float32))
