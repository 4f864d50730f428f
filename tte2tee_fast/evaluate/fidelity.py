"""Structural fidelity: does a generated frame show the anatomy of the mask it was made from?

A segmenter trained on real frames (the packaged ``segmenter-tee``: TEE phantom frames, the
real-data stand-in of the embedded default) labels each generated frame; per structure the
Dice against the frame's own conditioning mask (``masks/`` beside ``images/``), mean over
frames and a percentile-bootstrap 95 % interval (resampling frames, fixed seed). This is the
bar every faster path (sampler, step count, backend, precision) must keep.

What it measures: whether a network that knows what real LA/LV/RA/RV look like finds them
where the mask says. What it does not: texture realism (see :mod:`.realism`), nor anything the
segmenter cannot tell apart; its ceiling is the segmenter's Dice on held-out *real* frames,
which :func:`train_and_validate` records beside the weights.

>>> report = evaluate_fidelity("runs/s")  # tte2tee sample output  # doctest: +SKIP
>>> report["per_class"]["rv"]["mean"], report["per_class"]["rv"]["ci95"]  # doctest: +SKIP

Frames whose masks are in another schema than the segmenter's (a held-out mask format, e.g.
``tee-alt``) are scored through ``remap``: a MaskR² spec from the frames' schema to the
segmenter's (``assets/maskr2/tee-alt-to-tee.json``), applied to the masks before the Dice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tte2tee_fast.condition.maskr2 import MaskR2Spec, load_spec
from tte2tee_fast.errors import InputError
from tte2tee_fast.evaluate.frames import Frames, load_frames
from tte2tee_fast.evaluate.segment import (
    Segmenter,
    SegmenterConfig,
    dice_per_class,
    load_segmenter,
    predict,
    structure_names,
    train_segmenter,
)


def bootstrap_mean_ci(
    values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``values [N]`` (NaN ignored) and its percentile-bootstrap interval.

    Resamples the finite values with replacement ``n_boot`` times (``default_rng(seed)``);
    returns ``(mean, lo, hi)``; all NaN when no value is finite.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(int(n_boot), v.size))  # [B, N]
    means = v[idx].mean(axis=1)  # [B]
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return float(v.mean()), float(lo), float(hi)


def check_schema(frames: Frames, seg: Segmenter) -> None:
    """Frames and segmenter must share one label schema."""
    a, b = frames.schema, seg.schema
    if (a.names, a.values) != (b.names, b.values):
        raise InputError(
            f"{frames.source}: frames are in schema {a.name!r} {list(a.names)}, the segmenter "
            f"{seg.path or ''} was trained on {b.name!r} {list(b.names)}; pass --segmenter of "
            f"that schema, or --remap with a MaskR² spec from {a.name!r} to {b.name!r}"
        )


def relabel_frames(frames: Frames, spec: MaskR2Spec) -> Frames:
    """``frames`` with their masks sent through ``spec`` into its target schema.

    The spec's source must be the frames' schema; its target has values ``0..C-1`` (checked
    when the spec is built), so channel ``c`` is target value ``c`` and the lookup table is a
    value map. A mask value the source schema lacks is refused with one line.
    """
    if (frames.schema.names, frames.schema.values) != (spec.source.names, spec.source.values):
        raise InputError(
            f"{frames.source}: frames are in schema {frames.schema.name!r} but the --remap spec "
            f"{spec.name!r} maps {spec.source.name!r} labels"
        )
    spec.check_labels(frames.masks, source=frames.source)
    lut = spec.lookup_table().numpy().astype(np.uint8)  # [V] source value -> target value
    return Frames(
        images=frames.images,
        masks=lut[frames.masks],  # [N, H, W]
        names=frames.names,
        schema=spec.target,
        source=frames.source,
    )


def fidelity_scores(seg: Segmenter, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-frame, per-structure Dice ``[N, K]`` of the segmenter's labels against ``masks``."""
    return dice_per_class(predict(seg, images), masks, seg.schema)


def fidelity_report(seg: Segmenter, frames: Frames, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per-structure Dice (mean, 95 % bootstrap interval, frames counted) and the mean over
    structures per frame, as a JSON-able dict."""
    check_schema(frames, seg)
    if len(frames) == 0:
        raise InputError(f"{frames.source}: no frames to evaluate")
    dice = fidelity_scores(seg, frames.images, frames.masks)  # [N, K]
    per_class = {}
    for k, name in enumerate(structure_names(seg.schema)):
        mean, lo, hi = bootstrap_mean_ci(dice[:, k], n_boot, seed)
        per_class[name] = {"mean": mean, "ci95": [lo, hi], "n": int(np.isfinite(dice[:, k]).sum())}
    with np.errstate(invalid="ignore"):
        frame_mean = np.nanmean(np.where(np.isfinite(dice), dice, np.nan), axis=1)  # [N]
    mean, lo, hi = bootstrap_mean_ci(frame_mean, n_boot, seed)
    return {
        "frames": frames.source,
        "n_frames": len(frames),
        "size": list(frames.images.shape[1:]),
        "schema": frames.schema.name,
        "segmenter": str(seg.path) if seg.path is not None else None,
        "bootstrap": {"resamples": int(n_boot), "seed": int(seed), "level": 0.95},
        "per_class": per_class,
        "mean_dice": {"mean": mean, "ci95": [lo, hi]},
    }


def evaluate_fidelity(
    frames: str | Path,
    segmenter: str | Path | None = None,
    schema: str | None = None,
    n: int | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    remap: str | Path | None = None,
) -> dict:
    """Load the segmenter and the frame set ``frames`` and return :func:`fidelity_report`;
    ``remap`` (a MaskR² spec file or built-in name) relabels the masks into the segmenter's
    schema first (:func:`relabel_frames`)."""
    spec = None if remap is None else load_spec(remap)  # a bad spec fails before any loading
    seg = load_segmenter(segmenter)
    data = load_frames(
        frames, schema, default_schema=seg.schema.name, n=n, seed=seed, size=seg.config.size
    )
    if spec is None:
        return fidelity_report(seg, data, n_boot=n_boot, seed=seed)
    report = fidelity_report(seg, relabel_frames(data, spec), n_boot=n_boot, seed=seed)
    return {**report, "mask_schema": data.schema.name, "remap": spec.name}


def format_fidelity(report: dict) -> str:
    """The report as a few aligned lines (Dice in %)."""
    lines = [
        f"fidelity of {report['frames']} ({report['n_frames']} frames, "
        f"segmenter {report['segmenter'] or 'in memory'})"
    ]
    rows = [*report["per_class"].items(), ("mean", report["mean_dice"])]
    for name, r in rows:
        lo, hi = r["ci95"]
        lines.append(
            f"  {name:<14s} Dice {100 * r['mean']:6.2f}  95% CI [{100 * lo:6.2f}, {100 * hi:6.2f}]"
        )
    return "\n".join(lines)


def train_and_validate(
    data: str = "phantom-tee",
    n: int = 600,
    data_seed: int = 1,
    val_data: str = "phantom-tee",
    val_n: int = 100,
    val_seed: int = 2,
    size: int = 128,
    steps: int = 800,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    schema: str | None = None,
    out: str | Path | None = None,
    command: str | None = None,
    log: Callable[[int, float], None] | None = None,
) -> dict:
    """Train a segmenter on ``data`` and score it on held-out ``val_data`` (the same phantom
    source is allowed only with another seed: no case on both sides); save to ``out`` with
    ``training.json`` = command, data, seconds, loss and the held-out fidelity report."""
    if data == val_data and data_seed == val_seed:
        raise InputError(
            f"held-out frames {val_data!r} (seed {val_seed}) are the training frames; "
            "choose another --val-seed or --val-data"
        )
    if data == val_data and Path(str(data)).exists():
        raise InputError(
            f"{data}: the held-out folder is the training folder; pass another --val-data"
        )
    train = load_frames(data, schema, n=n, seed=data_seed, size=size)
    val = load_frames(val_data, schema or train.schema.name, n=val_n, seed=val_seed, size=size)
    if (val.schema.names, val.schema.values) != (train.schema.names, train.schema.values):
        raise InputError(
            f"{val.source}: held-out schema {val.schema.name!r} differs from training schema "
            f"{train.schema.name!r}"
        )
    shared = set(train.names) & set(val.names) if Path(str(data)).exists() else set()
    if shared:
        raise InputError(f"{val.source}: frame {sorted(shared)[0]} is also in the training set")
    cfg = SegmenterConfig(
        schema=train.schema.name, size=size, steps=steps, batch_size=batch_size, lr=lr, seed=seed
    )
    t0 = time.perf_counter()
    seg = train_segmenter(train.images, train.masks, cfg, out=out, log=log)
    seconds = time.perf_counter() - t0
    held_out = fidelity_report(seg, val)
    import torch

    meta = {
        "command": command,
        "train": {"source": train.source, "n": len(train), "seed": data_seed},
        "held_out": held_out,
        "seconds": seconds,
        "final_loss": seg.meta.get("final_loss"),
        "resumed_at": seg.meta.get("resumed_at"),
        "torch_threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in seg.model.parameters()),
    }
    if out is not None:
        from tte2tee_fast.evaluate.segment import save_segmenter

        save_segmenter(seg, out, meta)
    text = (
        f"trained {cfg.steps} steps on {len(train)} frames in {seconds:.0f} s"
        f"{'' if out is None else f'; saved to {out}'}\nheld-out " + format_fidelity(held_out)
    )
    return {"segmenter": seg, "meta": meta, "text": text}
