"""What every engine runner shares: input checks, fixed-batch chunking, guidance, CPU cores.

Torch-free (numpy only). The ONNX Runtime and OpenVINO runners (and the edge runtime) call
:func:`run_denoiser` with a function that runs ONE engine batch; it checks the inputs against
the engine's metadata before anything runs, pads or chunks to a fixed engine batch, and turns
a plain ``eps`` engine into a guided one when asked (cond and null-label rows in one batch).

Call interface of a runner (``OrtDenoiser``, ``OpenVINODenoiser``)::

    eps = runner(sample, timestep, labels, guidance=None)
    # sample [B, 1, H, W] float32, timestep [B] integer, labels [B, H, W] integer (source
    # schema), guidance: the scale g of classifier-free guidance or None -> eps [B, 1, H, W]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tte2tee_fast.export.metadata import check_labels

from tte2tee_fast.errors import InputError

NULL_LABEL = -1
# run one engine batch: (sample [n,1,H,W] f32, timestep [n] i64, labels [n,H,W] i64,
# guidance [1] f32 or None) -> eps [n,1,H,W] f32
BatchFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]
# run a list of such batches (argument tuples), e.g. on an async queue; outputs in order
ManyFn = Callable[[list[tuple]], list[np.ndarray]]


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            core = (topo / "physical_package_id").read_text().strip()
            core += ":" + (topo / "core_id").read_text().strip()
        except OSError:
            core = str(cpu)
        cores.add(core)
    return max(1, len(cores))


def check_inputs(
    meta: dict[str, Any],
    sample: Any,
    timestep: Any,
    labels: Any,
    where: str = "engine",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sample f32, timestep i64, labels i64)`` checked against the engine's metadata.

    Refuses (one line each) a wrong dtype or rank, a size other than the engine's, batch
    sizes that disagree, and label values outside the engine's schema (all listed)."""
    s = int(meta["sample_size"])
    sample, timestep, labels = np.asarray(sample), np.asarray(timestep), np.asarray(labels)
    if sample.dtype != np.float32:
        raise InputError(f"{where}: sample must be float32, got {sample.dtype}")
    if sample.ndim != 4 or sample.shape[1:] != (1, s, s):
        raise InputError(f"{where}: sample must be [B, 1, {s}, {s}], got {list(sample.shape)}")
    if not np.issubdtype(timestep.dtype, np.integer):
        raise InputError(f"{where}: timestep must be an integer array, got {timestep.dtype}")
    if timestep.ndim != 1:
        raise InputError(f"{where}: timestep must be [B], got {list(timestep.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{where}: labels must be an integer label map, got {labels.dtype}")
    if labels.ndim != 3 or labels.shape[1:] != (s, s):
        raise InputError(f"{where}: labels must be [B, {s}, {s}], got {list(labels.shape)}")
    b = sample.shape[0]
    if timestep.shape[0] != b or labels.shape[0] != b:
        raise InputError(
            f"{where}: batch sizes differ: sample {b}, timestep {timestep.shape[0]}, "
            f"labels {labels.shape[0]}"
        )
    if b == 0:
        raise InputError(f"{where}: empty batch")
    if timestep.min() < 0 or timestep.max() > 999:
        raise InputError(
            f"{where}: timesteps must lie in 0..999, got {int(timestep.min())}..{int(timestep.max())}"
        )
    check_labels(meta, labels, f"{where} labels")
    c = np.ascontiguousarray
    return c(sample), c(timestep, dtype=np.int64), c(labels, dtype=np.int64)


def _chunked(
    run: BatchFn, fixed: int | None, arrays: tuple[np.ndarray, ...], g, run_many: ManyFn | None
) -> np.ndarray:
    """``run`` over ``arrays`` in engine batches: a fixed batch pads the last chunk by
    repeating its last row and slices the result; a dynamic engine runs everything at once.
    ``run_many`` (if given) runs the whole list of chunks at once (an async queue)."""
    b = arrays[0].shape[0]
    step = b if fixed is None else fixed
    chunks, sizes = [], []
    for start in range(0, b, step):
        part = [a[start : start + step] for a in arrays]
        n = part[0].shape[0]
        if n < step:  # pad by repeating the last row
            part = [np.concatenate([p, np.repeat(p[-1:], step - n, axis=0)]) for p in part]
        chunks.append((*part, g))
        sizes.append(n)
    outs = run_many(chunks) if run_many is not None else [run(*c) for c in chunks]
    if len(outs) == 1:
        return outs[0][: sizes[0]]
    return np.concatenate([o[:n] for o, n in zip(outs, sizes, strict=True)])


def stacks_null_rows(meta: dict[str, Any], guidance: float | None) -> bool:
    """Whether :func:`run_denoiser` runs ``[labels; null]`` rows together, twice the rows of
    the call: a plain ``eps`` engine given a guidance scale other than 0 and 1."""
    return meta["variant"] != "guided" and guidance is not None and float(guidance) not in (0, 1)


def run_denoiser(
    run: BatchFn,
    meta: dict[str, Any],
    sample: Any,
    timestep: Any,
    labels: Any,
    guidance: float | None = None,
    fixed_batch: int | None = None,
    where: str = "engine",
    run_many: ManyFn | None = None,
) -> np.ndarray:
    """Check the inputs, then eps ``[B, 1, H, W]`` float32 through ``run`` (see module doc).

    A ``guided`` engine needs ``guidance``; a plain ``eps`` engine given ``guidance`` not in
    (None, 1) runs ``[labels; null]`` rows together and returns ``eps_u + g (eps_c - eps_u)``.
    """
    x, t, y = check_inputs(meta, sample, timestep, labels, where)
    if guidance is not None and not float(guidance) >= 0.0:
        raise InputError(f"{where}: guidance scale must be >= 0, got {guidance}")
    if meta["variant"] == "guided":
        if guidance is None:
            raise InputError(f"{where}: this is a guided engine; pass a guidance scale")
        g = np.array([guidance], dtype=np.float32)  # [1]
        return _chunked(run, fixed_batch, (x, t, y), g, run_many)
    if not stacks_null_rows(meta, guidance):  # no guidance (1), or only the null labels (0)
        rows = y if guidance is None or float(guidance) == 1.0 else np.full_like(y, NULL_LABEL)
        return _chunked(run, fixed_batch, (x, t, rows), None, run_many)
    b = x.shape[0]
    both = (
        np.concatenate([x, x]),
        np.concatenate([t, t]),
        np.concatenate([y, np.full_like(y, NULL_LABEL)]),
    )
    eps = _chunked(run, fixed_batch, both, None, run_many)  # [2B, 1, H, W]
    eps_c, eps_u = eps[:b], eps[b:]
    return (eps_u + np.float32(guidance) * (eps_c - eps_u)).astype(np.float32)
