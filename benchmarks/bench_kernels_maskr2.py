"""Benchmark of the MaskR² remap + one-hot: torch reference, and the Triton kernel on a GPU.

Without CUDA only the reference is timed (on the CPU) and the Triton rows read "no GPU".
On a CUDA machine both run on the GPU (timed with CUDA sync around each call); that path
has not been run here (no GPU on the development machine).

    python benchmarks/bench_kernels_maskr2.py                  # table on stdout
    python benchmarks/bench_kernels_maskr2.py --json out.json  # rows as JSON
    pytest benchmarks/bench_kernels_maskr2.py --benchmark-enable   # pytest-benchmark
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
from tte2tee_fast.kernels.maskr2 import maskr2_one_hot_reference, maskr2_one_hot_triton

from tte2tee_fast.adapt.maskr2 import builtin_spec

SIZES = ((1, 256, 256), (16, 256, 256))
LAYOUTS = ("nchw", "nhwc")
DTYPES = (torch.float32, torch.float16)


def _time_ms(fn: Callable[[], object], repeats: int, cuda: bool) -> float:
    """Median wall time of ``fn`` in ms, after two warm-up calls (compile / autotune)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_rows(sizes=SIZES, repeats: int = 10) -> list[dict]:
    """One row per (shape, layout, dtype): reference and Triton times, and pixel rates."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    spec = builtin_spec("tee->tte")
    lut = spec.lookup_table().to(device)
    c = spec.num_channels
    gen = torch.Generator().manual_seed(0)
    rows = []
    for b, h, w in sizes:
        labels = torch.randint(0, 6, (b, h, w), generator=gen, dtype=torch.uint8).to(device)
        for layout in LAYOUTS:
            for dtype in DTYPES:
                args = (labels, lut, c, dtype, layout)
                ref_ms = _time_ms(partial(maskr2_one_hot_reference, *args), repeats, cuda)
                tri_ms = None
                if cuda:
                    tri_ms = _time_ms(partial(maskr2_one_hot_triton, *args), repeats, cuda)
                mpix = b * h * w / 1e6
                rows.append(
                    {
                        "kernel": "maskr2_one_hot",
                        "shape": [b, h, w],
                        "channels": c,
                        "layout": layout,
                        "dtype": str(dtype).removeprefix("torch."),
                        "device": torch.cuda.get_device_name() if cuda else "cpu",
                        "reference_ms": round(ref_ms, 4),
                        "reference_mpix_s": round(mpix / ref_ms * 1e3, 2),
                        "triton_ms": round(tri_ms, 4) if tri_ms is not None else "no GPU",
                        "triton_mpix_s": round(mpix / tri_ms * 1e3, 2) if tri_ms else "no GPU",
                        "speedup": round(ref_ms / tri_ms, 2) if tri_ms else "no GPU",
                    }
                )
    return rows


@pytest.mark.parametrize("layout", LAYOUTS)
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
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    rows = bench_rows(repeats=args.repeats)
    cols = ("shape", "layout", "dtype", "device", "reference_ms", "triton_ms", "speedup")
    print("  ".join(f"{k:>14}" for k in cols))
    for row in rows:
        print("  ".join(f"{'x'.join(map(str, v)) if k == 'shape' else v!s:>14}" for k, v in
                        ((k, row[k]) for k in cols)))  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
