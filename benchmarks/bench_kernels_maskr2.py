"""MaskR² remap + one-hot: torch reference, and the Triton kernel on a GPU: a thin caller of
``tte2tee_fast.bench.kernels`` (the library behind ``tte2tee bench kernels``). Without
CUDA only the reference is timed (on the CPU) and the Triton columns read "no GPU".

    python benchmarks/bench_kernels_maskr2.py                  # table on stdout
    python benchmarks/bench_kernels_maskr2.py --json out.json  # result as JSON
    pytest benchmarks/bench_kernels_maskr2.py --benchmark-enable   # pytest-benchmark
"""

from __future__ import annotations

import argparse

import pytest
import torch
from tte2tee_fast.kernels.maskr2 import maskr2_one_hot_reference

from tte2tee_fast.bench.kernels import (
    config_for,
    format_table,
    run_kernel_bench,
    write_json,
)
from tte2tee_fast.condition.maskr2 import builtin_spec


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_bench_reference(benchmark, layout: str) -> None:
    spec = builtin_spec("tee->tte")
    labels = torch.randint(0, 6, (16, 256, 256), dtype=torch.uint8)
    lut = spec.lookup_table()
    out, _ = benchmark(
        maskr2_one_hot_reference, labels, lut, spec.num_channels, torch.float16, layout
    )
    assert out.shape[0] == 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", choices=("small", "paper"), default="small")
    parser.add_argument("--json", help="write the result to this JSON file")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    result = run_kernel_bench(config_for(args.shapes, args.repeats, ("maskr2_one_hot",)))
    print(format_table(result["rows"]), end="")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
