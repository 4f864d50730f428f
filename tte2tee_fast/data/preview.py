"""Contact sheet: a grid of gray images, each beside its mask overlay, with a colour legend.

The overlay is the image alpha-blended with the schema colours of the labelled structures
(the ``outside`` and ``background`` labels are left uncoloured) plus a one-pixel outline of
every structure, so the fit of mask and image can be judged at a glance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tte2tee_fast.data.schemas import LabelSchema
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import staged_file

_UNCOLOURED = ("outside", "background")
_GAP = 4  # pixels between tiles
_LEGEND_H = 22


def overlay(
    image: np.ndarray, mask: np.ndarray, schema: LabelSchema, alpha: float = 0.4
) -> np.ndarray:
    """RGB ``[H, W, 3]`` uint8: ``image`` blended with the colours of ``mask``'s structures."""
    schema.validate(mask, "mask")
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)  # [H, W, 3]
    colours = schema.palette().astype(np.float32)[mask]  # [H, W, 3]
    labelled = [v for v, n in zip(schema.values, schema.names, strict=True) if n not in _UNCOLOURED]
    coloured = np.isin(mask, labelled)
    rgb[coloured] = (1.0 - alpha) * rgb[coloured] + alpha * colours[coloured]
    # outline: pixels whose right or lower neighbour has another label
    edge = np.zeros(mask.shape, dtype=bool)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    edge &= coloured
    rgb[edge] = colours[edge]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _legend(schema: LabelSchema, width: int) -> np.ndarray:
    """A strip ``[_LEGEND_H, width, 3]`` with a colour swatch and the name of each structure."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, _LEGEND_H), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    x = 6
    for value, name, colour in zip(schema.values, schema.names, schema.colors, strict=True):
        if name in _UNCOLOURED:
            continue
        draw.rectangle([x, 6, x + 10, 16], fill=tuple(colour))
        text = f"{value} {name}"
        draw.text((x + 14, 5), text, fill=(230, 230, 230))
        x += 14 + int(draw.textlength(text)) + 14
    draw.text((max(x, width - 70), 5), f"[{schema.name}]", fill=(160, 160, 160))
    return np.asarray(strip)


def contact_sheet(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    schema: LabelSchema,
    columns: int | None = None,
    alpha: float = 0.4,
    legend: bool = True,
) -> np.ndarray:
    """RGB ``[H, W, 3]`` uint8 grid: for each case the gray image, then its overlay.

    ``columns`` counts cases per row (default: about square). All images share one size.
    """
    if len(images) == 0 or len(images) != len(masks):
        raise InputError(
            f"contact sheet needs as many masks as images, at least one (got {len(images)} "
            f"images, {len(masks)} masks)"
        )
    h, w = images[0].shape
    for i, (img, msk) in enumerate(zip(images, masks, strict=True)):
        if img.shape != (h, w) or msk.shape != (h, w):
            raise InputError(
                f"case {i}: image {img.shape} and mask {msk.shape} must both be {(h, w)}"
            )
    n = len(images)
    cols = columns or max(1, math.ceil(math.sqrt(n / 2)))
    rows = math.ceil(n / cols)
    tile_w = 2 * w + _GAP
    sheet_w = cols * tile_w + (cols - 1) * _GAP
    sheet = np.zeros((rows * (h + _GAP) - _GAP, sheet_w, 3), dtype=np.uint8)  # [H, W, 3]
    for i, (img, msk) in enumerate(zip(images, masks, strict=True)):
        top, left = (i // cols) * (h + _GAP), (i % cols) * (tile_w + _GAP)
        sheet[top : top + h, left : left + w] = img[..., None]
        sheet[top : top + h, left + w + _GAP : left + tile_w] = overlay(img, msk, schema, alpha)
    if legend:
        sheet = np.concatenate([sheet, _legend(schema, sheet_w)], axis=0)
    return sheet


def save_png(path: str | Path, array: np.ndarray, compress_level: int = 3) -> Path:
    """Write ``array`` (uint8 gray ``[H, W]`` or RGB ``[H, W, 3]``) as PNG, atomically.

    The bytes depend on the pixels only (no timestamp or other metadata), so equal arrays give
    byte-identical files.
    """
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(
            tmp, format="PNG", compress_level=compress_level
        )
    return path


def save_contact_sheet(
    path: str | Path,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    schema: LabelSchema,
    columns: int | None = None,
) -> Path:
    """Render :func:`contact_sheet` and write it to ``path`` (PNG)."""
    return save_png(path, contact_sheet(images, masks, schema, columns=columns))
