"""Benchmark of the fused LoRA linear and fused SPADE kernels against torch, with floors.

On CUDA (medians of ``triton.testing.do_bench``, fresh caches are do_bench's business):

- LoRA: the fused multi-adapter kernel; torch eager unmerged, single adapter
  (``x @ W.T + b + s * (x @ A.T) @ B.T``); torch multi-adapter reference (the CPU path, dense
  over adapters); the merged GEMM ``F.linear(x, W + s B A, b)`` (what one merged adapter
  costs); and the floor max(bytes / copy bandwidth, flops / matmul throughput), both measured
  on the device (a 1 GiB copy, an 8192³ fp16 matmul).
- SPADE: the fused kernel; torch eager (group_norm, modulate, emb scale-shift, SiLU); and the
  bandwidth floor (read x, gamma, beta, write y once, at the measured copy bandwidth).

Without CUDA only the torch paths run, on the CPU (median wall time), and the Triton / floor
columns read "no GPU". The CUDA path has not been run on the development machine (no GPU).

    python benchmarks/bench_kernels.py                  # tables on stdout
    python benchmarks/bench_kernels.py --json out.json  # rows as JSON
    pytest benchmarks/bench_kernels.py --benchmark-enable   # pytest-benchmark, torch paths
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from tte2tee_fast.kernels.lora_linear import lora_linear_reference, lora_linear_triton
from tte2tee_fast.kernels.spade import spade_norm_act_reference, spade_norm_act_triton

# (rows, in, out): sdm256's per-ResBlock embedding projection (emb 1024 -> 2 * 1024) at a few
# batch sizes, and a token-sized GEMM
LORA_SHAPES = ((16, 1024, 2048), (64, 1024, 2048), (4096, 1024, 1024))
LORA_RANKS = (1, 16)
LORA_ADAPTERS = 4
# (B, C, H, W, groups): sdm256 decoder activations
SPADE_SHAPES = ((16, 256, 64, 64, 32), (4, 512, 32, 32, 32), (2, 256, 128, 128, 32))
NO_GPU = "no GPU"


def _time_ms(fn: Callable[[], object], cuda: bool, repeats: int) -> float:
    """Median ms: triton's do_bench on CUDA, wall clock after a warm-up call on the CPU."""
    if cuda:
        import triton.testing

        return float(triton.testing.do_bench(fn, return_mode="median"))
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def device_rates() -> tuple[float, float]:
    """(copy bandwidth in bytes/s, fp16 matmul flop/s) measured on the current CUDA device."""
    import triton.testing

    src = torch.empty(1 << 29, dtype=torch.float16, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    bw = 2 * src.numel() * 2 / (triton.testing.do_bench(partial(dst.copy_, src)) * 1e-3)
    n = 8192
    a = torch.randn(n, n, dtype=torch.float16, device="cuda")
    flops = 2 * n**3 / (triton.testing.do_bench(partial(torch.matmul, a, a)) * 1e-3)
    return bw, flops


def _lora_problem(m, n_in, n_out, rank, dtype, device, gen):
    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    k = LORA_ADAPTERS
    x, w, b = rnd(m, n_in), rnd(n_out, n_in, scale=n_in**-0.5), rnd(n_out)
    a, bb = rnd(k, rank, n_in, scale=n_in**-0.5), rnd(k, n_out, rank)
    s = torch.full((k,), 0.5, device=device)
    idx = (torch.arange(m) * k // m).to(device)  # rows grouped by adapter, as a mixed batch
    return x, w, b, a, bb, s, idx


def _unmerged(x, w, b, a0, b0, s0: float) -> torch.Tensor:
    """torch eager, one adapter, unmerged: base GEMM plus the two thin LoRA GEMMs."""
    return F.linear(x, w, b) + s0 * ((x @ a0.T) @ b0.T)


def lora_rows(repeats: int = 10, cuda: bool | None = None) -> list[dict]:
    cuda = torch.cuda.is_available() if cuda is None else cuda
    device = "cuda" if cuda else "cpu"
    dtypes = (torch.float16, torch.bfloat16) if cuda else (torch.float32,)
    rates = device_rates() if cuda else None
    gen = torch.Generator().manual_seed(0)
    rows = []
    for m, n_in, n_out in LORA_SHAPES:
        for rank in LORA_RANKS:
            for dtype in dtypes:
                x, w, b, a, bb, s, idx = _lora_problem(m, n_in, n_out, rank, dtype, device, gen)
                a0, b0, s0 = a[0], bb[0], float(s[0])
                merged = w + (s0 * b0.float() @ a0.float()).to(dtype)
                problem = (x, w, b, a, bb, s, idx)
                fns = {
                    "eager_unmerged_ms": partial(_unmerged, x, w, b, a0, b0, s0),
                    "reference_multi_ms": partial(lora_linear_reference, *problem),
                    "merged_gemm_ms": partial(F.linear, x, merged, b),
                }
                if cuda:
                    fns["triton_fused_ms"] = partial(lora_linear_triton, *problem)
                times = {k: _time_ms(fn, cuda, repeats) for k, fn in fns.items()}
                if cuda:
                    esize = x.element_size()
                    nbytes = esize * (m * n_in + n_out * n_in + n_out + m * n_out)
                    nbytes += esize * LORA_ADAPTERS * rank * (n_in + n_out)
                    flops = 2 * m * n_in * n_out + 2 * m * rank * (n_in + n_out)
                    times["floor_ms"] = max(nbytes / rates[0], flops / rates[1]) * 1e3
                row = {
                    "kernel": "lora_linear",
                    "shape": [m, n_in, n_out],
                    "rank": rank,
                    "adapters": LORA_ADAPTERS,
                    "dtype": str(dtype).removeprefix("torch."),
                    "device": torch.cuda.get_device_name() if cuda else "cpu",
                }
                row.update({k: round(v, 4) for k, v in times.items()})
                for key in ("triton_fused_ms", "floor_ms"):
                    row.setdefault(key, NO_GPU)
                rows.append(row)
    return rows


def spade_rows(repeats: int = 10, cuda: bool | None = None) -> list[dict]:
    cuda = torch.cuda.is_available() if cuda is None else cuda
    device = "cuda" if cuda else "cpu"
    dtypes = (torch.float16, torch.float32) if cuda else (torch.float32,)
    bw = device_rates()[0] if cuda else None
    gen = torch.Generator().manual_seed(0)
    rows = []
    for b, c, h, w, groups in SPADE_SHAPES:
        for dtype in dtypes:
            like = {"device": device, "dtype": dtype}
            x, gamma, beta = (torch.randn(b, c, h, w, generator=gen).to(**like) for _ in range(3))
            scale, shift = (torch.randn(b, c, generator=gen).to(**like) for _ in range(2))
            args = (x, gamma, beta, groups, 1e-5, "silu", scale, shift)
            times = {"eager_ms": _time_ms(partial(spade_norm_act_reference, *args), cuda, repeats)}
            if cuda:
                fused = partial(spade_norm_act_triton, *args)
                times["triton_fused_ms"] = _time_ms(fused, cuda, repeats)
                times["floor_ms"] = 4 * x.numel() * x.element_size() / bw * 1e3
            row = {
                "kernel": "spade_norm_act",
                "shape": [b, c, h, w],
                "groups": groups,
                "dtype": str(dtype).removeprefix("torch."),
                "device": torch.cuda.get_device_name() if cuda else "cpu",
            }
            row.update({k: round(v, 4) for k, v in times.items()})
            for key in ("triton_fused_ms", "floor_ms"):
                row.setdefault(key, NO_GPU)
            rows.append(row)
    return rows


def test_bench_lora_reference(benchmark) -> None:
    gen = torch.Generator().manual_seed(0)
    x, w, b, a, bb, s, idx = _lora_problem(64, 1024, 2048, 16, torch.float32, "cpu", gen)
    y = benchmark(lora_linear_reference, x, w, b, a, bb, s, idx)
    assert y.shape == (64, 2048)


@pytest.mark.parametrize("groups", [32])
def test_bench_spade_reference(benchmark, groups: int) -> None:
    x = torch.randn(4, 256, 32, 32)
    scale = torch.randn(4, 256)
    y = benchmark(spade_norm_act_reference, x, x, x, groups, 1e-5, "silu", scale, scale)
    assert y.shape == x.shape


def _print(rows: list[dict], cols: tuple[str, ...]) -> None:
    print("  ".join(f"{k:>18}" for k in cols))
    for row in rows:
        cells = ("x".join(map(str, row[k])) if k == "shape" else str(row[k]) for k in cols)
        print("  ".join(f"{c:>18}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--repeats", type=int, default=10, help="CPU timing repeats")
    args = parser.parse_args()
    lora = lora_rows(args.repeats)
    _print(lora, ("shape", "rank", "dtype", "triton_fused_ms", "eager_unmerged_ms",
                  "reference_multi_ms", "merged_gemm_ms", "floor_ms"))  # fmt: skip
    spade = spade_rows(args.repeats)
    _print(spade, ("shape", "groups", "dtype", "triton_fused_ms", "eager_ms", "floor_ms"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(lora + spade, f, indent=2)


if __name__ == "__main__":
    main()
