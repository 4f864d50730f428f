"""Denoiser forward per backend, through the one interface ``tte2tee generate`` uses
(:func:`tte2tee_fast.generate.backends.build_denoiser`: raw label maps in, MaskR² inside):
torch fp32 (the baseline), torch bf16 (autocast + channels_last), ONNX Runtime fp32, OpenVINO
f32 and, when ``TTE2TEE_BENCH_TRT_PLAN`` names a plan from ``tte2tee export trt`` for the same
model, TensorRT. A backend whose package is missing is skipped with the line saying what to
install; on CUDA the CPU engines (ort, openvino) are skipped. Every row times a whole forward:
the label cache of ONNX Runtime and OpenVINO is off here (export/onnx_split.py, ov_split.py;
bench_label_cache.py times OpenVINO's mask batches with and without it,
probes/label_cache_rounds.py either runtime's).

    pytest benchmarks/bench_backends.py --benchmark-only          # packaged base + phantom-tee
    TTE2TEE_BENCH_SIZE=smoke pytest benchmarks/bench_backends.py --benchmark-only

Ratios (``vs_baseline``: torch fp32 time / backend time, > 1 = faster) are printed at the end
and written into ``--benchmark-json``; see ``benchmarks/conftest.py``.
"""

from __future__ import annotations

import os

import pytest
import torch

from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.backends import build_denoiser

BASELINE = ("torch", "fp32")
CASES = (BASELINE, ("torch", "bf16"), ("ort", "fp32"), ("openvino", "fp32"), ("trt", "engine"))
CPU_ENGINES = ("ort", "openvino")


def _build(bench_size, backend: str, precision: str):
    plan = None
    if backend == "trt":
        plan = os.environ.get("TTE2TEE_BENCH_TRT_PLAN")
        if not plan:
            pytest.skip("trt: set TTE2TEE_BENCH_TRT_PLAN to a plan from `tte2tee export trt`")
    if backend in CPU_ENGINES and bench_size.device != "cpu":
        pytest.skip(f"{backend}: a CPU engine (run with TTE2TEE_BENCH_DEVICE=cpu)")
    try:
        return build_denoiser(
            bench_size.model,
            bench_size.adapter,
            backend,
            precision,
            batch=bench_size.batch,
            device=bench_size.device,
            engine=plan,
            label_cache=0,
        )
    except InputError as e:  # a missing package or device: one line saying what to install
        pytest.skip(str(e))


@pytest.mark.parametrize(("backend", "precision"), CASES, ids=["-".join(c) for c in CASES])
def test_denoiser_forward(benchmark, bench_size, bench_labels, backend, precision) -> None:
    den = _build(bench_size, backend, precision)
    b, s = bench_size.batch, den.size
    gen = torch.Generator().manual_seed(0)
    dev = bench_size.device if backend in ("torch", "compile") else "cpu"
    x = torch.randn(b, 1, s, s, generator=gen).to(dev)  # [B, 1, S, S]
    t = torch.randint(0, 1000, (b,), generator=gen).to(dev)  # [B]
    labels = bench_labels(den.spec, b, s).to(dev)  # [B, S, S] source schema

    def forward() -> torch.Tensor:
        eps = den(x, t, labels)
        bench_size.sync()
        return eps

    benchmark.group = "backends"
    benchmark.extra_info.update(
        baseline=(backend, precision) == BASELINE,
        batch=b,
        size=s,
        device=bench_size.device,
        bench_size=bench_size.name,
        threads=torch.get_num_threads(),
        backend=den.info["backend"],
        precision=den.info["precision"],
    )
    eps = benchmark(forward)
    assert eps.shape == (b, 1, s, s) and bool(torch.isfinite(eps).all())
