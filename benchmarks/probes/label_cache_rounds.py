"""The label cache against the whole graph in alternating rounds: the machine's speed drifts
within minutes, so pytest-benchmark's one-case-after-the-other timing (benchmarks/
bench_label_cache.py) can put the cases in different machine states; here every round times
each side, back to back (in turns which goes first), and the median ratios are reported.

    python benchmarks/probes/label_cache_rounds.py [--nfe 4] [--rounds 6] [--precision bf16]
    python benchmarks/probes/label_cache_rounds.py --sides ort,ort:cached,openvino,openvino:cached

A round: ``--batches`` mask batches of the default engine (packaged base + ``phantom-tee``,
batch 8), each new labels and ``--nfe`` calls, once per side; a side is a runtime (``ort``:
ONNX Runtime fp32, ``openvino`` at ``--precision``) with ``:cached`` for its default label
cache, else ``label_cache=0``. Prints ms per frame of every side and the first side's time over
each side's (> 1: faster than the first).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from tte2tee_fast.export.openvino import OpenVINODenoiser
from tte2tee_fast.export.ort import OrtDenoiser

from tte2tee_fast.bench.denoiser import mask_batch
from tte2tee_fast.generate.backends import build_denoiser

RUNTIMES = ("ort", "openvino")


def frames_ms(den: Any, nfe: int, batches: int, rng: np.random.Generator) -> float:
    """ms per frame of ``batches`` mask batches of ``nfe`` calls each (new labels per batch)."""
    b = int(den.batch)
    x = rng.standard_normal((b, 1, 128, 128)).astype(np.float32)  # [B, 1, S, S]
    t0 = time.perf_counter()
    for _ in range(batches):
        mask_batch(den, x, rng.integers(0, 5, (b, 128, 128)), nfe)
    return (time.perf_counter() - t0) / (batches * b) * 1e3


def runner(side: str, engine: str, precision: str) -> Any:
    """The runner of a side (``ort``, ``openvino:cached``, ...) at batch 8, 2 threads."""
    runtime, _, cached = side.partition(":")
    if runtime not in RUNTIMES or cached not in ("", "cached"):
        raise SystemExit(f"--sides: {side!r} is not RUNTIME[:cached] with RUNTIME in {RUNTIMES}")
    cache = {} if cached else {"label_cache": 0}
    if runtime == "ort":
        return OrtDenoiser(engine, threads=2, **cache)
    return OpenVINODenoiser(engine, precision=precision, batch=8, threads=2, **cache)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--precision", default="bf16", choices=("bf16", "f32"))
    ap.add_argument("--sides", default="openvino,openvino:cached")
    args = ap.parse_args()
    torch.set_num_threads(2)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    # the static batch-8 ONNX engine generate exports (ORT and OpenVINO both read it)
    engine = build_denoiser(None, "phantom-tee", "ort", "fp32", batch=8, label_cache=0)
    engine = engine.info["engine"]
    dens = {side: runner(side, engine, args.precision) for side in sides}
    rng = np.random.default_rng(0)
    for den in dens.values():
        frames_ms(den, args.nfe, 1, rng)  # warm-up
    times: dict[str, list[float]] = {side: [] for side in sides}
    for r in range(args.rounds):
        order = sides[r % len(sides) :] + sides[: r % len(sides)]  # each side leads in turn
        for side in order:
            times[side].append(frames_ms(dens[side], args.nfe, args.batches, rng))
        print(f"round {r}: " + ", ".join(f"{s} {times[s][-1]:.0f}" for s in sides) + " ms/frame")
    first = np.array(times[sides[0]])
    for side in sides:
        ratios = first / np.array(times[side])
        runs = getattr(getattr(dens[side], "features", None), "runs", "-")
        print(
            f"{side} ({args.precision if side.startswith('openvino') else 'fp32'}, NFE "
            f"{args.nfe}): median {np.median(times[side]):.1f} ms/frame, {sides[0]} / {side} "
            f"{np.median(ratios):.3f} (range {ratios.min():.3f}-{ratios.max():.3f}, "
            f"{args.rounds} rounds); label part runs {runs}"
        )


if __name__ == "__main__":
    main()
