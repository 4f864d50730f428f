"""Pseudo-ultrasound renderer: scan conversion, cone, speckle statistics, PSF shape, gains."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from tte2tee_fast.data.render import (
    TOP_DB,
    RenderParams,
    Sector,
    cone_mask,
    polar_grid,
    render,
    sample_render_params,
    scan_convert,
    simulate_polar,
)

SECTOR = Sector(depth=0.92, half_angle=math.radians(37.0))
# a quiet, flat scanner: no texture, no TGC sliders, negligible noise and clutter
FLAT = RenderParams(
    gain_db=0.0,
    dynamic_range_db=60.0,
    attenuation_db=0.0,
    tgc_db=(0.0,) * 6,
    focus=0.6,
    beam_width=0.008,
    pulse_sigma=0.003,
    pulse_offset=0.0,
    noise_db=-120.0,
    texture_db=0.0,
    clutter_db=-120.0,
    lines_per_radian=110.0,
)
SPECKLE_STD_DB = 10.0 * math.pi / (math.sqrt(6.0) * math.log(10.0))  # 5.57 dB (Rayleigh)


def _levels_db(gray: np.ndarray, params: RenderParams) -> np.ndarray:
    """Invert the log compression: gray 0..255 -> envelope level in dB."""
    dr = params.dynamic_range_db
    return gray.astype(np.float64) * dr / 255.0 + (TOP_DB - dr) - params.gain_db


def _uniform_polar(params: RenderParams, echo_db: float, seed: int = 0, size: int = 256):
    depths, angles = polar_grid(SECTOR, size, params)
    echo = np.full((len(depths), len(angles)), echo_db, dtype=np.float32)
    gray = simulate_polar(
        echo, np.zeros_like(echo), depths, angles, SECTOR, params, np.random.default_rng(seed)
    )
    return gray, depths, angles


def test_cone_mask_matches_float64_geometry():
    size = 200
    c = (np.arange(size) + 0.5) / size
    dx, dy = c[None, :] - 0.5, c[:, None]
    ref = (np.hypot(dx, dy) <= SECTOR.depth) & (np.abs(np.arctan2(dx, dy)) <= SECTOR.half_angle)
    assert (cone_mask(SECTOR, size) != ref).sum() <= 2  # float32 rounding at the very edge


def test_scan_convert_matches_scipy_map_coordinates():
    size = 160
    depths, angles = polar_grid(SECTOR, size, FLAT)
    rr, aa = np.meshgrid(np.arange(len(depths)), np.arange(len(angles)), indexing="ij")
    polar = (100 + 80 * np.sin(rr / 9.0) * np.cos(aa / 7.0)).astype(np.float32)  # smooth field
    image = scan_convert(polar, depths, angles, SECTOR, size)
    # reference: float64 polar coordinates of each pixel, bilinear weights written out
    c = (np.arange(size) + 0.5) / size
    dx, dy = c[None, :] - 0.5, np.broadcast_to(c[:, None], (size, size))
    r, th = np.hypot(dx, dy), np.arctan2(dx, dy)
    inside = (r <= SECTOR.depth) & (np.abs(th) <= SECTOR.half_angle)
    ri = np.clip(r / SECTOR.depth * (len(depths) - 1), 0, len(depths) - 1)
    ai = np.clip((th + SECTOR.half_angle) / (2 * SECTOR.half_angle), 0, 1) * (len(angles) - 1)
    r0 = np.minimum(ri.astype(int), len(depths) - 2)
    a0 = np.minimum(ai.astype(int), len(angles) - 2)
    fr, fa = ri - r0, ai - a0
    p = polar.astype(np.float64)
    ref = (1 - fr) * ((1 - fa) * p[r0, a0] + fa * p[r0, a0 + 1]) + fr * (
        (1 - fa) * p[r0 + 1, a0] + fa * p[r0 + 1, a0 + 1]
    )
    both = inside & cone_mask(SECTOR, size)
    assert np.abs(image[both].astype(float) - np.clip(np.rint(ref[both]), 1, 255)).max() <= 1
    assert (image[~cone_mask(SECTOR, size)] == 0).all()


def test_envelope_of_uniform_tissue_is_rayleigh_speckle():
    gray, _, _ = _uniform_polar(FLAT, -20.0, seed=1)
    level = _levels_db(gray, FLAT)[40:-10, 20:-20]  # away from the near field and edges
    # log-compressed Rayleigh envelope: std 5.57 dB, whatever the PSF
    assert abs(level.std() - SPECKLE_STD_DB) < 0.4
    # unit-power scatterers: mean of 20 log10 |complex Gaussian| = 10 log10(power) - 2.51 dB
    # (Euler-Mascheroni constant); the amplitude sets the RMS envelope
    assert abs(level.mean() - (-20.0 - 10 * 0.5772 / math.log(10))) < 0.3


def test_echogenicity_shift_is_a_gray_level_shift():
    low, _, _ = _uniform_polar(FLAT, -30.0, seed=2)
    high, _, _ = _uniform_polar(FLAT, -20.0, seed=2)
    d = _levels_db(high, FLAT)[40:] - _levels_db(low, FLAT)[40:]
    assert abs(d.mean() - 10.0) < 0.3


def test_attenuation_darkens_with_depth():
    # same scatterers with and without attenuation: the level difference is the net depth gain,
    # attenuation 90 % compensated by the TGC: -0.1 * 40 dB * depth / full depth
    lossy = replace(FLAT, attenuation_db=40.0)
    gray0, depths, _ = _uniform_polar(FLAT, -20.0, seed=3)
    gray1, _, _ = _uniform_polar(lossy, -20.0, seed=3)
    diff = (_levels_db(gray1, lossy) - _levels_db(gray0, FLAT)).mean(axis=1)  # [R]
    expected = -4.0 * depths / SECTOR.depth
    assert np.abs(diff - expected)[5:].max() < 0.3  # within one gray step (60 dB / 255)


def _corr(a: np.ndarray, axis: int, lag: int) -> float:
    a = a - a.mean()
    x = np.take(a, np.arange(a.shape[axis] - lag), axis=axis)
    y = np.take(a, np.arange(lag, a.shape[axis]), axis=axis)
    return float((x * y).mean() / a.var())


def test_speckle_is_laterally_elongated_and_widens_with_depth():
    size = 256
    echo = np.full((size, size), -20.0, dtype=np.float32)
    image = render(echo, np.zeros_like(echo), SECTOR, FLAT, np.random.default_rng(4))
    deep = image[212:236, 96:160].astype(float)  # far field, r ~ 0.85-0.92
    focal = image[130:154, 108:148].astype(float)  # around the focus, r ~ 0.52-0.6
    # lateral (along rows) correlation exceeds axial (along columns) at the same lag
    assert _corr(deep, axis=1, lag=2) > _corr(deep, axis=0, lag=2) + 0.3
    assert _corr(focal, axis=1, lag=2) > _corr(focal, axis=0, lag=2)
    # the lateral grain is coarser in the far field than at the focus (the beam widens)
    assert _corr(deep, axis=1, lag=3) > _corr(focal, axis=1, lag=3) + 0.3


def test_render_is_deterministic_and_zero_outside_cone():
    echo = np.full((96, 96), -20.0, dtype=np.float32)
    params = sample_render_params(np.random.default_rng(0), "tte")
    a = render(echo, np.zeros_like(echo), SECTOR, params, np.random.default_rng(9))
    b = render(echo, np.zeros_like(echo), SECTOR, params, np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    cone = cone_mask(SECTOR, 96)
    assert (a[~cone] == 0).all() and (a[cone] >= 1).all()
    c = render(echo, np.zeros_like(echo), SECTOR, params, np.random.default_rng(10))
    assert (a != c).mean() > 0.5  # new scatterers, new speckle


def test_sampled_params_are_in_range_and_serialisable():
    import json

    for seed in range(20):
        for modality in ("tte", "tee"):
            p = sample_render_params(np.random.default_rng(seed), modality)
            assert 40.0 <= p.dynamic_range_db <= 65.0 and p.beam_width > 0 and p.pulse_sigma > 0
            json.dumps(p.to_dict())
