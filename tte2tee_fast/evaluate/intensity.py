"""Per-label intensity statistics: do generated frames put the right brightness where the mask
says (dark cavities, bright myocardium, black outside the cone)?

Used to compare generated frames with phantom (or real) frames of the same masks.
"""

from __future__ import annotations

import numpy as np

from tte2tee_fast.data.schemas import LabelSchema


def region_means(images: np.ndarray, masks: np.ndarray, schema: LabelSchema) -> dict[str, float]:
    """Mean gray value (0..255) of each label region over all frames; NaN for absent labels.

    ``images`` and ``masks`` are ``[N, H, W]`` (uint8 or float on the 0..255 scale).
    """
    images = np.asarray(images, dtype=np.float64)
    masks = np.asarray(masks)
    if images.shape != masks.shape:
        raise ValueError(f"images {images.shape} and masks {masks.shape} differ in shape")
    out = {}
    for name, value in zip(schema.names, schema.values, strict=True):
        sel = masks == value
        out[name] = float(images[sel].mean()) if sel.any() else float("nan")
    return out


def outside_std(images: np.ndarray, masks: np.ndarray, outside_value: int = 0) -> float:
    """Spread of gray values outside the cone.

    Precisely: the standard deviation (0..255 scale) of all pixels labelled ``outside_value``,
    pooled over frames; 0 when the model draws a uniformly black background there.
    """
    images = np.asarray(images, dtype=np.float64)
    sel = np.asarray(masks) == outside_value
    return float(images[sel].std()) if sel.any() else float("nan")


def compare_regions(
    generated: np.ndarray, reference: np.ndarray, masks: np.ndarray, schema: LabelSchema
) -> dict[str, dict[str, float]]:
    """Per label: generated mean, reference mean and relative difference ``|g - r| / max(r, 1)``."""
    gen = region_means(generated, masks, schema)
    ref = region_means(reference, masks, schema)
    return {
        name: {
            "generated": gen[name],
            "reference": ref[name],
            "rel_diff": abs(gen[name] - ref[name]) / max(ref[name], 1.0),
        }
        for name in schema.names
    }


def worst_region(regions: dict[str, dict[str, float]]) -> float:
    """The largest ``rel_diff`` of :func:`compare_regions` over the structures (``outside``, the
    black beyond the cone, left out: its reference mean is 0)."""
    return float(max(v["rel_diff"] for k, v in regions.items() if k != "outside"))


def sample_report(
    generated: np.ndarray, masks: np.ndarray, reference: np.ndarray | None, schema: LabelSchema
) -> dict:
    """Region means of generated vs reference frames and the spread outside the cone."""
    report: dict = {"outside_std": outside_std(generated, masks)}
    if reference is not None:
        report["regions"] = compare_regions(generated, reference, masks, schema)
        report["max_rel_diff"] = worst_region(report["regions"])
    return report
