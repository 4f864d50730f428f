"""Benchmark of the SemanticUNet forward: ``tiny`` at batch 1/8/16, eager fp32 and bf16 autocast.

Also prints the parameter count and forward GMAC per image of every preset (``sdm256`` is built
on the meta device for counting and is not timed). Runs on the CPU unless CUDA is present.

    python benchmarks/bench_model.py                   # table on stdout
    python benchmarks/bench_model.py --json out.json   # rows as JSON
    pytest benchmarks/bench_model.py --benchmark-enable  # pytest-benchmark
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from contextlib import nullcontext

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tte2tee_fast.models import PRESETS, count_parameters, from_preset

BATCHES = (1, 8, 16)
PRECISIONS = ("fp32", "bf16")


def _time_ms(fn: Callable[[], object], repeats: int, cuda: bool) -> float:
    """Best (minimum) wall time of ``fn`` in ms after one warm-up call.

    The minimum, as in ``timeit``: on a shared 2-core machine other processes only add time.
    """
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
    return min(times)


def _inputs(model, batch: int, device: str):
    s = model.config.sample_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, s, s, generator=gen)  # [B, 1, H, W]
    labels = torch.randint(0, model.config.label_channels, (batch, s, s), generator=gen)
    cond = torch.nn.functional.one_hot(labels, model.config.label_channels).permute(0, 3, 1, 2)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    return x.to(device), t.to(device), cond.float().to(device)


def _forward(model, x, t, cond, precision: str, device: str) -> Callable[[], object]:
    ctx = torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    def run():
        with torch.no_grad(), ctx:
            return model(x, t, cond)

    return run


def preset_rows() -> list[dict]:
    """Parameters by kind and forward GMAC per image for every preset (meta device: no memory)."""
    rows = []
    for name in PRESETS:
        with torch.device("meta"):
            model = from_preset(name)
            x, t, cond = _inputs(model, 1, "meta")
            counter = FlopCounterMode(display=False)
            with counter:
                model(x, t, cond)
        rows.append(
            {
                "preset": name,
                **count_parameters(model),
                "gmac_per_image": round(counter.get_total_flops() / 2e9, 2),
            }
        )
    return rows


def bench_rows(preset: str = "tiny", batches=BATCHES, repeats: int = 5) -> list[dict]:
    """One row per (batch, precision): best-of-``repeats`` forward ms per batch and per image."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = from_preset(preset).to(device).eval()
    rows = []
    for batch in batches:
        x, t, cond = _inputs(model, batch, device)
        for precision in PRECISIONS:
            ms = _time_ms(_forward(model, x, t, cond, precision, device), repeats, cuda)
            rows.append(
                {
                    "preset": preset,
                    "device": device,
                    "batch": batch,
                    "precision": precision,
                    "ms_per_batch": round(ms, 1),
                    "ms_per_image": round(ms / batch, 1),
                    "threads": torch.get_num_threads(),
                }
            )
    return rows


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("batch", BATCHES)
def test_bench_tiny_forward(benchmark, batch, precision):
    model = from_preset("tiny").eval()
    x, t, cond = _inputs(model, batch, "cpu")
    out = benchmark(_forward(model, x, t, cond, precision, "cpu"))
    assert out.shape == x.shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--batches", default="1,8,16", help="comma-separated batch sizes")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = preset_rows()
    for r in presets:
        print(
            f"{r['preset']:<8} params {r['total']:>12,}  linear layers {r['linear_layers']:>3}  "
            f"fwd {r['gmac_per_image']:>7.2f} GMAC/image"
        )
    batches = tuple(int(b) for b in args.batches.split(","))
    rows = bench_rows(args.preset, batches, repeats=args.repeats)
    for r in rows:
        print(
            f"{r['preset']} {r['device']} batch {r['batch']:>2} {r['precision']}: "
            f"{r['ms_per_batch']:>8.1f} ms/batch {r['ms_per_image']:>7.1f} ms/image"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"presets": presets, "forward": rows}, f, indent=1)


if __name__ == "__main__":
    main()
