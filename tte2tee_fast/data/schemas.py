"""Named label schemas: integer values, structure names and display colours.

``tte``   CAMUS-derived 5-channel scheme of the semantic echo work (the base model's layout).
``tee``   mid-oesophageal four-chamber view (no myocardium label, as in 2508.13077).
``camus`` the raw CAMUS ground truth (no cone).
``tee-alt`` the TEE structures in another value order (LV before LA, RV before RA), as some
          annotation tools export them: the held-out mask format of the MaskR² check (issue 15
          item 7), sent to the adapter by ``assets/maskr2/tee-alt.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tte2tee_fast.errors import InputError


def present_values(arr: np.ndarray) -> np.ndarray:
    """The distinct values of ``arr``, sorted (``np.unique``). For an integer array with a small
    value range, one counting pass: ~10x faster than ``np.unique``'s sort on a batch of label
    maps, and label checks run on every batch of a generation."""
    arr = np.asarray(arr)
    if arr.size == 0 or arr.dtype.kind not in "iu" or arr.dtype == np.uint64:
        return np.unique(arr)
    lo, hi = int(arr.min()), int(arr.max())
    if hi - lo > 65535:
        return np.unique(arr)
    counts = np.bincount(arr.ravel().astype(np.int64, copy=False) - lo, minlength=hi - lo + 1)
    return (np.flatnonzero(counts) + lo).astype(arr.dtype)


@dataclass(frozen=True)
class LabelSchema:
    """A label schema: ``names[i]`` is the structure stored as integer ``values[i]``."""

    name: str
    names: tuple[str, ...]
    values: tuple[int, ...]
    colors: tuple[tuple[int, int, int], ...]  # RGB 0-255, one per label, for overlays

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.values) == len(self.colors)):
            raise ValueError(f"schema {self.name!r}: names, values and colors differ in length")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"schema {self.name!r}: duplicate values {self.values}")

    @property
    def num_labels(self) -> int:
        return len(self.values)

    def value_of(self, name: str) -> int:
        """Integer value of the structure called ``name``."""
        if name not in self.names:
            raise InputError(f"schema {self.name!r} has no label {name!r}; labels: {self.names}")
        return self.values[self.names.index(name)]

    def name_of(self, value: int) -> str:
        if value not in self.values:
            raise InputError(f"schema {self.name!r} has no value {value}; values: {self.values}")
        return self.names[self.values.index(value)]

    def unknown_values(self, mask: np.ndarray) -> list[int]:
        """Every value found in ``mask`` that this schema does not define, sorted."""
        found = present_values(np.asarray(mask))
        return sorted(int(v) for v in found if int(v) not in self.values)

    def validate(self, mask: np.ndarray, source: str = "mask") -> None:
        """Raise :class:`InputError` naming ``source`` and every unknown value in ``mask``."""
        bad = self.unknown_values(mask)
        if bad:
            raise InputError(
                f"{source}: values {bad} are not in schema {self.name!r} "
                f"(allowed {list(self.values)}: {', '.join(self.names)})"
            )

    def palette(self) -> np.ndarray:
        """Lookup table ``[max_value + 1, 3]`` uint8 mapping label values to RGB colours."""
        lut = np.zeros((max(self.values) + 1, 3), dtype=np.uint8)
        for value, color in zip(self.values, self.colors, strict=True):
            lut[value] = color
        return lut


TTE = LabelSchema(
    name="tte",
    names=("outside", "lv_cavity", "background", "lv_myocardium", "la"),
    values=(0, 1, 2, 3, 4),
    colors=((0, 0, 0), (220, 50, 50), (40, 40, 40), (50, 200, 80), (60, 110, 230)),
)

TEE = LabelSchema(
    name="tee",
    names=("outside", "background", "la", "lv", "ra", "rv"),
    values=(0, 1, 2, 3, 4, 5),
    colors=(
        (0, 0, 0),
        (40, 40, 40),
        (60, 110, 230),
        (220, 50, 50),
        (240, 200, 40),
        (200, 60, 220),
    ),
)

# the same structures and colours as TEE, stored in another value order
TEE_ALT = LabelSchema(
    name="tee-alt",
    names=("outside", "background", "lv", "la", "rv", "ra"),
    values=(0, 1, 2, 3, 4, 5),
    colors=(
        (0, 0, 0),
        (40, 40, 40),
        (220, 50, 50),
        (60, 110, 230),
        (200, 60, 220),
        (240, 200, 40),
    ),
)

CAMUS = LabelSchema(
    name="camus",
    names=("background", "lv", "myocardium", "la"),
    values=(0, 1, 2, 3),
    colors=((0, 0, 0), (220, 50, 50), (50, 200, 80), (60, 110, 230)),
)

SCHEMAS: dict[str, LabelSchema] = {s.name: s for s in (TTE, TEE, CAMUS, TEE_ALT)}


def get_schema(name: str) -> LabelSchema:
    """Look up a schema by name; the error lists the valid names."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise InputError(
            f"unknown label schema {name!r}; choose one of {sorted(SCHEMAS)}"
        ) from None
