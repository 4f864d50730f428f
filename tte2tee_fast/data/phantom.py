"""Parametric heart phantom: label masks and pseudo-ultrasound images from a seed.

Views: TTE apical four-chamber ``a4c`` and two-chamber ``a2c`` (``tte`` schema) and TEE
mid-oesophageal four-chamber ``me4c`` (``tee`` schema). All three are drawn from one
four-chamber heart in a local frame: ``u`` runs along the long axis from the crux (mitral plane,
``u = 0``) towards the LV apex, ``v`` across it towards the LV side. Apical TTE views look at the
heart from the apex (``u`` points up, to the probe); the TEE view looks from behind the atria
(``u`` points down). The LV is on the image right in both, as displayed clinically.

Chambers are Fourier-perturbed superellipses. Per case, a handful of shape modes (like the
leading modes of a statistical shape model: size, LV sphericity, atrial size, RV size, wall
thickness, basal narrowing) plus per-chamber shape detail, pose and sector geometry are drawn
from the seed. Chambers are painted into a tissue map in a fixed order so that later structures
cut earlier ones (the septa come from that), the heart is moved deeper or shrunk until the cone
holds it, and the label mask and the echogenicity map are both read off the tissue map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tte2tee_fast.data.render import (
    APEX_X,
    APEX_Y,
    RenderParams,
    Sector,
    cone_mask,
    render,
    sample_render_params,
)
from tte2tee_fast.data.schemas import LabelSchema, get_schema
from tte2tee_fast.errors import InputError

VIEWS: dict[str, tuple[str, ...]] = {"tte": ("a4c", "a2c"), "tee": ("me4c",)}
MIN_SIZE, MAX_SIZE = 64, 512

# tissue codes of the internal tissue map (finer than any label schema)
OUTSIDE, TISSUE, LV_BLOOD, LA_BLOOD, RV_BLOOD, RA_BLOOD = 0, 1, 2, 3, 4, 5
LV_MYO, RV_WALL, ATRIAL_WALL, PERICARDIUM, VALVE, VESSEL = 6, 7, 8, 9, 10, 11
NUM_TISSUES = 12

# echogenicity of each tissue code: scatterer RMS amplitude in dB (render.TOP_DB is white)
ECHO_DB = np.array(
    [-90.0, -30.0, -50.0, -50.0, -50.0, -50.0, -13.0, -14.0, -15.0, -6.0, -6.0, -50.0],
    dtype=np.float32,
)
# depth of the coarse random mottle of each tissue code, dB (patchy tissue around the heart)
MOTTLE_DB = np.array([0, 7.0, 0, 0, 0, 0, 2.0, 2.0, 2.0, 3.0, 0, 0], dtype=np.float32)

# tissue code -> label value, per schema (valves and papillary muscles are drawn after the mask)
_LABEL_LUT = {
    "tte": np.array([0, 2, 1, 4, 2, 2, 3, 2, 2, 2, 2, 2], dtype=np.uint8),
    "tee": np.array([0, 1, 3, 2, 5, 4, 1, 1, 1, 1, 1, 1], dtype=np.uint8),
}

# statistical-shape-model style modes; each coefficient ~ N(0, 1), clipped at +-2.5
_MODES = ("size", "sphericity", "atria", "rv", "wall", "base")


@dataclass(frozen=True)
class PhantomCase:
    """One phantom frame: gray image, label mask in the modality's schema, its parameters."""

    image: np.ndarray  # uint8 [size, size], 0 outside the cone
    mask: np.ndarray  # uint8 [size, size], values of `schema`
    params: dict = field(default_factory=dict)  # JSON-serialisable
    modality: str = "tte"
    view: str = "a4c"

    @property
    def schema(self) -> LabelSchema:
        return get_schema(self.modality)


def case_seed(base_seed: int, index: int) -> int:
    """Seed of case ``index`` of a run with ``base_seed``: independent of how many cases run."""
    seq = np.random.SeedSequence([int(base_seed) & 0xFFFFFFFF, int(index)])
    return int(seq.generate_state(1, dtype=np.uint32)[0])


def check_view(modality: str, view: str | None) -> str:
    """The view to draw: ``view`` checked against ``modality``, or the modality's first view."""
    if modality not in VIEWS:
        raise InputError(f"unknown modality {modality!r}; choose one of {sorted(VIEWS)}")
    if view is None:
        return VIEWS[modality][0]
    if view not in VIEWS[modality]:
        owner = [m for m, vs in VIEWS.items() if view in vs]
        hint = f" (it is a {owner[0]} view)" if owner else ""
        raise InputError(
            f"view {view!r} does not belong to modality {modality!r}{hint}; "
            f"{modality} views: {', '.join(VIEWS[modality])}"
        )
    return view


# ----------------------------------------------------------------------------- parameters


def _fourier(rng: np.random.Generator, scale: float) -> list[float]:
    """Shape detail: coefficients (cos, sin) of harmonics 2, 3, 4 of the boundary radius."""
    return [float(v) for v in rng.normal(0.0, scale, size=6) * np.repeat([1.0, 0.7, 0.5], 2)]


def sample_params(modality: str, view: str, rng: np.random.Generator) -> dict:
    """Draw the anatomy and sector parameters of one case (nested dict of floats)."""
    tee = modality == "tee"
    b = {m: float(np.clip(rng.normal(), -2.5, 2.5)) for m in _MODES}
    size = 1.0 + 0.06 * b["size"]
    lv_len = 0.44 * size * (1.0 - 0.05 * b["sphericity"])
    lv_b = (0.1 if tee else 0.11) * size * (1.0 + 0.1 * b["sphericity"])
    atria = size * (1.0 + 0.12 * b["atria"]) * (1.12 if tee else 1.0)
    rv = size * (1.0 + 0.12 * b["rv"])
    wall = 0.036 * size * (1.0 + 0.18 * b["wall"])
    half_angle = rng.uniform(40.0, 45.0) if tee else rng.uniform(34.0, 40.0)
    depth = rng.uniform(0.88, 0.95) if tee else rng.uniform(0.9, 0.97)
    heart = {
        "lv_len": lv_len,
        "lv_b": lv_b,
        "lv_kappa": 0.55 + 0.07 * b["base"],  # basal truncation: larger = narrower base
        "myo_t": wall,
        "apex_t": 0.8 * wall,
        "rv_len": lv_len * rng.uniform(0.6, 0.75) * (rv / size),
        "rv_b": 0.082 * rv,
        "rv_in": rng.uniform(0.02, 0.035),  # how far the RV wraps onto the septum
        "rv_t": 0.013 * size,
        "tv_u": rng.uniform(0.012, 0.03),  # tricuspid annulus sits apical to the mitral
        "la_a": 0.105 * atria,
        "la_b": 0.095 * atria * rng.uniform(0.9, 1.1),
        "la_shift": rng.uniform(0.35, 0.55),
        "la_p": rng.uniform(1.8, 2.4),
        "ra_a": 0.1 * atria * rng.uniform(0.9, 1.1),
        "ra_b": 0.085 * atria * rng.uniform(0.9, 1.1),
        "ra_p": rng.uniform(1.8, 2.4),
        "atrial_t": 0.014 * size,
        "peri_t": rng.uniform(0.006, 0.01),
        "tilt_deg": float(np.clip(rng.normal(6.0 if tee else -6.0, 5.0), -16.0, 16.0)),
        "lv_rot_deg": rng.normal(0.0, 3.0),
        "rv_rot_deg": rng.normal(-6.0, 4.0),
        "la_rot_deg": rng.normal(0.0, 6.0),
        "ra_rot_deg": rng.normal(0.0, 6.0),
        "near_gap": rng.uniform(0.06, 0.12) if not tee else rng.uniform(0.13, 0.19),
        "shift_x": rng.normal(0.01, 0.015),
        "mv_open": rng.uniform(0.0, 1.0),  # 0 closed (systole) .. 1 wide open (diastole)
        "pap": rng.uniform(0.0, 1.0),  # papillary muscle prominence
        "aorta_r": rng.uniform(0.025, 0.04),
        "scale": 1.0,  # reduced below 1 if the heart has to shrink to fit the cone
    }
    shape = {k: _fourier(rng, 0.025) for k in ("lv", "rv", "la", "ra")}
    out = {
        "modality": modality,
        "view": view,
        "ssm_modes": b,
        "sector": {"depth": depth, "half_angle_deg": half_angle},
        "heart": {k: float(v) for k, v in heart.items()},
        "shape": shape,
    }
    return out


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Frame:
    """Heart frame: crux position and long-axis (u) / lateral (v) unit vectors in the image."""

    cx: float
    cy: float
    ux: float
    uy: float
    vx: float
    vy: float

    def point(self, u: float, v: float) -> tuple[float, float]:
        return self.cx + u * self.ux + v * self.vx, self.cy + u * self.uy + v * self.vy


@dataclass(frozen=True)
class _Shape:
    """A Fourier-perturbed superellipse centred at (u, v) of the heart frame."""

    u: float
    v: float
    a: float  # semi-axis along the (rotated) long axis
    b: float  # semi-axis across
    rot: float = 0.0  # extra rotation against the frame, radians
    p: float = 2.0  # superellipse exponent
    coef: tuple[float, ...] = (0.0,) * 6  # (c2, s2, c3, s3, c4, s4)


def _frame(params: dict) -> _Frame:
    """Place the heart under the probe.

    Apical views put the LV apex on the sector axis, ``near_gap`` below the probe (the probe
    sits on the apex); the TEE view puts the top of the atria there (the probe sits behind
    the LA), with the interatrial septum just left of the axis.
    """
    h = params["heart"]
    s = h["scale"]
    tilt = math.radians(h["tilt_deg"])
    lv_v = (h["lv_b"] + h["myo_t"]) * s  # LV centre line; the septum runs along v = 0
    if params["view"] == "me4c":
        ux, uy = -math.sin(tilt), math.cos(tilt)  # apex away from the probe
        anchor_u = -(h["la_a"] * (1.0 + h["la_shift"]) + h["atrial_t"]) * s
        anchor_v = 0.85 * lv_v - 0.8 * h["la_b"] * s
    else:
        ux, uy = math.sin(tilt), -math.cos(tilt)  # apex towards the probe
        anchor_u = (h["lv_len"] + h["apex_t"]) * s
        anchor_v = lv_v
    vx, vy = math.cos(tilt), math.sin(tilt)  # LV side is image right
    tx, ty = APEX_X + h["shift_x"], APEX_Y + h["near_gap"]
    return _Frame(tx - anchor_u * ux - anchor_v * vx, ty - anchor_u * uy - anchor_v * vy,
                  ux, uy, vx, vy)  # fmt: skip


def _paint_ops(params: dict) -> tuple[list, list]:
    """Paint list ``(code, shape, grow_a, grow_b, u_min, u_max)`` for the mask and render-only.

    Later entries overwrite earlier ones. The second list (valves, papillary muscle) is
    painted onto the render map only, after the mask has been read.
    """
    h, sh, view = params["heart"], params["shape"], params["view"]
    s = h["scale"]
    inf = math.inf
    four = view in ("a4c", "me4c")
    lv_len, lv_b, kappa = h["lv_len"] * s, h["lv_b"] * s, h["lv_kappa"]
    lv_a = lv_len / (1.0 + kappa)
    myo, apex_t = h["myo_t"] * s, h["apex_t"] * s
    lv_v = lv_b + myo
    lv = _Shape(kappa * lv_a, lv_v, lv_a, lv_b, math.radians(h["lv_rot_deg"]), 2.0, tuple(sh["lv"]))
    la_a, la_b = h["la_a"] * s, h["la_b"] * s
    la_v = lv_v * (0.85 if four else 1.0)
    la = _Shape(
        -la_a * h["la_shift"], la_v, la_a, la_b, math.radians(h["la_rot_deg"]), h["la_p"],
        tuple(sh["la"]),
    )  # fmt: skip
    at = h["atrial_t"] * s
    peri = h["peri_t"] * s
    ops: list = [(PERICARDIUM, lv, apex_t + myo + peri, myo + peri, 0.0, inf)]
    extra: list = []
    if four:
        rv_len, rv_b = h["rv_len"] * s, h["rv_b"] * s
        tv = h["tv_u"] * s
        rv_a = (rv_len - tv) / 1.6
        rv = _Shape(
            tv + 0.6 * rv_a, -rv_b + h["rv_in"] * s, rv_a, rv_b, math.radians(h["rv_rot_deg"]),
            2.0, tuple(sh["rv"]),
        )  # fmt: skip
        ra_a, ra_b = h["ra_a"] * s, h["ra_b"] * s
        ra = _Shape(
            tv - ra_a * 0.55, -ra_b * 0.95, ra_a, ra_b, math.radians(h["ra_rot_deg"]), h["ra_p"],
            tuple(sh["ra"]),
        )  # fmt: skip
        rt = h["rv_t"] * s
        ops = [
            (PERICARDIUM, rv, rt + peri, rt + peri, tv, inf),
            *ops,
            (ATRIAL_WALL, ra, at, at, -inf, tv),
            (RA_BLOOD, ra, 0.0, 0.0, -inf, tv),
            (RV_WALL, rv, rt, rt, tv, inf),
            (RV_BLOOD, rv, 0.0, 0.0, tv, inf),
        ]
        # tricuspid leaflets: hinge on the annulus, pointing into the RV
        extra += _leaflets(rv, tv, 0.55 * rv_b, h["mv_open"], at, 0.5 * myo)
    ops += [
        (ATRIAL_WALL, la, at, at, -inf, 0.0),
        # the basal myocardium reaches just past the mitral plane (the annulus hinges) ...
        (LV_MYO, lv, apex_t, myo, -0.5 * myo, inf),
        # ... where the LA, painted over it, does not open into the LV
        (LA_BLOOD, la, 0.0, 0.0, -inf, 0.0),
        (LV_BLOOD, lv, 0.0, 0.0, 0.0, inf),
    ]
    base_half = lv_b * math.sqrt(max(1.0 - kappa * kappa, 0.05))
    extra += _leaflets(lv, 0.0, base_half, h["mv_open"], 0.8 * at, 0.5 * myo)
    # papillary muscle on the lateral wall, mid-cavity (render only)
    pr = (0.012 + 0.012 * h["pap"]) * s
    extra.append(
        (LV_MYO, _Shape(lv.u + 0.1 * lv_a, lv_v + lv_b - 0.6 * pr, 2.0 * pr, pr), 0, 0, 0, inf)
    )
    if view == "a4c":
        # descending aorta behind the LA, lateral (labelled background)
        ar = h["aorta_r"] * s
        ao = _Shape(-(la_a * (1 + h["la_shift"]) + ar * 1.2), la_v + la_b * 0.9, ar, ar)
        ops[:0] = [(ATRIAL_WALL, ao, at, at, -inf, inf), (VESSEL, ao, 0.0, 0.0, -inf, inf)]
    return ops, extra


def _leaflets(
    ventricle: _Shape, u0: float, half: float, open_: float, thick: float, hinge: float
) -> list:
    """Annulus hinge points at (u0, v_centre +- half) and two leaflets swinging from them into
    the ventricle (closed: across the annulus; open: towards the apex)."""
    length = 0.9 * half  # closed, the two leaflets meet mid-annulus
    angle = 0.15 + 1.0 * open_  # radians from the annulus plane
    out = []
    for side in (-1.0, 1.0):
        v_h = ventricle.v + side * half
        du, dv = math.sin(angle) * length, -side * math.cos(angle) * length
        # a thin ellipse centred halfway along the leaflet, rotated along it
        leaflet = _Shape(
            u0 + 0.5 * du, v_h + 0.5 * dv, 0.5 * length, 0.5 * thick, math.atan2(dv, du)
        )
        out.append((VALVE, leaflet, 0, 0, u0, math.inf))
        out.append((VALVE, _Shape(u0, v_h, hinge, hinge), 0, 0, -math.inf, math.inf))
    return out


@dataclass
class _Geometry:
    """A shape evaluated over its bounding box: rotated coordinates and boundary radius."""

    rows: slice
    cols: slice
    x: np.ndarray  # [h, w] coordinate along the shape's a axis
    y: np.ndarray  # [h, w] coordinate along its b axis
    radius: np.ndarray | float  # [h, w] boundary radius 1 + Fourier terms (normalised units)
    u: np.ndarray  # [h, w] long-axis coordinate of the heart frame


def _geometry(
    shape: _Shape, xs: np.ndarray, ys: np.ndarray, frame: _Frame, reach_ab: float
) -> _Geometry | None:
    """Evaluate ``shape`` on the grid inside a square of half-side ``reach_ab`` x (1 + detail)."""
    cx, cy = frame.point(shape.u, shape.v)
    reach = reach_ab * (1.0 + sum(abs(c) for c in shape.coef)) * 1.05 + 1e-6
    c0, c1 = np.searchsorted(xs, [cx - reach, cx + reach])
    r0, r1 = np.searchsorted(ys, [cy - reach, cy + reach])
    if c1 <= c0 or r1 <= r0:
        return None
    dx = (xs[c0:c1] - cx)[None, :]  # [1, w]
    dy = (ys[r0:r1] - cy)[:, None]  # [h, 1]
    # shape axes: the frame's u/v rotated by shape.rot
    cr, sr = math.cos(shape.rot), math.sin(shape.rot)
    ax, ay = cr * frame.ux + sr * frame.vx, cr * frame.uy + sr * frame.vy
    bx, by = -sr * frame.ux + cr * frame.vx, -sr * frame.uy + cr * frame.vy
    x = dx * ax + dy * ay  # [h, w]
    y = dx * bx + dy * by
    radius: np.ndarray | float = 1.0
    if any(shape.coef):
        # boundary radius 1 + sum_k c_k cos(k phi) + s_k sin(k phi), harmonics by recursion,
        # phi the polar angle in the shape's normalised coordinates
        xn, yn = x / shape.a, y / shape.b
        inv = 1.0 / np.maximum(np.sqrt(xn * xn + yn * yn), 1e-6)
        c1_, s1_ = xn * inv, yn * inv
        c2, s2 = c1_ * c1_ - s1_ * s1_, 2.0 * c1_ * s1_
        c3, s3 = c2 * c1_ - s2 * s1_, s2 * c1_ + c2 * s1_
        c4, s4 = c2 * c2 - s2 * s2, 2.0 * c2 * s2
        k = shape.coef
        radius = 1.0 + k[0] * c2 + k[1] * s2 + k[2] * c3 + k[3] * s3 + k[4] * c4 + k[5] * s4
    u = shape.u + dx * frame.ux + dy * frame.uy  # [h, w]
    return _Geometry(slice(r0, r1), slice(c0, c1), x, y, radius, u)


def _paint_all(
    tissue: np.ndarray, xs: np.ndarray, ys: np.ndarray, frame: _Frame, ops: list
) -> None:
    """Paint ``ops`` in order into ``tissue`` ``[len(ys), len(xs)]`` (in place).

    Each distinct shape is evaluated once, over the bounding box of its largest growth; the
    grown variants (walls, pericardium) reuse its coordinates and boundary radius.
    """
    reach: dict[int, float] = {}  # keyed by id(): the shapes live as long as `ops`
    for _, shape, ga, gb, _, _ in ops:
        reach[id(shape)] = max(reach.get(id(shape), 0.0), shape.a + ga, shape.b + gb)
    cache: dict[int, _Geometry | None] = {}
    for code, shape, ga, gb, u_min, u_max in ops:
        if id(shape) not in cache:
            cache[id(shape)] = _geometry(shape, xs, ys, frame, reach[id(shape)])
        g = cache[id(shape)]
        if g is None:
            continue
        x, y = g.x / (shape.a + ga), g.y / (shape.b + gb)
        if shape.p == 2.0:
            inside = x * x + y * y < g.radius * g.radius
        else:
            inside = np.abs(x) ** shape.p + np.abs(y) ** shape.p < g.radius**shape.p
        if math.isfinite(u_min):
            inside &= g.u >= u_min
        if math.isfinite(u_max):
            inside &= g.u < u_max
        tissue[g.rows, g.cols][inside] = code


def _sector(params: dict) -> Sector:
    s = params["sector"]
    return Sector(depth=s["depth"], half_angle=math.radians(s["half_angle_deg"]))


def tissue_map(params: dict, size: int, cone: bool = True, render_only: bool = False) -> np.ndarray:
    """Tissue codes ``[size, size]`` uint8 of the case (``OUTSIDE`` outside the cone if ``cone``).

    ``render_only`` also paints the structures that are drawn in the image but not labelled
    (valve leaflets, papillary muscle).
    """
    xs = (np.arange(size, dtype=np.float32) + 0.5) / size
    tissue = _tissue_on_grid(params, xs, xs, render_only)
    if cone:
        tissue[~cone_mask(_sector(params), size)] = OUTSIDE
    return tissue


def _tissue_on_grid(
    params: dict, xs: np.ndarray, ys: np.ndarray, render_only: bool, only: tuple = ()
) -> np.ndarray:
    """Tissue codes on the grid of pixel centres ``xs`` x ``ys`` (image units), no cone.

    ``only``: paint just these tissue codes (a quick look at where the chambers are).
    """
    frame = _frame(params)
    ops, extra = _paint_ops(params)
    if only:
        ops = [op for op in ops if op[0] in only]
    tissue = np.full((len(ys), len(xs)), TISSUE, dtype=np.uint8)
    _paint_all(tissue, xs, ys, frame, ops + (extra if render_only else []))
    return tissue


def _fit_to_cone(params: dict, tolerance: float = 0.005) -> dict:
    """Move the heart deeper or shrink it until the cone holds ``1 - tolerance`` of the chambers.

    Chambers sticking out near the probe push the heart deeper while there is room below;
    otherwise the heart shrinks by 4 % per step. Deterministic: it depends on the params only.
    """
    xs = np.linspace(-0.2, 1.2, 80, dtype=np.float32)
    dx, dy = xs[None, :] - APEX_X, xs[:, None] - APEX_Y
    sec = _sector(params)
    cone = (np.hypot(dx, dy) <= sec.depth) & (np.abs(np.arctan2(dx, dy)) <= sec.half_angle)
    cone &= (xs[None, :] >= 0) & (xs[None, :] <= 1) & (xs[:, None] >= 0) & (xs[:, None] <= 1)
    codes = (LV_BLOOD, LA_BLOOD, RV_BLOOD, RA_BLOOD, LV_MYO)
    chambers = np.zeros(NUM_TISSUES, dtype=bool)
    chambers[list(codes)] = True
    heart = params["heart"]
    for _ in range(24):
        labelled = chambers[_tissue_on_grid(params, xs, xs, render_only=False, only=codes)]
        out = labelled & ~cone
        if out.sum() <= tolerance * labelled.sum():
            break
        rows = np.nonzero(labelled.any(axis=1))[0]
        out_rows = np.nonzero(out.any(axis=1))[0]
        room = APEX_Y + sec.depth - 0.04 - xs[rows[-1]]
        near = xs[out_rows].mean() < 0.5 * (xs[rows[0]] + xs[rows[-1]])
        if near and room > 0.025:
            heart["near_gap"] += 0.02
        else:
            heart["scale"] *= 0.96
    return params


# ----------------------------------------------------------------------------- the case


def phantom_case(
    modality: str = "tte", view: str | None = None, size: int = 256, seed: int = 0
) -> PhantomCase:
    """One phantom frame of ``modality``/``view`` at ``size`` x ``size``, fully determined by
    ``seed``. ``view=None`` picks the modality's first view (``a4c`` / ``me4c``).

    Example::

        case = phantom_case("tee", size=256, seed=3)
        case.image.shape, case.mask.max()   # (256, 256), 5
    """
    view = check_view(modality, view)
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise InputError(f"size {size!r} is out of range; use {MIN_SIZE}..{MAX_SIZE}")
    size = int(size)
    anatomy_seq, render_seq = np.random.SeedSequence(int(seed) & 0xFFFFFFFFFFFFFFFF).spawn(2)
    params = _fit_to_cone(sample_params(modality, view, np.random.default_rng(anatomy_seq)))
    render_rng = np.random.default_rng(render_seq)
    rparams: RenderParams = sample_render_params(render_rng, modality)
    params["render"] = rparams.to_dict()
    params["seed"] = int(seed)
    params["size"] = size

    tissue = tissue_map(params, size)  # [size, size] tissue codes, OUTSIDE outside the cone
    mask = _LABEL_LUT[modality][tissue]
    # structures drawn in the image only (valves, papillary muscle), then the cone again
    xs = (np.arange(size, dtype=np.float32) + 0.5) / size
    _paint_all(tissue, xs, xs, _frame(params), _paint_ops(params)[1])
    tissue[mask == 0] = OUTSIDE
    image = render(ECHO_DB[tissue], MOTTLE_DB[tissue], _sector(params), rparams, render_rng)
    image[mask == 0] = 0
    return PhantomCase(image=image, mask=mask, params=params, modality=modality, view=view)
