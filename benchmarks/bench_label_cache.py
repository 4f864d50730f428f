"""OpenVINO's label cache against the whole graph, as a sampler uses it: one mask batch (new
labels) and ``NFE`` denoiser calls on it, at NFE 2, 4 and 10. Baseline: ``label_cache=0`` (the
whole graph at every call); the other: the default (the label part once per mask batch, the
step part per call; export/ov_split.py). bf16 where the CPU has bf16 hardware, else f32.

    pytest benchmarks/bench_label_cache.py --benchmark-only          # packaged base + phantom-tee
    TTE2TEE_BENCH_SIZE=smoke pytest benchmarks/bench_label_cache.py --benchmark-only

Ratios (``vs_baseline``, > 1 = the cache is faster) per NFE group; see ``benchmarks/conftest.py``.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from tte2tee_fast.bench.denoiser import mask_batch
from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.backends import build_denoiser

NFES = (2, 4, 10)
CACHES = (0, 4)  # 0: the baseline


@pytest.mark.parametrize("label_cache", CACHES, ids=[f"cache{c}" for c in CACHES])
@pytest.mark.parametrize("nfe", NFES, ids=[f"nfe{n}" for n in NFES])
def test_mask_batch(benchmark, bench_size, bench_labels, nfe: int, label_cache: int) -> None:
    if bench_size.device != "cpu":
        pytest.skip("openvino: a CPU engine (run with TTE2TEE_BENCH_DEVICE=cpu)")
    try:
        from tte2tee_fast.export.openvino import OpenVINODenoiser, cpu_has_bf16, import_openvino

        ov = import_openvino()
        den = build_denoiser(  # for its engine file
            bench_size.model,
            bench_size.adapter,
            "openvino",
            "fp32",
            batch=bench_size.batch,
            label_cache=0,
        )
    except InputError as e:  # openvino missing: one line saying what to install
        pytest.skip(str(e))
    precision = "bf16" if cpu_has_bf16(ov.Core()) else "f32"
    runner = OpenVINODenoiser(
        den.info["engine"], precision=precision, batch=bench_size.batch, label_cache=label_cache
    )
    b, s = bench_size.batch, den.size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 1, s, s, generator=gen).numpy()  # [B, 1, S, S]
    labels = bench_labels(den.spec, b, s).numpy()  # [B, S, S] source schema
    rounds = itertools.count()

    def one_round() -> None:
        # new labels every round (mirrored on odd rounds), the same for both cases
        mask_batch(runner, x, labels[:, :, ::-1].copy() if next(rounds) % 2 else labels, nfe)

    benchmark.group = f"label-cache-nfe{nfe}"
    benchmark.extra_info.update(
        baseline=label_cache == 0,
        nfe=nfe,
        batch=b,
        size=s,
        precision=runner.effective_precision,
        split=runner.split is not None,
        label_cache_bytes=runner.label_cache_bytes,
        bench_size=bench_size.name,
    )
    benchmark.pedantic(one_round, rounds=bench_size.rounds + 2, warmup_rounds=bench_size.warmup + 1)
    assert label_cache == 0 or runner.split is not None
    if label_cache:  # the label part ran once per round, not per call
        assert runner.features.runs == bench_size.rounds + 2 + bench_size.warmup + 1
