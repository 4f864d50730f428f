"""Plotting helpers for benchmark reports (matplotlib, Agg backend, imported lazily).

Every function writes one PNG to ``path`` (``format="png"`` explicitly, so a temporary name
without a ``.png`` suffix works) and closes its figure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_error_vs_nfe(
    path: str | os.PathLike,
    series: Mapping[str, Sequence[tuple[int, float]]],
    stochastic: set[str] | frozenset[str] = frozenset(),
    threshold: float | None = None,
    reference_error: float | None = None,
) -> None:
    """Log-log error (%) against NFE, one line per series; stochastic series dashed.

    ``series[name]`` = ``[(nfe, rel_error), ...]`` (fractions; zero errors are drawn at 1e-8 %
    so the log axis stays defined). ``threshold`` and ``reference_error`` (fractions) are
    drawn as horizontal lines.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
    try:
        for name, points in series.items():
            pts = sorted(points)
            nfe = [p[0] for p in pts]
            err = [max(100.0 * p[1], 1e-8) for p in pts]
            style = "--" if name in stochastic else "-"
            label = f"{name} (stochastic)" if name in stochastic else name
            ax.plot(nfe, err, style, marker="o", markersize=4, label=label)
        if threshold is not None:
            ax.axhline(100.0 * threshold, color="black", lw=0.8, ls=":", label="threshold")
        if reference_error is not None and reference_error > 0:
            ax.axhline(
                100.0 * reference_error, color="gray", lw=0.8, ls="-.", label="reference error"
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE (network evaluations)")
        ax.set_ylabel("rel-RMSE vs reference (%)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def plot_image_grid(
    path: str | os.PathLike,
    rows: Sequence[str],
    columns: Sequence[str],
    cells: Mapping[tuple[str, str], torch.Tensor],
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> None:
    """A labelled grid of gray frames: ``cells[(row, column)]`` ``[k, 1, H, W]``, the ``k``
    frames side by side (clipped to ``value_range``); missing cells stay blank."""
    plt = _pyplot()
    lo, hi = value_range
    scale = 1.0 + 0.6 * max(t.shape[0] for t in cells.values()) if cells else 1.0
    fig, axes = plt.subplots(
        len(rows),
        len(columns),
        figsize=(scale * len(columns), 1.2 * len(rows) + 0.4),
        dpi=110,
        squeeze=False,
    )
    try:
        for i, row in enumerate(rows):
            for j, col in enumerate(columns):
                ax = axes[i, j]
                ax.set_xticks([])
                ax.set_yticks([])
                frames = cells.get((row, col))
                if frames is not None:
                    strip = np.concatenate(
                        list(frames[:, 0].float().clamp(lo, hi).cpu().numpy()), axis=1
                    )  # [H, k * W]
                    ax.imshow(strip, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
                else:
                    ax.axis("off")
                if i == 0:
                    ax.set_title(col, fontsize=8)
                if j == 0:
                    ax.set_ylabel(row, fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
