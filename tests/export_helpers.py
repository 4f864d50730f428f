"""Engines shared by the export tests (``from export_helpers import engines``): a micro base
with random non-zero weights, a random ``mlp`` adapter for it, and the engines exported from
them once per test session (export is the slow part)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from helpers import random_micro
from test_adapter import make_adapter

from tte2tee_fast.adapt.adapter import attach_adapter
from tte2tee_fast.condition.maskr2 import builtin_spec, remap_one_hot
from tte2tee_fast.data.phantom import phantom_case
from tte2tee_fast.models import save_model


@dataclass(frozen=True)
class Engines:
    base_dir: Path
    adapter_dir: Path
    dynamic: Path  # eps variant, dynamic batch
    fixed: Path  # eps variant, batch 3
    guided: Path  # guided variant, dynamic batch


_CACHE: dict[str, Engines] = {}


def engines(tmp_path_factory) -> Engines:
    """Export the micro engines once per session (about 10 s on a busy 2-core machine)."""
    from tte2tee_fast.export.onnx_export import export_onnx

    key = str(tmp_path_factory.getbasetemp())
    if key not in _CACHE:
        root = tmp_path_factory.mktemp("engines")
        base = random_micro(seed=0).eval()
        save_model(base, root / "base")
        make_adapter(base, root / "adapter")
        a = root / "adapter"
        _CACHE[key] = Engines(
            root / "base",
            a,
            export_onnx(root / "base", a, root / "dynamic.onnx"),
            export_onnx(root / "base", a, root / "fixed.onnx", batch=3),
            export_onnx(root / "base", a, root / "guided.onnx", guidance=True),
        )
    return _CACHE[key]


def unmerged_reference(e: Engines) -> torch.nn.Module:
    """The base with the adapter attached through peft, NOT merged: an independent reference
    for the merged engine."""
    from tte2tee_fast.models import load_model

    return attach_adapter(copy.deepcopy(load_model(e.base_dir)), e.adapter_dir).eval()


def torch_eps(model, x: np.ndarray, t: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """eps of ``model`` on TEE labels through the built-in tee->tte spec (torch, fp32)."""
    cond = remap_one_hot(torch.from_numpy(labels), builtin_spec("tee->tte"))
    with torch.no_grad():
        return model(torch.from_numpy(x), torch.from_numpy(t), cond).numpy()


def tee_inputs(b: int, seed: int = 0, phantom: bool = False, size: int = 32):
    """``(x f32 [B,1,S,S], t i64 [B], labels i64 [B,S,S])``: random or phantom TEE labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, 1, size, size), dtype=np.float32)
    t = rng.integers(0, 1000, b).astype(np.int64)
    t[0] = 999
    if phantom:
        # rendered at 2x (the phantom's minimum is 64) and subsampled
        k = -(-64 // size)
        labels = np.stack(
            [phantom_case("tee", size=size * k, seed=seed + i).mask[::k, ::k] for i in range(b)]
        )
    else:
        labels = rng.integers(0, 6, (b, size, size))
    return x, t, labels.astype(np.int64)


def rel(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y - ref).max() / np.abs(ref).max())
