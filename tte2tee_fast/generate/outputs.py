"""Write sampled frames: image/mask PNG pairs (the folder-reader layout) and a comparison grid.
(The region-mean report beside them is :func:`tte2tee_fast.evaluate.intensity.sample_report`;
the command composes the two.)"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tte2tee_fast.data.preview import overlay, save_png
from tte2tee_fast.data.schemas import LabelSchema

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


def write_samples(
    out: str | os.PathLike,
    names: list[str] | tuple[str, ...],
    generated: np.ndarray,
    masks: np.ndarray,
    schema: LabelSchema,
    reference: np.ndarray | None = None,
    grid_n: int = 8,
) -> None:
    """Write ``OUT/images``, ``OUT/masks`` and ``OUT/grid.png``.

    ``generated``, ``masks`` and ``reference`` are ``[N, H, W]`` uint8.
    """
    out = Path(out)
    for name, image, mask in zip(names, generated, masks, strict=True):
        save_png(out / "images" / f"{name}.png", image)
        save_png(out / "masks" / f"{name}.png", mask.astype(np.uint8))
    k = min(grid_n, len(names))
    ref = None if reference is None else reference[:k]
    save_png(out / "grid.png", comparison_grid(masks[:k], generated[:k], ref, schema))
