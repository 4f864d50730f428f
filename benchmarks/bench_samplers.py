"""The sampler loop per sampler at one NFE budget, on the same masks and counter-based noise:
:func:`tte2tee_fast.bench.samplers.run_sampler` (the loop ``tte2tee bench samplers`` times) with
the step count :func:`~tte2tee_fast.bench.samplers.steps_for_nfe` gives each sampler for the
budget, karras spacing from t = 979 to t = 10 (``tte2tee bench samplers``' grid; the loop costs
the same on ``tte2tee generate``'s trailing grid from t = 999). The network is
the packaged ``phantom-tte`` base (full: 10 NFE, batch 8) or a random ``micro`` model (smoke:
4 NFE, batch 2). Accuracy per NFE is ``tte2tee bench samplers``' job; this times the loop.

    pytest benchmarks/bench_samplers.py --benchmark-only
    TTE2TEE_BENCH_SIZE=smoke pytest benchmarks/bench_samplers.py --benchmark-only

Ratios: ddim time / sampler time at the same NFE (``vs_baseline``; ~1 when the loop is nearly
free next to the network), printed at the end and in ``--benchmark-json``.
"""

from __future__ import annotations

import pytest
import torch

from tte2tee_fast.bench.denoiser import load_bench_setup
from tte2tee_fast.bench.samplers import SamplerBenchConfig, run_sampler, steps_for_nfe
from tte2tee_fast.condition.maskr2 import remap_one_hot
from tte2tee_fast.diffusion import SAMPLERS, NoiseSchedule

BASELINE = "ddim"


@pytest.fixture(scope="module")
def problem(bench_size, bench_labels):
    """``(model, cond [N, C, S, S])`` on the bench device, N = one batch of frames."""
    model, spec, _ = load_bench_setup(bench_size.model, None)
    model = model.float().eval().to(bench_size.device)
    s = int(model.config.sample_size)
    cond = remap_one_hot(bench_labels(spec, bench_size.batch, s), spec)
    return model, cond.to(bench_size.device)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_loop(benchmark, bench_size, problem, sampler: str) -> None:
    model, cond = problem
    config = SamplerBenchConfig(
        samplers=(sampler,),
        nfes=(bench_size.nfe,),
        spacing="karras",
        t_min=10,
        batch_size=bench_size.batch,
    )
    schedule = NoiseSchedule.cosine(1000)
    steps = steps_for_nfe(sampler, bench_size.nfe, config.guidance, schedule.num_train_timesteps)
    benchmark.group = "samplers"
    benchmark.extra_info.update(
        baseline=sampler == BASELINE,
        steps=steps,
        nfe_budget=bench_size.nfe,
        batch=bench_size.batch,
        device=bench_size.device,
        bench_size=bench_size.name,
    )
    x, nfe, _ = benchmark.pedantic(
        run_sampler,
        args=(model, cond, sampler, steps, config, schedule),
        rounds=bench_size.rounds,
        warmup_rounds=bench_size.warmup,
    )
    benchmark.extra_info["nfe"] = nfe
    assert x.shape == (cond.shape[0], 1, *cond.shape[-2:]) and bool(torch.isfinite(x).all())
    assert nfe <= bench_size.nfe
