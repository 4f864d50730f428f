"""Phantom throughput: image/mask pairs per second at 256x256, in memory and written as PNGs.

    pytest benchmarks/bench_phantom.py --benchmark-enable           # pytest-benchmark table
    python benchmarks/bench_phantom.py                              # pairs/s per view on stdout

One round generates ``BATCH`` consecutive cases of a run (seeds ``case_seed(0, i)``), so the
pairs/s figure is ``BATCH / round time``. The ``write`` rows include PNG encoding and the
atomic renames of :func:`tte2tee_fast.data.pairs.write_pairs` (card.json included).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import pytest

from tte2tee_fast.data.pairs import write_pairs
from tte2tee_fast.data.phantom import case_seed, phantom_case

SIZE = 256
BATCH = 20
VIEWS = (("tte", "a4c"), ("tte", "a2c"), ("tee", "me4c"))


def _generate(modality: str, view: str, start: int = 0) -> None:
    for i in range(start, start + BATCH):
        phantom_case(modality, view, SIZE, case_seed(0, i))


def _write(modality: str, view: str, out: str) -> None:
    write_pairs(out, modality, view, n=BATCH, size=SIZE, seed=0, progress=False)


@pytest.mark.parametrize(("modality", "view"), VIEWS)
def test_generate_pairs(benchmark, modality, view):
    benchmark.extra_info["pairs_per_round"] = BATCH
    benchmark(_generate, modality, view)
    if benchmark.stats is not None:  # None when run with --benchmark-disable
        benchmark.extra_info["pairs_per_s"] = BATCH / benchmark.stats.stats.mean


@pytest.mark.parametrize(("modality", "view"), VIEWS[::2])
def test_write_pairs(benchmark, tmp_path, modality, view):
    benchmark.extra_info["pairs_per_round"] = BATCH
    benchmark(_write, modality, view, str(tmp_path / "ds"))
    if benchmark.stats is not None:
        benchmark.extra_info["pairs_per_s"] = BATCH / benchmark.stats.stats.mean


def _rate(fn, *args) -> tuple[float, float]:
    """Pairs per second of one round, by wall clock and by this process's CPU time."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return BATCH / (time.perf_counter() - t0), BATCH / (time.process_time() - c0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    _generate("tte", "a4c")  # warm-up: imports, cached scan geometry
    print(f"{SIZE}x{SIZE}, pairs/s, median of {args.rounds} rounds of {BATCH} pairs")
    print("(CPU = pairs per second of this process's CPU time: the one-core rate when the")
    print(" machine is shared; wall = what this run got)")
    print(
        f"{'view':6} {'generate wall':>14} {'generate CPU':>13} {'write wall':>11} {'write CPU':>10}"
    )
    for modality, view in VIEWS:
        gen, wr = [], []
        for r in range(args.rounds):
            gen.append(_rate(_generate, modality, view, r * BATCH))
            with tempfile.TemporaryDirectory() as tmp:
                wr.append(_rate(_write, modality, view, tmp))
        g = [statistics.median(x) for x in zip(*gen, strict=True)]
        w = [statistics.median(x) for x in zip(*wr, strict=True)]
        print(f"{view:6} {g[0]:14.1f} {g[1]:13.1f} {w[0]:11.1f} {w[1]:10.1f}")


if __name__ == "__main__":
    main()
