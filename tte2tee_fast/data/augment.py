"""Mask/image augmentation of the semantic echo work: random affine + elastic deformation.

One coordinate map is computed per sample and shared by the image (bilinear) and the label
map (nearest neighbour, so no new label values appear except ``fill_label`` where the map
points outside the frame; with the default ``fill_label=0`` = "outside the cone" that is a
value every echo mask already holds).

Conventions: arrays are ``[H, W]`` (row = y pointing down, col = x). The affine is built in
(x, y) about the frame centre ``((W-1)/2, (H-1)/2)`` like torchvision's ``affine``:
``M = T(c + t) · R(angle) · Shear(shear) · S(scale) · T(-c)``, a positive angle turning the
picture counter-clockwise as displayed. Output pixel ``p`` samples the input at
``M⁻¹(p + d(p))`` where ``d`` is the elastic displacement field.

The elastic field is a cubic B-spline whose coefficients are the random control-point
displacements on a ``G×G`` grid spanning the frame (``prefilter=False``): the B-spline basis
is non-negative and sums to one, so each component of the dense field is a convex
combination of control values and never exceeds the sampled maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

REFERENCE_SIZE = 256  # elastic_px is given for a 256×256 frame and scales with the frame


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transform (defaults: the semantic echo work)."""

    rotation_deg: float = 5.0  # angle ~ U(-r, r)
    translate: float = 0.05  # shift ~ U(-t, t) · frame size, per axis
    scale: tuple[float, float] = (0.8, 1.05)  # isotropic zoom ~ U(lo, hi)
    shear_deg: float = 5.0  # x-shear angle ~ U(-s, s)
    elastic_points: int = 10  # control grid is elastic_points × elastic_points
    elastic_px: float = 30.0  # max control displacement per axis at 256 px
    affine: bool = True
    elastic: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"scale range must satisfy 0 < lo <= hi, got {self.scale}")
        if self.elastic_points < 2:
            raise ValueError(f"elastic_points must be >= 2, got {self.elastic_points}")
        if min(self.rotation_deg, self.translate, self.shear_deg, self.elastic_px) < 0:
            raise ValueError("augmentation ranges must be non-negative")


@dataclass(frozen=True, eq=False)
class AugmentParams:
    """One drawn transform. ``elastic`` is ``[2, G, G]`` (dy, dx) pixels, or None."""

    angle_deg: float = 0.0
    translate: tuple[float, float] = (0.0, 0.0)  # (tx, ty) pixels
    scale: float = 1.0
    shear_deg: float = 0.0
    elastic: np.ndarray | None = None


def sample_params(
    rng: np.random.Generator, shape: tuple[int, int], cfg: AugmentConfig = AugmentConfig()
) -> AugmentParams:
    """Draw one transform for a frame of ``shape = (H, W)``; the draw order is fixed."""
    h, w = shape
    angle, tx, ty, scale, shear = 0.0, 0.0, 0.0, 1.0, 0.0
    if cfg.affine:
        angle = float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
        tx = float(rng.uniform(-cfg.translate, cfg.translate)) * w
        ty = float(rng.uniform(-cfg.translate, cfg.translate)) * h
        scale = float(rng.uniform(*cfg.scale))
        shear = float(rng.uniform(-cfg.shear_deg, cfg.shear_deg))
    elastic = None
    if cfg.elastic and cfg.elastic_px > 0:
        g = cfg.elastic_points
        limit = np.array([h, w], dtype=np.float64) * (cfg.elastic_px / REFERENCE_SIZE)  # [2]
        elastic = rng.uniform(-1.0, 1.0, size=(2, g, g)) * limit[:, None, None]  # [2, G, G]
    return AugmentParams(angle, (tx, ty), scale, shear, elastic)


def affine_matrix(params: AugmentParams, shape: tuple[int, int]) -> np.ndarray:
    """Forward affine ``[3, 3]`` acting on homogeneous (row, col) coordinates."""
    h, w = shape
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a, sh = math.radians(params.angle_deg), math.radians(params.shear_deg)
    tx, ty = params.translate

    def translate(dx: float, dy: float) -> np.ndarray:
        return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])

    rot = np.array([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0], [0, 0, 1]])
    shear = np.array([[1.0, math.tan(sh), 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    zoom = np.diag([params.scale, params.scale, 1.0])
    m_xy = translate(cx + tx, cy + ty) @ rot @ shear @ zoom @ translate(-cx, -cy)
    swap = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # (x, y) <-> (row, col)
    return swap @ m_xy @ swap


def displacement_field(params: AugmentParams, shape: tuple[int, int]) -> np.ndarray:
    """Dense elastic displacement ``[2, H, W]`` (drow, dcol) in pixels; zeros when none."""
    h, w = shape
    if params.elastic is None:
        return np.zeros((2, h, w))
    ctrl = np.asarray(params.elastic, dtype=np.float64)  # [2, G, G]
    gy, gx = ctrl.shape[1:]
    u = np.linspace(0.0, gy - 1.0, h)[:, None] * np.ones((1, w))  # [H, W] grid row coordinate
    v = np.ones((h, 1)) * np.linspace(0.0, gx - 1.0, w)[None, :]  # [H, W] grid col coordinate
    return np.stack(
        [ndimage.map_coordinates(c, [u, v], order=3, prefilter=False, mode="nearest") for c in ctrl]
    )


def coordinate_map(params: AugmentParams, shape: tuple[int, int]) -> np.ndarray:
    """Source (row, col) ``[2, H, W]`` sampled by every output pixel."""
    h, w = shape
    rows, cols = np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
    )
    q = np.stack([rows, cols]) + displacement_field(params, shape)  # [2, H, W]
    inv = np.linalg.inv(affine_matrix(params, shape))  # [3, 3]
    src = np.einsum("ij,jhw->ihw", inv[:2, :2], q) + inv[:2, 2, None, None]
    return src


def warp_image(image: np.ndarray, coords: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Bilinear resampling of ``image [H, W]`` at ``coords [2, H', W']`` → float32 ``[H', W']``."""
    img = np.asarray(image, dtype=np.float32)
    return ndimage.map_coordinates(img, coords, order=1, mode="grid-constant", cval=fill)


def warp_mask(mask: np.ndarray, coords: np.ndarray, fill_label: int = 0) -> np.ndarray:
    """Nearest-neighbour resampling of a label map: values ⊆ input values ∪ {fill_label}."""
    mask = np.asarray(mask)
    out = ndimage.map_coordinates(mask, coords, order=0, mode="grid-constant", cval=fill_label)
    return out.astype(mask.dtype, copy=False)


def augment_pair(
    image: np.ndarray | None,
    mask: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig = AugmentConfig(),
    fill_label: int = 0,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Apply one random transform to a mask (and its image, if given) with a shared map."""
    params = sample_params(rng, mask.shape, cfg)
    coords = coordinate_map(params, mask.shape)  # [2, H, W]
    warped = None if image is None else warp_image(image, coords)
    return warped, warp_mask(mask, coords, fill_label)
