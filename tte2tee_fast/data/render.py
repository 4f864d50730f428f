"""Pseudo-ultrasound renderer: echogenicity map in, B-mode sector image out.

The simulation runs in polar (depth x beam angle) coordinates, like a phased-array scanner:

1. complex (IQ) scatterers, amplitude set by the tissue echogenicity, plus coherent specular
   echoes where the echogenicity changes along the beam;
2. axial PSF: the complex-baseband Gabor pulse (Gaussian envelope, residual carrier), applied
   as a transfer function along depth (FFT);
3. lateral PSF: a Gaussian in angle whose physical width follows a focused beam (narrowest at
   the focus, widening before and after), applied per depth row as a transfer function (FFT);
4. envelope ``|IQ|``, depth attenuation and time-gain compensation, electronic noise;
5. log compression to a dynamic range, gain, then scan conversion to the Cartesian grid with
   bilinear interpolation (the speckle widens laterally with depth, as in real echo), 0 outside
   the cone.

Everything is vectorised numpy / scipy.fft in single precision; one 256x256 frame takes a few
milliseconds. Nothing is computed at import time; the per-size Cartesian->polar coordinates
are cached on first use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

APEX_X = 0.5  # sector apex, in units of the image width (x right, y down)
APEX_Y = 0.0
TOP_DB = 3.0  # envelope level (dB re. unit scatterer RMS) mapped to gray 255


@dataclass(frozen=True)
class Sector:
    """Scan sector in image units (the image is the unit square, apex at the top centre)."""

    depth: float  # radius of the sector, image units
    half_angle: float  # radians


@dataclass(frozen=True)
class RenderParams:
    """Per-case imaging settings (like the knobs of a scanner)."""

    gain_db: float  # overall gain added before log compression
    dynamic_range_db: float  # dB span mapped to 0..255
    attenuation_db: float  # round-trip attenuation at full depth
    tgc_db: tuple[float, ...]  # time-gain compensation at evenly spaced depths
    focus: float  # focal depth, fraction of the sector depth
    beam_width: float  # lateral Gaussian sigma at the focus, image units
    pulse_sigma: float  # axial Gaussian envelope sigma, image units
    pulse_offset: float  # residual carrier of the baseband pulse, cycles per image unit
    noise_db: float  # electronic noise level (dB re. unit scatterer amplitude)
    texture_db: float  # amplitude of a smooth random modulation of echogenicity
    clutter_db: float  # near-field clutter level
    lines_per_radian: float  # scan-line density

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tgc_db"] = list(self.tgc_db)
        return d


def sample_render_params(rng: np.random.Generator, modality: str) -> RenderParams:
    """Random scanner settings; TEE probes are higher-frequency (finer speckle, less noise)."""
    tee = modality == "tee"
    return RenderParams(
        gain_db=float(rng.uniform(-4.0, 4.0)),
        dynamic_range_db=float(rng.uniform(48.0, 60.0)),
        attenuation_db=float(rng.uniform(18.0, 30.0)),
        tgc_db=tuple(float(v) for v in rng.normal(0.0, 1.5, size=6)),
        focus=float(rng.uniform(0.45, 0.7)),
        beam_width=float(rng.uniform(0.006, 0.009) * (0.85 if tee else 1.0)),
        pulse_sigma=float(rng.uniform(0.0022, 0.0032) * (0.8 if tee else 1.0)),
        pulse_offset=float(rng.uniform(-20.0, 20.0)),
        noise_db=float(rng.uniform(-52.0, -46.0) - (3.0 if tee else 0.0)),
        texture_db=float(rng.uniform(3.0, 5.0)),
        clutter_db=float(rng.uniform(-30.0, -24.0) - (6.0 if tee else 0.0)),
        lines_per_radian=float(rng.uniform(95.0, 120.0)),
    )


@lru_cache(maxsize=8)
def _cartesian_polar(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distance from the apex and beam angle of every pixel centre, ``[size, size]`` each."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    dx = c[None, :] - APEX_X  # [1, W]
    dy = c[:, None] - APEX_Y  # [H, 1]
    r = np.sqrt(dx * dx + dy * dy)  # [H, W]
    theta = np.arctan2(dx, dy)  # [H, W], 0 on the sector axis, positive to the right
    r.setflags(write=False)
    theta.setflags(write=False)
    return r, theta


def cone_mask(sector: Sector, size: int) -> np.ndarray:
    """Boolean ``[size, size]``: pixel centres inside the scan sector (and the image)."""
    r, theta = _cartesian_polar(size)
    return (r <= sector.depth) & (np.abs(theta) <= sector.half_angle)


def polar_grid(sector: Sector, size: int, params: RenderParams) -> tuple[np.ndarray, np.ndarray]:
    """Sample depths ``[R]`` and beam angles ``[A]`` of the simulation grid."""
    n_r = size  # axial samples: ~1 per output pixel along the beam
    n_a = max(32, round(2.0 * sector.half_angle * params.lines_per_radian * size / 256.0))
    depths = np.linspace(0.0, sector.depth, n_r, dtype=np.float32)
    angles = np.linspace(-sector.half_angle, sector.half_angle, n_a, dtype=np.float32)
    return depths, angles


def polar_lookup(size: int, depths: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Flat indices ``[R, A]`` of the Cartesian ``[size, size]`` pixel under each polar sample."""
    x = APEX_X + depths[:, None] * np.sin(angles)[None, :]  # [R, A]
    y = APEX_Y + depths[:, None] * np.cos(angles)[None, :]
    cols = np.clip((x * size).astype(np.int32), 0, size - 1)
    rows = np.clip((y * size).astype(np.int32), 0, size - 1)
    return rows * size + cols


def _upsample(coarse: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Linear interpolation of ``coarse`` along ``axis`` to ``n`` evenly spread samples."""
    cells = coarse.shape[axis] - 1
    pos = np.linspace(0.0, cells, n, dtype=np.float32)
    i0 = np.minimum(pos.astype(np.int32), cells - 1)
    f = pos - i0
    if axis == 0:
        return coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return coarse[:, i0] * (1 - f)[None, :] + coarse[:, i0 + 1] * f[None, :]


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field ``[R, A]``: a coarse unit Gaussian grid, bilinearly upsampled."""
    coarse = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    return _upsample(_upsample(coarse, shape[0], 0), shape[1], 1)


def _tgc_db(params: RenderParams, depths: np.ndarray, depth: float) -> np.ndarray:
    """Net receive gain in dB per depth ``[R]``: attenuation, 90 % compensated by the TGC,
    plus the TGC slider settings (the rest of the attenuation shows as a slow darkening)."""
    t = depths / depth
    knots = np.linspace(0.0, 1.0, len(params.tgc_db))
    sliders = np.interp(t, knots, np.asarray(params.tgc_db, dtype=np.float32))
    return (-0.1 * params.attenuation_db * t + sliders).astype(np.float32)


def simulate_polar(
    echo_db: np.ndarray,
    mottle_db: np.ndarray,
    depths: np.ndarray,
    angles: np.ndarray,
    sector: Sector,
    params: RenderParams,
    rng: np.random.Generator,
) -> np.ndarray:
    """B-mode gray levels (float32, 0..255) on the polar grid ``[R, A]``.

    ``echo_db`` ``[R, A]``: tissue echogenicity (scatterer amplitude in dB) at each sample;
    ``mottle_db`` ``[R, A]``: depth in dB of a coarse random modulation (patchy tissue).
    """
    from scipy import fft

    n_r, n_a = echo_db.shape
    dr = float(depths[1] - depths[0])
    da = float(angles[1] - angles[0])
    pad_r, pad_a = 12, 16
    big_r, big_a = fft.next_fast_len(n_r + 2 * pad_r), fft.next_fast_len(n_a + 2 * pad_a)
    # echogenicity with smooth texture, as linear amplitude
    texture = params.texture_db * _smooth_field(rng, (n_r, n_a), 12)
    texture += mottle_db * _smooth_field(rng, (n_r, n_a), 5)
    amp = np.power(np.float32(10.0), (echo_db + texture) * np.float32(0.05))  # [R, A]
    # specular echoes: coherent reflection where amplitude jumps along the beam
    jump = np.zeros_like(amp)
    jump[1:-1] = np.abs(amp[2:] - amp[:-2])
    # scatterers: complex (IQ) with E|z|^2 = 1, real and imaginary parts uniform (7x cheaper to
    # draw than Gaussian; the PSF sums several per resolution cell, so the speckle is Gaussian
    # anyway), scaled by the local amplitude, plus the coherent specular part
    noise = rng.random((4, n_r, n_a), dtype=np.float32)
    noise -= np.float32(0.5)
    noise *= np.float32(math.sqrt(6.0))
    field = np.zeros((big_r, big_a), dtype=np.complex64)  # [R', A'], zero padding
    core = field[pad_r : pad_r + n_r, pad_a : pad_a + n_a]
    core.real = amp * noise[0] + 0.4 * jump
    core.imag = amp * noise[1]
    # axial PSF: baseband Gabor pulse exp(-z^2 / 2s^2) exp(i 2 pi f0 z), as a transfer function
    fr = fft.fftfreq(big_r, d=dr).astype(np.float32)  # cycles per image unit
    h_ax = np.exp(-2.0 * (math.pi * params.pulse_sigma) ** 2 * (fr - params.pulse_offset) ** 2)
    h_ax /= np.sqrt(np.mean(h_ax * h_ax))  # unit-energy kernel: speckle level independent of size
    field = fft.ifft(fft.fft(field, axis=0) * h_ax[:, None], axis=0, overwrite_x=True)
    # lateral PSF: focused-beam width w(r), as an angular Gaussian per depth row
    rows = np.clip(depths[0] + (np.arange(big_r, dtype=np.float32) - pad_r) * dr, 0, None)
    z_r = 0.35 * sector.depth  # depth of field around the focus
    width = params.beam_width * np.sqrt(1.0 + ((rows - params.focus * sector.depth) / z_r) ** 2)
    sigma_lines = np.minimum(width / np.maximum(rows, 0.05 * sector.depth) / da, pad_a / 3.0)
    fa = fft.fftfreq(big_a).astype(np.float32)  # cycles per line
    h_lat = np.exp(np.float32(-2.0 * math.pi**2) * (sigma_lines[:, None] * fa[None, :]) ** 2)
    h_lat /= np.sqrt(np.mean(h_lat * h_lat, axis=1, keepdims=True))  # unit energy per row
    field = fft.ifft(fft.fft(field, axis=1) * h_lat, axis=1, overwrite_x=True)  # [R', A']
    # receive: electronic noise and near-field clutter (reverberation) enter before the TGC
    gain_db = _tgc_db(params, depths, sector.depth)  # [R]
    gain = np.power(np.float32(10.0), gain_db * np.float32(0.05))
    clutter = 10.0 ** (params.clutter_db / 20.0) * np.exp(-depths / (0.08 * sector.depth))
    extra = np.sqrt(10.0 ** (params.noise_db / 10.0) + (clutter / gain) ** 2)[:, None]  # [R, 1]
    core = field[pad_r : pad_r + n_r, pad_a : pad_a + n_a]
    re = core.real + extra * noise[2]
    im = core.imag + extra * noise[3]
    # envelope power, log compression: an RMS envelope of TOP_DB maps to white
    level = 10.0 * np.log10(re * re + im * im + 1e-12) + (gain_db + params.gain_db)[:, None]
    top = TOP_DB
    gray = (level - (top - params.dynamic_range_db)) * np.float32(255.0 / params.dynamic_range_db)
    return np.clip(gray, 0.0, 255.0, out=gray)


def scan_convert(
    polar: np.ndarray, depths: np.ndarray, angles: np.ndarray, sector: Sector, size: int
) -> np.ndarray:
    """Bilinear scan conversion ``[R, A]`` -> uint8 ``[size, size]``, 0 outside the cone.

    Inside the cone every pixel is at least 1, so the cone can be recovered from the image.
    """
    from scipy import ndimage

    r, theta = _cartesian_polar(size)
    inside = (r <= sector.depth) & (np.abs(theta) <= sector.half_angle)
    n_r, n_a = polar.shape
    coords = np.empty((2, int(inside.sum())), dtype=np.float32)  # (row, line) per cone pixel
    np.multiply(r[inside] - depths[0], (n_r - 1) / float(depths[-1] - depths[0]), out=coords[0])
    np.multiply(theta[inside] - angles[0], (n_a - 1) / float(angles[-1] - angles[0]), out=coords[1])
    values = ndimage.map_coordinates(polar, coords, order=1, mode="nearest", prefilter=False)
    image = np.zeros((size, size), dtype=np.uint8)
    image[inside] = np.clip(np.rint(values), 1, 255)
    return image


def render(
    echo_db: np.ndarray,
    mottle_db: np.ndarray,
    sector: Sector,
    params: RenderParams,
    rng: np.random.Generator,
) -> np.ndarray:
    """Echogenicity and mottle maps ``[N, N]`` (dB, Cartesian) -> uint8 B-mode ``[N, N]``."""
    size = echo_db.shape[0]
    depths, angles = polar_grid(sector, size, params)
    index = polar_lookup(size, depths, angles)  # [R, A]
    polar_echo = echo_db.ravel()[index]
    polar_mottle = mottle_db.ravel()[index]
    gray = simulate_polar(polar_echo, polar_mottle, depths, angles, sector, params, rng)
    return scan_convert(gray, depths, angles, sector, size)
