"""Mask sources for mass generation: the mask of frame ``i``, at the model's size, checked.

``SRC`` (``tte2tee generate --masks SRC``) is one of

* ``phantom:tee`` / ``phantom:tte`` / ``phantom:tte:a2c`` — new anatomy per frame from the
  shape model: frame ``i``'s mask is ``phantom_case(modality, view, size,
  seed=case_seed(seed, i)).mask`` (drawn at ``max(size, 64)``, the phantom's smallest size);
* a folder of masks alone (no images needed): ``DIR/masks/*.png`` if ``DIR/masks`` exists,
  else every lossless image directly in ``DIR`` (hidden files skipped); ``--schema`` (or
  ``DIR/card.json``) names the schema, ``--value-map`` relabels another value order;
* a CAMUS folder (``patient*`` cases): converted to ``tte`` as :mod:`~tte2tee_fast.data.camus`
  does (the image is read too: the cone is derived from it).

A finite source of ``M`` masks gives frame ``i`` mask ``i mod M`` (its ``mask_id`` names the
file). ``--augment`` applies one random affine + elastic transform per frame, drawn from
``augment_rng(seed, i)``.

**Resize rule** (masks of another size or aspect ratio): nearest-neighbour scaling so that the
*longer* side becomes the model size (aspect ratio kept), then symmetric padding of the shorter
side with the schema's ``outside`` label (value 0 when the schema has none, e.g. ``camus``
background). Nothing is cropped, and every output value is an input value or the outside
label: no label value is invented.

>>> src = open_mask_source("phantom:tee", size=128, seed=0)
>>> mask, mask_id = src.mask(3)  # uint8 [128, 128] in tee values, 'phantom:tee:me4c#3'
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from tte2tee_fast.data.schemas import LabelSchema
from tte2tee_fast.errors import InputError

if TYPE_CHECKING:
    from tte2tee_fast.condition.maskr2 import MaskR2Spec

PHANTOM_PREFIX = "phantom:"
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff")  # lossless only
_MAX_LISTED = 50  # bad masks listed one line each; the rest are counted


class MaskSource(Protocol):
    """Where frame masks come from: ``mask(i)`` is a pure function of ``i``."""

    schema: LabelSchema
    size: int
    count: int | None  # None: a new mask for every frame (phantom)
    description: str

    def mask(self, index: int) -> tuple[np.ndarray, str]: ...


class MaskCheckError(InputError):
    """Masks that fail the check: ``problems`` holds one line per bad file or value."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


def outside_label(schema: LabelSchema) -> int:
    """The value that pads a resized mask: ``outside`` when the schema has it, else 0."""
    return schema.value_of("outside") if "outside" in schema.names else 0


def fit_mask(mask: np.ndarray, size: int, fill: int) -> np.ndarray:
    """``[H, W]`` label map -> ``[size, size]``: nearest scaling of the longer side to ``size``
    (aspect kept, pixel centres: source index ``floor((j + 0.5) * in / out)``), then symmetric
    padding with ``fill``. Output values are input values or ``fill``."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or min(mask.shape) < 1:
        raise InputError(f"a mask must be a 2-D label map, got shape {tuple(mask.shape)}")
    h, w = mask.shape
    if (h, w) == (size, size):
        return mask.astype(np.uint8, copy=False)
    scale = size / max(h, w)
    oh, ow = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    rows = np.minimum(((np.arange(oh) + 0.5) * (h / oh)).astype(np.int64), h - 1)  # [oh]
    cols = np.minimum(((np.arange(ow) + 0.5) * (w / ow)).astype(np.int64), w - 1)  # [ow]
    scaled = mask[rows[:, None], cols[None, :]]  # [oh, ow]
    out = np.full((size, size), fill, dtype=np.uint8)
    top, left = (size - oh) // 2, (size - ow) // 2
    out[top : top + oh, left : left + ow] = scaled
    return out


def _augment(mask: np.ndarray, schema: LabelSchema, seed: int, index: int) -> np.ndarray:
    from tte2tee_fast.data.augment import AugmentConfig, augment_pair
    from tte2tee_fast.data.dataset import augment_rng

    _, out = augment_pair(
        None, mask, augment_rng(seed, index), AugmentConfig(), outside_label(schema)
    )
    return out


@dataclass(frozen=True)
class PhantomMasks:
    """A new phantom anatomy for every frame (infinite source)."""

    modality: str
    view: str
    size: int
    seed: int
    augment: bool = False
    count: int | None = None

    @property
    def schema(self) -> LabelSchema:
        from tte2tee_fast.data.schemas import get_schema

        return get_schema(self.modality)

    @property
    def description(self) -> str:
        return f"phantom:{self.modality}:{self.view}"

    def mask(self, index: int) -> tuple[np.ndarray, str]:
        from tte2tee_fast.data.phantom import MIN_SIZE, case_seed, phantom_case

        draw = max(self.size, MIN_SIZE)
        case = phantom_case(self.modality, self.view, draw, seed=case_seed(self.seed, index))
        mask = fit_mask(case.mask, self.size, outside_label(self.schema))  # [S, S]
        if self.augment:
            mask = _augment(mask, self.schema, self.seed, index)
        return mask, f"{self.description}#{index}"


class FileMasks:
    """``M`` mask files (a folder of masks alone, or CAMUS): frame ``i`` uses mask ``i mod M``."""

    def __init__(
        self,
        names: list[str],
        loader,
        schema: LabelSchema,
        size: int,
        seed: int,
        augment: bool,
        description: str,
    ) -> None:
        self.names, self._load, self.schema = names, loader, schema
        self.size, self.seed, self.augment = int(size), int(seed), bool(augment)
        self.count: int | None = len(names)
        self.description = description

    def raw(self, k: int) -> np.ndarray:
        """Mask file ``k`` as stored (after the value map), checked against the schema."""
        mask = self._load(k)  # [H, W] uint8
        self.schema.validate(mask, source=self.names[k])
        return mask

    def mask(self, index: int) -> tuple[np.ndarray, str]:
        k = index % len(self.names)
        mask = fit_mask(self.raw(k), self.size, outside_label(self.schema))  # [S, S]
        if self.augment:
            mask = _augment(mask, self.schema, self.seed, index)
        return mask, self.names[k]


def _mask_files(root: Path) -> list[Path]:
    folder = root / "masks" if (root / "masks").is_dir() else root
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in MASK_EXTS and not p.name.startswith(".")
    )
    if not files:
        raise InputError(
            f"{folder}: no mask files found (expected {', '.join(MASK_EXTS)} label maps)"
        )
    return files


def _folder_masks(
    root: Path,
    size: int,
    seed: int,
    augment: bool,
    schema: str | None,
    value_map: Mapping[int | str, str | int] | None,
) -> FileMasks:
    from tte2tee_fast.data.camus import apply_value_map, parse_value_map
    from tte2tee_fast.data.folder import resolve_schema
    from tte2tee_fast.data.imageio import read_label_image

    label_schema = resolve_schema(root, schema)
    vmap = None if value_map is None else parse_value_map(value_map, label_schema)
    files = _mask_files(root)

    def load(k: int) -> np.ndarray:
        mask = read_label_image(files[k])
        return mask if vmap is None else apply_value_map(mask, vmap, str(files[k]))

    names = [str(p.relative_to(root)) for p in files]
    return FileMasks(names, load, label_schema, size, seed, augment, str(root))


def _camus_masks(
    root: Path,
    size: int,
    seed: int,
    augment: bool,
    schema: str | None,
    value_map: Mapping[int | str, str | int] | None,
) -> FileMasks:
    from tte2tee_fast.data.camus import CamusSource

    if schema not in (None, "tte"):
        raise InputError(
            f"CAMUS frames are converted to the 'tte' schema; --schema {schema} does not apply"
        )
    src = CamusSource(root, value_map=value_map)
    return FileMasks(
        src.names, lambda k: src.load(k)[1], src.schema, size, seed, augment, f"camus:{root}"
    )


def open_mask_source(
    source: str,
    size: int,
    seed: int = 0,
    augment: bool = False,
    schema: str | None = None,
    value_map: Mapping[int | str, str | int] | None = None,
) -> PhantomMasks | FileMasks:
    """The mask source named by ``source`` (see the module docstring) at ``size`` x ``size``."""
    from tte2tee_fast.data.phantom import check_view

    if not isinstance(size, int) or size < 8:
        raise InputError(f"mask size must be an integer >= 8, got {size!r}")
    if source.startswith(PHANTOM_PREFIX):
        parts = source[len(PHANTOM_PREFIX) :].split(":")
        if len(parts) > 2 or not parts[0]:
            raise InputError(
                f"mask source {source!r}: expected phantom:tee, phantom:tte or phantom:tte:VIEW"
            )
        if schema is not None or value_map is not None:
            raise InputError(
                f"--schema and --value-map apply to mask folders, not to {source!r} "
                "(the phantom draws its own schema)"
            )
        view = check_view(parts[0], parts[1] if len(parts) == 2 else None)
        return PhantomMasks(parts[0], view, size, int(seed), bool(augment))
    from tte2tee_fast.data.dataset import detect_format

    root = Path(source)
    if not root.exists():
        raise InputError(
            f"mask source {source!r}: no such folder (use phantom:tee, phantom:tte[:VIEW], a "
            "folder of masks or a CAMUS folder)"
        )
    if not root.is_dir():
        raise InputError(f"mask source {source!r} is not a folder")
    fmt = "camus" if detect_format(root) == "camus" else "folder"
    opener = _camus_masks if fmt == "camus" else _folder_masks
    return opener(root, size, int(seed), bool(augment), schema, value_map)


def require_schema(source: PhantomMasks | FileMasks, spec: MaskR2Spec, masks: str) -> None:
    """InputError unless ``source``'s masks are in the schema that MaskR² ``spec`` reads (values
    alone do not tell: TTE values are a subset of TEE's)."""
    if source.schema.name != spec.source.name:
        raise InputError(
            f"masks {masks!r} are in the {source.schema.name!r} schema but the model "
            f"(MaskR² spec {spec.name!r}) takes {spec.source.name!r} masks; pass other --masks, "
            "--schema/--value-map, a --remap spec from that schema, or another --adapter"
        )


def check_masks(source: PhantomMasks | FileMasks) -> str:
    """Read and check every file of a finite source before any frame is generated.

    Returns a sha256 of the names and checked mask contents (the source's fingerprint: a
    folder whose files change is another configuration). Raises :class:`MaskCheckError`
    listing every bad file and value at once. A phantom source is checked per frame (its masks
    are drawn in the schema) and fingerprinted by its description.
    """
    digest = hashlib.sha256()
    if not isinstance(source, FileMasks):
        digest.update(source.description.encode())
        return digest.hexdigest()
    problems: list[str] = []
    for k, name in enumerate(source.names):
        try:
            mask = source.raw(k)
        except InputError as err:
            problems.append(str(err))
            continue
        digest.update(f"{name}\0{mask.shape}\0".encode())
        digest.update(np.ascontiguousarray(mask).tobytes())
    if problems:
        shown = problems[:_MAX_LISTED]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more")
        raise MaskCheckError(
            f"{len(problems)} of {len(source.names)} masks in {source.description} failed the "
            f"check against schema {source.schema.name!r} (listed above); no frame was generated",
            shown,
        )
    return digest.hexdigest()
