"""A *baked* engine: the whole fixed-step sampler loop in one ONNX graph.

``tte2tee export onnx --bake-sampler unipc --steps 10`` unrolls a deterministic sampler's dense
plan (:mod:`tte2tee_fast.diffusion.dense`) around the merged denoiser graph (MaskR² + one-hot +
U-Net, :class:`~tte2tee_fast.export.onnx_export.DenoiserGraph`)::

    noise   [B, 1, H, W] float32   the starting noise x_T (counter-based: frame_noise_np)
    labels  [B, H, W]    int64     label values of the source schema
    frame   [B, 1, H, W] float32   output: the sample, clamped to [-1, 1]

The loop is :func:`~tte2tee_fast.diffusion.dense.run_dense_plan` itself, traced: the same
coefficients, clamp and order of operations as the torch pipeline and the torch-free runtime.
The network's weights appear once in the graph (every unrolled step reads the same
initializers). Metadata as the denoiser engine's, with ``variant = baked:<sampler>:<nfe>`` and
the plan (``tte2tee.plan``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from tte2tee_fast.export.onnx_export import (
    DenoiserGraph,
    engine_metadata,
    export_module,
    load_merged,
)

from tte2tee_fast.diffusion.dense import DensePlan, run_dense_plan


class BakedSampler(nn.Module):
    """``forward(noise, labels) -> frame``: ``plan`` unrolled around the denoiser graph."""

    def __init__(self, graph: DenoiserGraph, plan: DensePlan) -> None:
        super().__init__()
        self.graph = graph
        self.plan = plan

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        zeros = labels[:, 0, 0] * 0  # [B] int64, follows the dynamic batch

        def eps_fn(x: torch.Tensor, k: int) -> torch.Tensor:
            return self.graph(x, zeros + self.plan.timesteps[k], labels)  # [B, 1, H, W]

        return run_dense_plan(eps_fn, noise, self.plan).clamp(-1.0, 1.0)


def export_baked(
    model: str | os.PathLike | None,
    adapter: str | os.PathLike | None,
    plan: DensePlan,
    out: str | os.PathLike,
    batch: int | None = None,
) -> Path:
    """Export ``model`` (+ ``adapter`` merged) with ``plan`` baked in to ``out``."""
    merged, spec, base_hash, weights = load_merged(model, adapter)
    meta = engine_metadata(base_hash, merged, spec, weights, batch, False)
    meta["variant"] = f"baked:{plan.name}:{plan.nfe}"
    meta["plan"] = plan.to_json()
    s = int(merged.config.sample_size)
    b = batch or 2
    gen = torch.Generator().manual_seed(0)
    inputs = (torch.randn(b, 1, s, s, generator=gen), torch.randint(0, 2, (b, s, s), generator=gen))
    module = BakedSampler(DenoiserGraph(merged, spec), plan)
    dynamic = () if batch is not None else ("noise", "labels")
    return export_module(module, inputs, ["noise", "labels"], ["frame"], out, dynamic, meta)
