"""Write sampled frames: image/mask PNG pairs (the folder-reader layout), a comparison grid
and a JSON report with per-label intensity statistics against the reference frames."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tte2tee_fast.data.preview import overlay, save_png
from tte2tee_fast.data.schemas import LabelSchema
from tte2tee_fast.evaluate.intensity import compare_regions, outside_std
from tte2tee_fast.fsutil import write_json_atomic

_GAP = 4


def comparison_grid(
    masks: np.ndarray, generated: np.ndarray, reference: np.ndarray | None, schema: LabelSchema
) -> np.ndarray:
    """RGB grid ``[rows * H, cols * W, 3]``: one column per frame; rows = mask overlay on the
    generated frame, the generated frame, and the reference frame of the same mask (if any)."""
    rows = [
        [overlay(g, m, schema) for g, m in zip(generated, masks, strict=True)],
        [np.repeat(g[..., None], 3, axis=2) for g in generated],
    ]
    if reference is not None:
        rows.append([np.repeat(r[..., None], 3, axis=2) for r in reference])
    h, w = masks.shape[1:]
    n = len(masks)
    grid = np.zeros((len(rows) * (h + _GAP) - _GAP, n * (w + _GAP) - _GAP, 3), np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            grid[i * (h + _GAP) : i * (h + _GAP) + h, j * (w + _GAP) : j * (w + _GAP) + w] = tile
    return grid


def sample_report(
    generated: np.ndarray, masks: np.ndarray, reference: np.ndarray | None, schema: LabelSchema
) -> dict:
    """Region means of generated vs reference frames and the spread outside the cone."""
    report: dict = {"outside_std": outside_std(generated, masks)}
    if reference is not None:
        report["regions"] = compare_regions(generated, reference, masks, schema)
        report["max_rel_diff"] = max(
            v["rel_diff"] for k, v in report["regions"].items() if k != "outside"
        )
    return report


def write_samples(
    out: str | os.PathLike,
    names: list[str] | tuple[str, ...],
    generated: np.ndarray,
    masks: np.ndarray,
    schema: LabelSchema,
    reference: np.ndarray | None = None,
    meta: dict | None = None,
    grid_n: int = 8,
) -> dict:
    """Write ``OUT/images``, ``OUT/masks``, ``OUT/grid.png`` and ``OUT/report.json``.

    ``generated``, ``masks`` and ``reference`` are ``[N, H, W]`` uint8. Returns the report.
    """
    out = Path(out)
    for name, image, mask in zip(names, generated, masks, strict=True):
        save_png(out / "images" / f"{name}.png", image)
        save_png(out / "masks" / f"{name}.png", mask.astype(np.uint8))
    k = min(grid_n, len(names))
    ref = None if reference is None else reference[:k]
    save_png(out / "grid.png", comparison_grid(masks[:k], generated[:k], ref, schema))
    report = {**(meta or {}), "schema": schema.name, "n": len(names)}
    report.update(sample_report(generated, masks, reference, schema))
    write_json_atomic(out / "report.json", report)
    return report
