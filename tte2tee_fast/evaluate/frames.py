"""Frame sets for evaluation: image/mask pairs from a folder or drawn from the phantom.

A frame set is the images (uint8 ``[N, H, W]``), their label maps (uint8 ``[N, H, W]``, values
of one schema) and their names. Sources:

* a folder in the folder reader's layout (``images/`` + ``masks/``, or flat ``<name>.png`` +
  ``<name>_mask.png``): what ``tte2tee phantom``, ``tte2tee sample`` and
  ``tte2tee generate --format png`` write. The schema is the one given, else ``card.json``'s,
  else the ``"schema"`` of ``report.json`` (``tte2tee sample`` writes it), else ``default``.
* ``phantom-tee`` / ``phantom-tte``: ``n`` phantom cases of base seed ``seed`` at ``size``,
  drawn in memory (case ``i`` is ``phantom_case(seed=case_seed(seed, i))``).

>>> frames = load_frames("runs/s")  # a tte2tee sample output  # doctest: +SKIP
>>> frames.images.shape, frames.schema.name  # ((16, 128, 128), 'tee')  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tte2tee_fast.data.schemas import LabelSchema, get_schema
from tte2tee_fast.errors import InputError

PHANTOM_SOURCES = ("phantom-tee", "phantom-tte")


@dataclass(frozen=True, eq=False)
class Frames:
    """Images and label maps of one schema."""

    images: np.ndarray  # uint8 [N, H, W]
    masks: np.ndarray  # uint8 [N, H, W]
    names: tuple[str, ...]
    schema: LabelSchema
    source: str

    def __len__(self) -> int:
        return len(self.names)


def report_schema(root: Path) -> str | None:
    """The ``"schema"`` of ``root/report.json`` (a ``tte2tee sample`` output), or None."""
    path = root / "report.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("schema")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def load_frames(
    source: str | Path,
    schema: str | None = None,
    default_schema: str | None = None,
    n: int | None = None,
    seed: int = 0,
    size: int = 128,
) -> Frames:
    """The frame set ``source`` (see the module docstring); ``n`` caps a folder's frame count
    (first ``n`` by name) and is the number of phantom cases drawn (default 16)."""
    if str(source) in PHANTOM_SOURCES:
        return phantom_frames(str(source).split("-")[1], 16 if n is None else n, seed, size)
    from tte2tee_fast.data.folder import card_schema, find_pairs, read_pair

    root = Path(source)
    pairs = find_pairs(root)  # first: a missing folder or unpaired file is the clearer error
    name = schema or card_schema(root) or report_schema(root) or default_schema
    if name is None:
        raise InputError(
            f"{root}: no label schema declared; pass --schema (tte, tee) or add card.json "
            'with a "schema" key'
        )
    resolved = get_schema(name)
    if n is not None:
        pairs = pairs[: int(n)]
    images, masks = [], []
    for pair in pairs:
        image, mask = read_pair(pair, resolved)
        if images and image.shape != images[0].shape:
            raise InputError(
                f"{pair.image}: size {image.shape[0]}x{image.shape[1]} differs from "
                f"{pairs[0].image.name} ({images[0].shape[0]}x{images[0].shape[1]}); "
                "a frame set holds one frame size"
            )
        images.append(image)
        masks.append(mask)
    return Frames(
        images=np.stack(images),
        masks=np.stack(masks),
        names=tuple(p.stem for p in pairs),
        schema=resolved,
        source=str(root),
    )


def phantom_frames(modality: str, n: int, seed: int = 0, size: int = 128) -> Frames:
    """``n`` phantom cases of ``modality`` (base seed ``seed``) at ``size`` x ``size``."""
    from tte2tee_fast.data.phantom import case_seed, phantom_case

    if int(n) < 1:
        raise InputError(f"phantom frame set: n must be at least 1, got {n}")
    cases = [phantom_case(modality, None, int(size), case_seed(seed, i)) for i in range(int(n))]
    return Frames(
        images=np.stack([c.image for c in cases]),
        masks=np.stack([c.mask for c in cases]),
        names=tuple(f"phantom-{modality}_{seed}_{i:05d}" for i in range(int(n))),
        schema=get_schema(modality),
        source=f"phantom-{modality} (seed {seed}, {n} cases, {size}px)",
    )
