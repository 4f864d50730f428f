"""Fused LoRA linear and fused SPADE kernels against torch, with floors: a thin caller of
``tte2tee_fast.bench.kernels`` (the library behind ``tte2tee bench kernels``, which
describes the variants, shapes, timing and floors). Without CUDA only the torch paths run and
the Triton / floor columns read "no GPU".

    python benchmarks/bench_kernels.py                          # tiny's shapes, tables on stdout
    python benchmarks/bench_kernels.py --shapes paper --json out.json
    pytest benchmarks/bench_kernels.py --benchmark-enable       # pytest-benchmark, torch paths
"""

from __future__ import annotations

import argparse

import torch
from tte2tee_fast.kernels.lora_linear import lora_linear_reference
from tte2tee_fast.kernels.spade import spade_norm_act_reference

from tte2tee_fast.bench.kernels import (
    config_for,
    format_table,
    lora_problem,
    run_kernel_bench,
    write_json,
)

KERNELS = ("lora_linear", "spade_norm_act")


def test_bench_lora_reference(benchmark) -> None:
    # sdm256's per-ResBlock embedding projection (1024 -> 2048), 64 rows, rank 16, 4 adapters
    problem = lora_problem(64, 1024, 2048, 16, 4, torch.float32, "cpu", seed=0)
    y = benchmark(lora_linear_reference, *problem)
    assert y.shape == (64, 2048)


def test_bench_spade_reference(benchmark) -> None:
    x = torch.randn(4, 256, 32, 32)
    scale = torch.randn(4, 256)
    y = benchmark(spade_norm_act_reference, x, x, x, 32, 1e-5, "silu", scale, scale)
    assert y.shape == x.shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", choices=("small", "paper"), default="small")
    parser.add_argument("--json", help="write the result to this JSON file")
    parser.add_argument("--repeats", type=int, default=5, help="CPU timing repeats")
    args = parser.parse_args()
    result = run_kernel_bench(config_for(args.shapes, args.repeats, KERNELS))
    print(format_table(result["rows"]), end="")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
