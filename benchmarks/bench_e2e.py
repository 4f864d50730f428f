"""Frames end to end, ours: :func:`tte2tee_fast.generate.backends.build_frame_fn` (what
``tte2tee generate`` runs: merged model, unipc on its trailing grid from t = 999, MaskR² inside, uint8 frames
out) on one batch of masks, against the diffusers-style pipeline of ``tte2tee bench e2e``
(:func:`tte2tee_fast.bench.e2e.run_diffusers`: eager fp32, peft unmerged, diffusers'
DPMSolverMultistepScheduler at 20 steps; smoke: 4) on the same masks and noise, in the same
process. The 1000-step reference is ``tte2tee bench e2e``'s (too slow for repeated rounds).

    pytest benchmarks/bench_e2e.py --benchmark-only
    TTE2TEE_BENCH_SIZE=smoke pytest benchmarks/bench_e2e.py --benchmark-only

Ratios: diffusers-style time / ours time for the same frames (``vs_baseline``, > 1 = ours
faster), printed at the end and in ``--benchmark-json``. Fidelity is not measured here: it is
``tte2tee bench e2e``'s (the same frame function).
"""

from __future__ import annotations

import numpy as np
import pytest

from tte2tee_fast.bench.e2e import E2EConfig, peft_model, run_diffusers
from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.backends import FrameConfig, build_frame_fn

OURS = (("auto", "auto"), ("torch", "fp32"))


def _labels(bench_labels, spec, bench_size, size: int) -> np.ndarray:
    return bench_labels(spec, bench_size.frames, size).numpy().astype(np.uint8)  # [N, S, S]


def _extra(benchmark, bench_size, baseline: bool, **info) -> None:
    benchmark.group = "e2e"
    benchmark.extra_info.update(
        baseline=baseline,
        frames=bench_size.frames,
        device=bench_size.device,
        bench_size=bench_size.name,
        **info,
    )


@pytest.mark.parametrize(("backend", "precision"), OURS, ids=["-".join(c) for c in OURS])
def test_e2e_ours(benchmark, bench_size, bench_labels, backend, precision) -> None:
    config = FrameConfig(
        model=bench_size.model,
        adapter=bench_size.adapter,
        steps=bench_size.nfe,  # unipc: one network call per step
        backend=backend,
        precision=precision,
        batch_size=bench_size.batch,
        device=bench_size.device,
    )
    try:
        fn = build_frame_fn(config)
    except InputError as e:  # a missing package or device
        pytest.skip(str(e))
    labels = _labels(bench_labels, fn.spec, bench_size, fn.size)
    frames = np.arange(len(labels))
    _extra(benchmark, bench_size, False, **{k: fn.info[k] for k in ("backend", "precision")})
    images = benchmark.pedantic(
        fn, args=(labels, frames), rounds=bench_size.rounds, warmup_rounds=bench_size.warmup
    )
    assert images.shape == labels.shape and images.dtype == np.uint8


def test_e2e_diffusers_baseline(benchmark, bench_size, bench_labels) -> None:
    if bench_size.device != "cpu":
        pytest.skip("diffusers-style baseline: bench.e2e.run_diffusers runs on the CPU only")
    steps = 20 if bench_size.name == "full" else bench_size.nfe
    config = E2EConfig(
        n=bench_size.frames,
        diffusers_steps=steps,
        model=bench_size.model,
        adapter=bench_size.adapter,
    )
    model, spec = peft_model(config)
    labels = _labels(bench_labels, spec, bench_size, int(model.config.sample_size))
    _extra(benchmark, bench_size, True, steps=steps, backend="torch eager, peft unmerged")
    images = benchmark.pedantic(
        run_diffusers,
        args=(model, spec, labels, config),
        rounds=bench_size.rounds,
        warmup_rounds=bench_size.warmup,
    )
    assert images.shape[0] == len(labels)
