"""Realism: how far the generated frames' feature distribution is from real frames'.

Features come from the encoder of the evaluation segmenter (:mod:`.segment`), which runs
offline (no downloaded Inception weights): each encoder level's output is averaged over
space (mean) and its spatial standard deviation taken, concatenated per frame
(``2 * sum(channels)`` = 240 values for the packaged segmenter).

* **Fréchet distance** (FID's formula on these features):
  ``|mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))`` in float64 (``scipy.linalg.sqrtm``).
  Biased upwards for small sets (it needs many more frames than feature dimensions to be
  stable); compare numbers only at equal set sizes.
* **KID**: the unbiased MMD² with the cubic polynomial kernel
  ``k(x, y) = (x·y / d + 1)^3``, mean and std over random subsets (seeded). Unbiased, so it
  can be compared across set sizes and can be slightly negative for two samples of one
  distribution.
* **Region means**: the existing per-label mean gray value (:mod:`.intensity`) of each set.

What these can tell: whether generated frames look, to a network trained on real frames, like
real frames (speckle texture, brightness, contrast), and rank samplers / step counts /
backends at equal set sizes. What they cannot: whether each frame matches *its* mask (that
is :mod:`.fidelity`), anything the encoder is blind to (it was trained to segment chambers,
not to judge texture), or realism against *clinical* echo when the reference frames are
phantoms. They are not comparable with published FID/KID numbers (other features).

>>> report = evaluate_realism("phantom-tee", "runs/s")  # doctest: +SKIP
>>> report["frechet_distance"], report["kid"]["mean"]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from tte2tee_fast.errors import InputError
from tte2tee_fast.evaluate.frames import load_frames
from tte2tee_fast.evaluate.intensity import region_means
from tte2tee_fast.evaluate.segment import Segmenter, load_segmenter, prepare


def encoder_levels(model: nn.Module) -> list[nn.Module]:
    """The down-path units of a MONAI ``UNet``, top to bottom (the bottom unit included)."""
    levels, node = [], model.model  # Sequential(down, SkipConnection(sub), up)
    while True:
        levels.append(node[0])
        sub = node[1].submodule
        if isinstance(sub, nn.Sequential) and len(sub) == 3:
            node = sub
            continue
        levels.append(sub)
        return levels


@torch.no_grad()
def encoder_features(seg: Segmenter, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Per-frame features float64 ``[N, 2 * sum(channels)]`` for uint8 images ``[N, H, W]``:
    spatial mean and std of every encoder level's output."""
    images = np.asarray(images)
    if images.ndim != 3 or len(images) == 0:
        raise InputError(f"frames must be a non-empty [N, H, W] array, got shape {images.shape}")
    captured: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: captured.append(out))
        for m in encoder_levels(seg.model)
    ]
    feats = []
    try:
        for i in range(0, len(images), batch_size):
            captured.clear()
            (x,) = prepare(images[i : i + batch_size], None, seg.config.size)  # [B, 1, S, S]
            seg.model(x * 2.0 - 1.0)
            per_level = [torch.cat([f.mean((2, 3)), f.std((2, 3))], 1) for f in captured]
            feats.append(torch.cat(per_level, 1).double())  # [B, D]
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(feats).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a [N, D]`` and ``b [M, D]``."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise InputError(
            f"Fréchet distance needs two [N>=2, D] feature sets of one D, got {a.shape}, {b.shape}"
        )
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # [D, D]
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # singular product: nudge both diagonals
        eps = np.eye(a.shape[1]) * 1e-6
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3  # [m, m]
    kyy = (y @ y.T / d + 1.0) ** 3  # [n, n]
    kxy = (x @ y.T / d + 1.0) ** 3  # [m, n]
    m, n = len(x), len(y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kernel_inception_distance(
    a: np.ndarray,
    b: np.ndarray,
    subset_size: int = 100,
    n_subsets: int = 50,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (unbiased MMD², cubic polynomial kernel) between ``a [N, D]`` and ``b [M, D]``:
    mean and std over ``n_subsets`` random subsets of ``min(subset_size, N, M)`` frames each
    (drawn without replacement from ``default_rng(seed)``)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    size = min(int(subset_size), len(a), len(b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or size < 2:
        raise InputError(f"KID needs two [N>=2, D] feature sets of one D, got {a.shape}, {b.shape}")
    rng = np.random.default_rng(seed)
    vals = [
        _mmd2_unbiased(
            a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)]
        )
        for _ in range(int(n_subsets))
    ]
    return float(np.mean(vals)), float(np.std(vals))


def evaluate_realism(
    real: str | Path,
    frames: str | Path,
    segmenter: str | Path | None = None,
    schema: str | None = None,
    n: int | None = None,
    real_seed: int = 3,
    seed: int = 0,
) -> dict:
    """Fréchet distance, KID and region means of ``frames`` against ``real`` (either may be a
    folder or a phantom source; ``real_seed`` / ``seed`` are their phantom base seeds)."""
    seg = load_segmenter(segmenter)
    ref = load_frames(
        real, schema, default_schema=seg.schema.name, n=n, seed=real_seed, size=seg.config.size
    )
    gen = load_frames(
        frames, schema, default_schema=seg.schema.name, n=n, seed=seed, size=seg.config.size
    )
    if (ref.schema.names, ref.schema.values) != (gen.schema.names, gen.schema.values):
        raise InputError(
            f"{gen.source}: schema {gen.schema.name!r} differs from the real set's "
            f"{ref.schema.name!r}"
        )
    fa, fb = encoder_features(seg, ref.images), encoder_features(seg, gen.images)
    kid_mean, kid_std = kernel_inception_distance(fa, fb, seed=seed)
    real_regions = region_means(ref.images, ref.masks, ref.schema)
    gen_regions = region_means(gen.images, gen.masks, gen.schema)
    return {
        "real": ref.source,
        "frames": gen.source,
        "n_real": len(ref),
        "n_frames": len(gen),
        "segmenter": str(seg.path) if seg.path is not None else None,
        "feature_dim": int(fa.shape[1]),
        "frechet_distance": frechet_distance(fa, fb),
        "kid": {"mean": kid_mean, "std": kid_std, "subset_size": min(100, len(fa), len(fb))},
        "region_means": {
            name: {"real": real_regions[name], "frames": gen_regions[name]}
            for name in ref.schema.names
        },
    }


def format_realism(report: dict) -> str:
    """The report as a few lines."""
    lines = [
        f"realism of {report['frames']} ({report['n_frames']} frames) against "
        f"{report['real']} ({report['n_real']} frames), {report['feature_dim']} encoder features",
        f"  Fréchet distance {report['frechet_distance']:.4f}",
        f"  KID {report['kid']['mean']:.5f} ± {report['kid']['std']:.5f} "
        f"(subsets of {report['kid']['subset_size']})",
        "  region means (0..255)  real   frames",
    ]
    for name, r in report["region_means"].items():
        lines.append(f"    {name:<18s} {r['real']:6.1f} {r['frames']:6.1f}")
    return "\n".join(lines)
