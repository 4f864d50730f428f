"""Folder reader: image/mask pairs in a declared label schema.

Layouts (the first one found wins):

* ``DIR/images/<stem>.png`` + ``DIR/masks/<stem>.png`` (what ``tte2tee phantom`` writes), with an
  optional ``DIR/card.json`` whose ``"schema"`` key names the label schema;
* flat: ``DIR/<stem>.png`` + ``DIR/<stem>_mask.png``.

Images are 8-bit gray (colour is converted to luminance); masks are single-channel label maps.
The schema comes from the caller (``schema=``) or else from ``card.json``. A declared
``value_map`` ``{source value: label name}`` relabels masks stored in another value order.
Every problem is an :class:`InputError` of one line naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tte2tee_fast.data.camus import apply_value_map, parse_value_map
from tte2tee_fast.data.imageio import read_gray_image, read_label_image
from tte2tee_fast.data.schemas import LabelSchema, get_schema
from tte2tee_fast.errors import InputError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff")  # lossless only
MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class Pair:
    """One image and its mask; ``stem`` names the pair."""

    stem: str
    image: Path
    mask: Path


def _by_stem(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in exts or path.name.startswith("."):
            continue
        if path.stem in out:
            raise InputError(f"{path}: same name as {out[path.stem].name}; keep one file per stem")
        out[path.stem] = path
    return out


def find_pairs(root: str | Path) -> list[Pair]:
    """All image/mask pairs under ``root``, sorted by stem; unmatched files raise."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: data folder not found")
    img_dir, mask_dir = root / "images", root / "masks"
    if img_dir.is_dir() or mask_dir.is_dir():
        for d in (img_dir, mask_dir):
            if not d.is_dir():
                raise InputError(
                    f"{d}: folder not found (expected images/ and masks/ side by side)"
                )
        images, masks = _by_stem(img_dir, IMAGE_EXTS), _by_stem(mask_dir, MASK_EXTS)
        expect_mask = {s: mask_dir / f"{s}.png" for s in images}
    else:
        files = _by_stem(root, IMAGE_EXTS)
        masks = {s[: -len(MASK_SUFFIX)]: p for s, p in files.items() if s.endswith(MASK_SUFFIX)}
        images = {s: p for s, p in files.items() if not s.endswith(MASK_SUFFIX)}
        expect_mask = {s: root / f"{s}{MASK_SUFFIX}.png" for s in images}
        if not masks:
            images = {}
    if not images and not masks:
        raise InputError(
            f"{root}: no image/mask pairs found (expected images/<name>.png + masks/<name>.png, "
            f"or <name>.png + <name>{MASK_SUFFIX}.png)"
        )
    for stem, path in images.items():
        if stem not in masks:
            raise InputError(f"{path}: image without mask (expected {expect_mask[stem]})")
    for stem, path in masks.items():
        if stem not in images:
            raise InputError(f"{path}: mask without image")
    return [Pair(s, images[s], masks[s]) for s in sorted(images)]


def card_schema(root: str | Path) -> str | None:
    """The schema name in ``root/card.json``, or None when there is no card."""
    card = Path(root) / "card.json"
    if not card.is_file():
        return None
    try:
        data = json.loads(card.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{card}: cannot read dataset card ({err})") from None
    value = data.get("schema") if isinstance(data, dict) else None
    if isinstance(value, dict):
        value = value.get("name")
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f'{card}: "schema" must be a schema name, found {value!r}')
    return value


def resolve_schema(root: str | Path, schema: str | LabelSchema | None) -> LabelSchema:
    """The declared schema, else the one named by ``card.json``; an error if neither."""
    if isinstance(schema, LabelSchema):
        return schema
    name = schema if schema is not None else card_schema(root)
    if name is None:
        raise InputError(
            f"{root}: no label schema declared; pass --schema (tte, tee, camus) or add "
            'card.json with a "schema" key'
        )
    return get_schema(name)


def read_pair(
    pair: Pair, schema: LabelSchema, value_map: Mapping[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 ``[H, W]``, mask uint8 ``[H, W]`` in ``schema``), checked."""
    image = read_gray_image(pair.image)
    mask = read_label_image(pair.mask)
    if image.shape != mask.shape:
        raise InputError(
            f"{pair.mask}: mask size {mask.shape[0]}x{mask.shape[1]} differs from image "
            f"{pair.image.name} size {image.shape[0]}x{image.shape[1]} (HxW)"
        )
    if value_map is not None:
        mask = apply_value_map(mask, value_map, str(pair.mask))
    schema.validate(mask, source=str(pair.mask))
    return image, mask


class FolderSource:
    """Indexed image/mask pairs of a folder, in one label schema.

    >>> src = FolderSource("runs/phantom-tee")  # schema from card.json  # doctest: +SKIP
    >>> image, mask = src.load(0)  # uint8 [H, W] each  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | Path,
        schema: str | LabelSchema | None = None,
        value_map: Mapping[int | str, str | int] | None = None,
    ) -> None:
        self.root = Path(root)
        self.pairs = find_pairs(self.root)
        self.schema = resolve_schema(self.root, schema)
        self.value_map = None if value_map is None else parse_value_map(value_map, self.schema)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def names(self) -> list[str]:
        return [p.stem for p in self.pairs]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return read_pair(self.pairs[index], self.schema, self.value_map)
