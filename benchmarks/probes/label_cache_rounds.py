"""OpenVINO's label cache against the whole graph in alternating rounds: the machine's speed
drifts within minutes, so pytest-benchmark's one-case-after-the-other timing (benchmarks/
bench_label_cache.py) can put the two cases in different machine states; here every round times
both, back to back (in turns which goes first), and the median ratio is reported.

    python benchmarks/probes/label_cache_rounds.py [--nfe 4] [--rounds 6] [--precision bf16]

A round: ``--batches`` mask batches of the default engine (packaged base + ``phantom-tee``,
batch 8), each new labels and ``--nfe`` calls, once with ``label_cache=0`` and once with the
default cache; prints ms per frame of both and whole / cached.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tte2tee_fast.export.openvino import OpenVINODenoiser

from tte2tee_fast.bench.denoiser import mask_batch
from tte2tee_fast.generate.backends import build_denoiser


def frames_ms(den: OpenVINODenoiser, nfe: int, batches: int, rng: np.random.Generator) -> float:
    """ms per frame of ``batches`` mask batches of ``nfe`` calls each (new labels per batch)."""
    b = int(den.batch)
    x = rng.standard_normal((b, 1, 128, 128)).astype(np.float32)  # [B, 1, S, S]
    t0 = time.perf_counter()
    for _ in range(batches):
        mask_batch(den, x, rng.integers(0, 5, (b, 128, 128)), nfe)
    return (time.perf_counter() - t0) / (batches * b) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--precision", default="bf16", choices=("bf16", "f32"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    engine = build_denoiser(None, "phantom-tee", "openvino", "fp32", batch=8, label_cache=0)
    engine = engine.info["engine"]
    whole = OpenVINODenoiser(engine, precision=args.precision, batch=8, label_cache=0)
    cached = OpenVINODenoiser(engine, precision=args.precision, batch=8)
    rng = np.random.default_rng(0)
    frames_ms(whole, args.nfe, 1, rng), frames_ms(cached, args.nfe, 1, rng)  # warm-up
    ratios = []
    for r in range(args.rounds):
        if r % 2:  # cached first on odd rounds: neither side always runs second
            b = frames_ms(cached, args.nfe, args.batches, rng)
            a = frames_ms(whole, args.nfe, args.batches, rng)
        else:
            a = frames_ms(whole, args.nfe, args.batches, rng)
            b = frames_ms(cached, args.nfe, args.batches, rng)
        ratios.append(a / b)
        print(f"round {r}: whole {a:.0f} ms per frame, cached {b:.0f}, whole / cached {a / b:.3f}")
    print(
        f"{args.precision}, NFE {args.nfe}: median whole / cached {np.median(ratios):.3f} "
        f"(range {min(ratios):.3f}-{max(ratios):.3f}, {args.rounds} rounds); label part runs "
        f"{cached.features.runs}, label features {cached.label_cache_bytes / 1e6:.0f} MB"
    )


if __name__ == "__main__":
    main()
