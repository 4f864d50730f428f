"""The torch-free edge runtime: frames from an engine with numpy + ONNX Runtime or OpenVINO only.

::

    python -m tte2tee_fast.export.runtime --engine tee.onnx --masks DIR --n 16 --out runs/edge
    python -m tte2tee_fast.export.runtime --engine tee.xml --runtime openvino --masks phantom:tee \\
        --n 8 --sampler dpmpp_2m --steps 12 --out runs/edge-ov
    python -m tte2tee_fast.export.runtime --engine baked-unipc10.onnx --masks DIR --n 8 --out D

Every deterministic sampler of the zoo runs at any step count (``ddim``, ``euler``, ``heun``,
``dpmpp_2m``, ``dpmpp_3m``, ``unipc``, or ``plan:FILE``): its dense plan
(:mod:`tte2tee_fast.diffusion.dense`, no torch) is run by the same loop the torch pipeline
uses, from the same counter-based noise (:func:`tte2tee_fast.diffusion.noise.frame_noise_np`:
frame ``i`` starts from the noise of ``(seed, i)``), so its frames equal ``tte2tee sample
--backend ort`` (same engine, sampler, seed) to float rounding. A *baked* engine
(``tte2tee export onnx --bake-sampler``) holds the whole fixed-step loop and maps
``(noise, labels)`` to the frame in one call; its sampler is the one it was baked with.

Masks: ``DIR`` (a folder of label PNGs, or a dataset folder with ``masks/``), sorted by name,
frame ``i`` taking mask ``i mod M``; or ``phantom:tee`` / ``phantom:tte`` (the phantom's mask of
case ``i``). Masks must already be the engine's size. Output: ``OUT/images/frame_00000.png``,
``OUT/masks/frame_00000.png`` and ``OUT/runtime.json``. This module must never import torch
(``tests/test_runtime.py`` runs it in a process where importing torch fails).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tte2tee_fast.diffusion.dense import DETERMINISTIC, DensePlan, run_dense_plan, sampler_plan
from tte2tee_fast.diffusion.noise import frame_noise_np
from tte2tee_fast.errors import InputError

RUNTIMES = ("ort", "openvino")
BAKED_PREFIX = "baked:"


def open_engine(path: str | Path, runtime: str | None = None, precision: str = "f32") -> Any:
    """An engine runner (``OrtDenoiser`` or ``OpenVINODenoiser``): by ``runtime``, else by the
    file (``.xml``: OpenVINO, ``.onnx``: ONNX Runtime)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"engine {path} does not exist")
    runtime = runtime or ("openvino" if path.suffix == ".xml" else "ort")
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; choose one of {list(RUNTIMES)}")
    if runtime == "openvino":
        from tte2tee_fast.export.openvino import OpenVINODenoiser

        return OpenVINODenoiser(path, precision=precision)
    if precision != "f32":
        raise InputError("ONNX Runtime runs the engine's own precision: leave --precision at f32")
    from tte2tee_fast.export.ort import OrtDenoiser

    return OrtDenoiser(path)


def read_masks(source: str, n: int, size: int) -> tuple[np.ndarray, list[str]]:
    """``n`` label maps ``[n, size, size]`` uint8 and their ids (see the module docstring)."""
    if source.startswith("phantom:"):
        from tte2tee_fast.data.phantom import case_seed, phantom_case

        modality = source.split(":", 1)[1]
        masks = [phantom_case(modality, size=size, seed=case_seed(0, i)).mask for i in range(n)]
        return np.stack(masks).astype(np.uint8), [f"{source}:{i}" for i in range(n)]
    from tte2tee_fast.data.imageio import read_label_image

    root = Path(source)
    folder = root / "masks" if (root / "masks").is_dir() else root
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        raise InputError(f"--masks {source}: no mask PNGs found (a folder of PNGs or DIR/masks)")
    maps, bad = {}, []
    for f in files[:n]:
        m = read_label_image(f)
        if m.shape != (size, size):
            bad.append(f"{f.name}: {list(m.shape)}")
        maps[f] = m
    if bad:
        raise InputError(f"masks must be {size}x{size} (the engine's size): " + "; ".join(bad))
    ids = [files[i % len(files)] for i in range(n)]
    return np.stack([maps[f] for f in ids]).astype(np.uint8), [f.name for f in ids]


def _timesteps(t: int, b: int) -> np.ndarray:
    return np.full((b,), t, dtype=np.int64)


def frames(
    runner: Any,
    labels: np.ndarray,
    frame_indices: Sequence[int],
    plan: DensePlan | None,
    seed: int = 0,
    guidance: float = 1.0,
    batch_size: int = 8,
) -> np.ndarray:
    """Frames ``[N, 1, S, S]`` float32 in [-1, 1] for label maps ``[N, S, S]`` (source schema).

    Network batches of ``batch_size``; a short last batch is padded by repeating its last frame
    (as the torch pipeline does), so frame ``i`` never depends on its batch. ``plan=None``: a
    baked engine (its metadata ``variant`` is ``baked:...``)."""
    baked = str(runner.metadata.get("variant", "")).startswith(BAKED_PREFIX)
    if baked != (plan is None):
        raise InputError(
            "a baked engine runs its own sampler (give no plan)"
            if baked
            else "this engine is not baked: a sampler plan is needed"
        )
    s = int(runner.metadata["sample_size"])
    idx = np.asarray(frame_indices, dtype=np.int64)
    g = None if guidance == 1.0 else guidance  # the runner batches cond and null rows
    out = []
    for start in range(0, len(idx), batch_size):
        lab, fr = labels[start : start + batch_size], idx[start : start + batch_size]
        n = len(fr)
        if n < batch_size:  # pad: the same network batch every time
            lab = np.concatenate([lab, np.repeat(lab[-1:], batch_size - n, axis=0)])
            fr = np.concatenate([fr, np.repeat(fr[-1:], batch_size - n)])
        lab = lab.astype(np.int64)
        x_T = frame_noise_np(seed, fr, (1, s, s))  # [b, 1, S, S]
        if baked:
            x0 = (
                runner.run_baked(x_T, lab)
                if hasattr(runner, "run_baked")
                else _baked(runner, x_T, lab)
            )
        else:
            b = len(fr)

            def eps_fn(x: np.ndarray, k: int, lab: np.ndarray = lab, b: int = b) -> np.ndarray:
                return runner(
                    x.astype(np.float32), _timesteps(plan.timesteps[k], b), lab, guidance=g
                )

            x0 = run_dense_plan(eps_fn, x_T, plan)
        out.append(np.clip(x0, -1.0, 1.0)[:n])
    return np.concatenate(out).astype(np.float32)


def _baked(runner: Any, noise: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One call of a baked ONNX graph (ONNX Runtime session of an ``OrtDenoiser``)."""
    session = getattr(runner, "session", None)
    if session is None:
        raise InputError("baked engines run on ONNX Runtime (--runtime ort)")
    return session.run(["frame"], {"noise": noise, "labels": labels})[0]


def to_uint8(x: np.ndarray) -> np.ndarray:
    """``[N, 1, H, W]`` in [-1, 1] -> ``[N, H, W]`` uint8, rounded as the torch path rounds."""
    v = (np.clip(x[:, 0], -1.0, 1.0) + 1.0) * np.float32(127.5)
    return np.round(v).astype(np.uint8)  # half to even, as torch.round


def write_frames(out: Path, images: np.ndarray, masks: np.ndarray, info: dict) -> None:
    from tte2tee_fast.data.preview import save_png
    from tte2tee_fast.fsutil import write_json_atomic

    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        save_png(out / "images" / f"frame_{i:05d}.png", image)
        save_png(out / "masks" / f"frame_{i:05d}.png", mask)
    write_json_atomic(out / "runtime.json", info)


def run(args: argparse.Namespace, echo: Callable[[str], None] = print) -> dict:
    """The command line's work: open, check, sample, write; returns the ``runtime.json`` dict."""
    runner = open_engine(args.engine, args.runtime, args.precision)
    meta = runner.metadata
    size = int(meta["sample_size"])
    labels, ids = read_masks(args.masks, args.n, size)
    from tte2tee_fast.export.metadata import check_labels

    check_labels(meta, labels, f"--masks {args.masks}")  # every value, before any frame
    baked = str(meta.get("variant", "")).startswith(BAKED_PREFIX)
    plan = None
    if not baked:
        plan = sampler_plan(
            args.sampler, args.steps, args.spacing, args.rho, args.t_max, args.t_min
        )
    start = time.perf_counter()
    x = frames(runner, labels, range(args.n), plan, args.seed, args.guidance, args.batch_size)
    seconds = time.perf_counter() - start
    info = {
        "engine": str(args.engine),
        "runtime": type(runner).__name__,
        "masks": args.masks,
        "mask_ids": ids,
        "sampler": meta["variant"] if baked else plan.name,
        "plan": None if baked else plan.source,
        "nfe": None if baked else plan.nfe,
        "seed": args.seed,
        "guidance": args.guidance,
        "n": args.n,
        "seconds": round(seconds, 3),
        "model_hash": meta.get("model_hash"),
        "adapter_hash": meta.get("adapter_hash"),
    }
    write_frames(Path(args.out), to_uint8(x), labels, info)
    echo(f"wrote {args.n} frames to {args.out} ({seconds / args.n:.3f} s/frame)")
    return info


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tte2tee_fast.export.runtime",
        description="Generate frames from an engine without torch (numpy + onnxruntime/openvino).",
    )
    p.add_argument("--engine", required=True, help=".onnx (ONNX Runtime or OpenVINO) or .xml")
    p.add_argument("--runtime", choices=RUNTIMES, default=None, help="default: by file type")
    p.add_argument("--precision", choices=("f32", "bf16"), default="f32", help="OpenVINO hint")
    p.add_argument("--masks", required=True, help="mask folder, or phantom:tee / phantom:tte")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--sampler", default="unipc", help=f"{', '.join(DETERMINISTIC)} or plan:FILE")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument(
        "--spacing", default="trailing", choices=("trailing", "leading", "linspace", "karras")
    )
    p.add_argument("--t-min", type=int, default=10, help="karras only (default 10)")
    p.add_argument("--t-max", type=int, default=999, help="first timestep (generate's: 999)")
    p.add_argument("--rho", type=float, default=7.0)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.spacing != "karras":
        args.t_min = None
    if args.n < 1 or args.batch_size < 1:
        print("Error: --n and --batch-size must be >= 1", file=sys.stderr)
        return 2
    try:
        run(args)
    except InputError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
