"""CAMUS reader: patient folders of ED/ES frames with ground truth, converted to the TTE schema.

Both public releases are read, through SimpleITK (``GetArrayFromImage`` gives ``[H, W]``
with the apex at the top, as CAMUS displays it):

* original:  ``patient0001/patient0001_4CH_ED.mhd`` (+ ``.raw``) and ``..._4CH_ED_gt.mhd``
* NIfTI:     ``patient0001/patient0001_4CH_ED.nii.gz`` and ``..._4CH_ED_gt.nii.gz``

``half_sequence`` / ``sequence`` files and ``Info_*.cfg`` are ignored.

CAMUS stores 0 background, 1 LV, 2 myocardium, 3 LA and no scan cone. The conversion maps
those to the ``tte`` schema (1 LV cavity, 3 LV myocardium, 4 LA) and splits background into
0 outside the cone / 2 background inside it, deriving the cone from the image (nonzero
pixels, closed, holes filled, largest component, convex hull). Structures keep their label
even where they stick out of the derived cone. Public CAMUS-derived masks use other value
orders, so a declared value map ``{source value: tte label name}`` can replace the default;
when the map already names ``outside``, no cone is derived.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from tte2tee_fast.data.imageio import read_medical_2d, to_label_array, to_uint8_image
from tte2tee_fast.data.schemas import TTE, LabelSchema
from tte2tee_fast.errors import InputError

VIEWS = ("2CH", "4CH")
PHASES = ("ED", "ES")
RAW_CAMUS_MAP: dict[int, str] = {0: "background", 1: "lv_cavity", 2: "lv_myocardium", 3: "la"}

_FILE = re.compile(r"^(patient\d+)_(2CH|4CH)_(ED|ES)(_gt)?\.(nii\.gz|nii|mhd)$", re.IGNORECASE)
_EXT_PREFERENCE = {"nii.gz": 0, "nii": 1, "mhd": 2}


@dataclass(frozen=True)
class CamusCase:
    """One annotated frame: ``patient`` like ``patient0001``, ``view`` 2CH/4CH, ``phase`` ED/ES."""

    patient: str
    view: str
    phase: str
    image: Path
    mask: Path

    @property
    def name(self) -> str:
        return f"{self.patient}_{self.view}_{self.phase}"


def _normalise_choice(values: Iterable[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    values = [values] if isinstance(values, str) else values
    out = tuple(str(v).upper() for v in values)
    bad = [v for v in out if v not in allowed]
    if bad or not out:
        raise InputError(
            f"CAMUS {what} {bad or '(none)'} not understood; choose from {list(allowed)}"
        )
    return out


def _normalise_patient(p: str | int) -> str:
    text = str(p).strip().lower()
    digits = text.removeprefix("patient")
    if not digits.isdigit():
        raise InputError(f"CAMUS patient {p!r} not understood; use e.g. 'patient0001' or 1")
    return f"patient{int(digits):04d}"


def find_cases(
    root: str | Path,
    views: Iterable[str] = VIEWS,
    phases: Iterable[str] = PHASES,
    patients: Iterable[str | int] | None = None,
) -> list[CamusCase]:
    """Every selected annotated frame under ``root`` (a CAMUS tree or one patient folder)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: CAMUS folder not found")
    views = _normalise_choice(views, VIEWS, "views")
    phases = _normalise_choice(phases, PHASES, "phases")
    if isinstance(patients, (str, int)):
        patients = [patients]
    wanted = None if patients is None else {_normalise_patient(p) for p in patients}

    found: dict[tuple[str, str, str], dict[bool, Path]] = {}
    for path in sorted(root.rglob("patient*")):
        m = _FILE.match(path.name)
        if m is None or not path.is_file():
            continue
        patient, view, phase = m.group(1).lower(), m.group(2).upper(), m.group(3).upper()
        if (
            view not in views
            or phase not in phases
            or (wanted is not None and patient not in wanted)
        ):
            continue
        slot = found.setdefault((patient, view, phase), {})
        is_gt = m.group(4) is not None
        old = slot.get(is_gt)
        rank = _EXT_PREFERENCE[m.group(5).lower()]
        if old is None or rank < _EXT_PREFERENCE[_FILE.match(old.name).group(5).lower()]:
            slot[is_gt] = path

    missing = sorted((wanted or set()) - {k[0] for k in found})
    if missing:
        raise InputError(f"{root}: CAMUS patients {missing} not found")
    if not found:
        raise InputError(
            f"{root}: no CAMUS frames found (expected patientXXXX/patientXXXX_<2CH|4CH>_<ED|ES>"
            "[_gt].mhd or .nii.gz)"
        )
    cases = []
    for (patient, view, phase), slot in sorted(found.items()):
        if False not in slot:
            raise InputError(f"{slot[True]}: ground truth without its image")
        if True not in slot:
            raise InputError(f"{slot[False]}: image without ground truth (_gt) file")
        cases.append(CamusCase(patient, view, phase, slot[False], slot[True]))
    return cases


def parse_value_map(
    spec: Mapping[int | str, str | int], target: LabelSchema = TTE
) -> dict[int, int]:
    """``{source value: target label name (or value)}`` → ``{source value: target value}``."""
    out: dict[int, int] = {}
    for key, name in spec.items():
        try:
            src = int(key)
        except (TypeError, ValueError):
            raise InputError(f"value map key {key!r} is not an integer label value") from None
        if not 0 <= src <= 255:
            raise InputError(f"value map key {src} is outside 0..255")
        if isinstance(name, int) and not isinstance(name, bool):
            target.name_of(name)  # raises InputError for an unknown value
            out[src] = name
        else:
            out[src] = target.value_of(str(name))
    if not out:
        raise InputError("value map is empty")
    return out


def read_value_map(path: str | Path) -> dict[str, str | int]:
    """A value map from a JSON file ``{"<source value>": "<label name>", ...}`` (unparsed)."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: value map file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read value map ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f'{path}: a value map is a JSON object like {{"0": "outside", ...}}')
    return data


def apply_value_map(mask: np.ndarray, value_map: Mapping[int, int], source: str) -> np.ndarray:
    """Relabel ``mask`` through ``value_map``; unmapped values raise, naming ``source``."""
    lut = np.full(256, -1, dtype=np.int16)
    for src, dst in value_map.items():
        lut[src] = dst
    mapped = lut[np.asarray(mask, dtype=np.uint8)]  # [H, W]
    if (mapped < 0).any():
        bad = sorted(int(v) for v in np.unique(mask[mapped < 0]))
        raise InputError(
            f"{source}: values {bad} have no entry in the value map {dict(sorted(value_map.items()))}"
        )
    return mapped.astype(np.uint8)


def _convex_hull_fill(region: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie in the convex hull of ``region``'s pixel centres."""
    from scipy.spatial import ConvexHull, QhullError

    edge = region & ~ndimage.binary_erosion(region)
    pts = np.argwhere(edge).astype(np.float64)  # [N, 2] (row, col)
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError):  # fewer than 3 points or all collinear
        return region
    v = pts[hull.vertices]  # [K, 2] polygon, in order
    a, b = v, np.roll(v, -1, axis=0)  # edges a -> b
    rows = np.arange(int(v[:, 0].min()), int(v[:, 0].max()) + 1, dtype=np.float64)  # [R]
    dr = b[:, 0] - a[:, 0]  # [K]
    t = (rows[:, None] - a[None, :, 0]) / np.where(dr == 0, np.inf, dr)[None, :]  # [R, K]
    cross = a[None, :, 1] + t * (b[:, 1] - a[:, 1])[None, :]  # column where each edge meets row
    hit = (t >= -1e-9) & (t <= 1 + 1e-9) & (dr != 0)[None, :]
    flat = (dr == 0)[None, :] & (rows[:, None] == a[None, :, 0])  # horizontal edges on the row
    lo = np.minimum(
        np.where(hit, cross, np.inf).min(1),
        np.where(flat, np.minimum(a[:, 1], b[:, 1]), np.inf).min(1),
    )
    hi = np.maximum(
        np.where(hit, cross, -np.inf).max(1),
        np.where(flat, np.maximum(a[:, 1], b[:, 1]), -np.inf).max(1),
    )
    cols = np.arange(region.shape[1], dtype=np.float64)
    out = np.zeros_like(region)
    r0 = int(rows[0])
    out[r0 : r0 + len(rows)] = (cols[None, :] >= lo[:, None] - 1e-6) & (
        cols[None, :] <= hi[:, None] + 1e-6
    )
    return out | region


def derive_cone(image: np.ndarray, threshold: float = 0.0, source: str = "image") -> np.ndarray:
    """Scan sector of an echo frame as bool ``[H, W]``: the filled region of pixels > threshold.

    Closing (radius 2% of the frame) bridges speckle drop-outs, hole filling keeps dark blood
    pools, the largest component drops stray text or noise, the convex hull gives the fan.
    """
    img = np.asarray(image)
    fg = img > threshold  # [H, W]
    if not fg.any():
        raise InputError(
            f"{source}: image has no pixel above {threshold}; cannot find the scan cone"
        )
    radius = max(2.0, 0.02 * min(img.shape))
    # closing by a disk through distance transforms (cost independent of the radius), in a
    # zero-padded frame so that regions touching the border are not eroded
    pad = int(radius) + 1
    padded = np.pad(fg, pad)
    dilated = ndimage.distance_transform_edt(~padded) <= radius
    closed = (ndimage.distance_transform_edt(dilated) > radius)[pad:-pad, pad:-pad] | fg
    filled = ndimage.binary_fill_holes(closed)
    labels, n = ndimage.label(filled)
    if n > 1:
        sizes = ndimage.sum_labels(filled, labels, index=np.arange(1, n + 1))
        filled = labels == (1 + int(np.argmax(sizes)))
    return _convex_hull_fill(filled)


def to_tte(
    image: np.ndarray,
    mask: np.ndarray,
    value_map: Mapping[int, int] | None = None,
    source: str = "mask",
) -> np.ndarray:
    """CAMUS (or a declared CAMUS-derived variant) mask → ``tte`` label map uint8 ``[H, W]``.

    ``value_map`` is a parsed map (:func:`parse_value_map`); None means raw CAMUS. When the map
    has no ``outside`` target, background pixels outside the derived cone become ``outside``.
    """
    vmap = parse_value_map(RAW_CAMUS_MAP) if value_map is None else dict(value_map)
    out = apply_value_map(mask, vmap, source)
    outside, background = TTE.value_of("outside"), TTE.value_of("background")
    if outside not in vmap.values():
        cone = derive_cone(image, source=source)
        out[(out == background) & ~cone] = outside
    return out


def read_case(
    case: CamusCase, value_map: Mapping[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One frame as (image uint8 ``[H, W]``, tte mask uint8 ``[H, W]``)."""
    image = to_uint8_image(read_medical_2d(case.image))
    mask = to_label_array(read_medical_2d(case.mask), case.mask)
    if image.shape != mask.shape:
        raise InputError(
            f"{case.mask}: mask shape {mask.shape} differs from image {case.image.name} shape "
            f"{image.shape}"
        )
    return image, to_tte(image, mask, value_map, source=str(case.mask))


class CamusSource:
    """Indexed CAMUS frames, converted to the ``tte`` schema on load.

    >>> src = CamusSource("CAMUS/database_nifti", views=["4CH"], phases=["ED"])  # doctest: +SKIP
    >>> image, mask = src.load(0)  # uint8 [H, W], tte labels  # doctest: +SKIP
    """

    schema: LabelSchema = TTE

    def __init__(
        self,
        root: str | Path,
        views: Iterable[str] = VIEWS,
        phases: Iterable[str] = PHASES,
        patients: Iterable[str | int] | None = None,
        value_map: Mapping[int | str, str | int] | None = None,
    ) -> None:
        self.root = Path(root)
        self.cases = find_cases(root, views, phases, patients)
        self.value_map = None if value_map is None else parse_value_map(value_map)

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cases]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return read_case(self.cases[index], self.value_map)
