"""Realism metrics: the Fréchet distance against closed forms and an independent float64
formula, KID against a pixel-loop MMD², encoder features that do not depend on the batch,
and the command on phantom sets versus noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import error_line

from tte2tee_fast.cli import main
from tte2tee_fast.errors import InputError
from tte2tee_fast.evaluate.realism import (
    encoder_features,
    frechet_distance,
    kernel_inception_distance,
)
from tte2tee_fast.evaluate.segment import SegmenterConfig, train_segmenter

pytest.importorskip("monai")  # the eval extra: pip install -e ".[eval]"
pytestmark = pytest.mark.usefixtures("one_thread")


def symmetric_fd(a: np.ndarray, b: np.ndarray) -> float:
    """Reference: tr sqrt(S_a^1/2 S_b S_a^1/2) from eigendecompositions (a symmetric PSD
    matrix throughout, no general sqrtm)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(ca)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ cb @ root_a)
    return float(
        ((mu_a - mu_b) ** 2).sum()
        + np.trace(ca)
        + np.trace(cb)
        - 2 * np.sqrt(np.clip(inner, 0, None)).sum()
    )


def loop_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Reference unbiased MMD² with k(u, v) = (u·v/d + 1)^3, written as plain loops."""
    d = x.shape[1]

    def k(u, v):
        return (float(np.dot(u, v)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    assert abs(frechet_distance(a, a)) < 1e-8
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 1.0])
    # same covariance, means apart: exactly |shift|^2
    assert frechet_distance(a, a + shift) == pytest.approx((shift**2).sum(), rel=1e-8)
    # independent axes: |dmu|^2 + sum (sigma_a - sigma_b)^2 of the sample covariances
    x = rng.normal(size=(300, 4))
    y = rng.normal(size=(300, 4)) * np.array([1.0, 2.0, 0.5, 1.0]) + 1.0
    ref = symmetric_fd(x, y)
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-8)
    assert ref > 4.0  # the mean shift alone contributes 4


def test_frechet_matches_reference_on_random_sets_and_checks_shapes():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 10))
    b = rng.normal(size=(40, 10)) * 1.5 + 0.3
    assert frechet_distance(a, b) == pytest.approx(symmetric_fd(a, b), rel=1e-7)
    with pytest.raises(InputError, match="Fréchet distance"):
        frechet_distance(a, b[:, :5])


def test_kid_matches_loop_reference():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(12, 5))
    b = rng.normal(size=(10, 5)) + 0.7
    # subsets as large as the smaller set, drawn from a set of exactly that size: a permutation
    mean, std = kernel_inception_distance(a[:10], b, subset_size=10, n_subsets=3)
    assert mean == pytest.approx(loop_mmd2(a[:10], b), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)
    # two samples of one distribution: unbiased, so near 0 (either sign); a shift is far off
    x, y = rng.normal(size=(400, 5)), rng.normal(size=(400, 5))
    same, _ = kernel_inception_distance(x, y, subset_size=100, n_subsets=20)
    shifted, _ = kernel_inception_distance(x, y + 0.7, subset_size=100, n_subsets=20)
    assert abs(same) < 0.05 * shifted and mean > 0.05
    # random subsets are seeded
    assert kernel_inception_distance(a, b, 6, 5, seed=1) == kernel_inception_distance(
        a, b, 6, 5, seed=1
    )


@pytest.fixture(scope="module")
def tiny_segmenter():
    """A small segmenter briefly trained on 64 px TEE phantom frames."""
    from tte2tee_fast.evaluate.frames import phantom_frames

    frames = phantom_frames("tee", 24, seed=11, size=64)
    cfg = SegmenterConfig(schema="tee", size=64, channels=(4, 8, 16), strides=(2, 2), steps=20)
    return train_segmenter(frames.images, frames.masks, cfg)


def test_features_do_not_depend_on_the_batch(tiny_segmenter):
    from tte2tee_fast.evaluate.frames import phantom_frames

    images = phantom_frames("tee", 5, seed=12, size=64).images
    full = encoder_features(tiny_segmenter, images, batch_size=5)
    one = encoder_features(tiny_segmenter, images, batch_size=1)
    assert full.shape == (5, 2 * (4 + 8 + 16)) and full.dtype == np.float64
    np.testing.assert_allclose(one, full, rtol=1e-4, atol=1e-6)
    # the hooks are removed: a plain forward adds no captured features
    assert not any(m._forward_hooks for m in tiny_segmenter.model.modules())


def test_phantom_sets_are_closer_to_each_other_than_to_noise(tiny_segmenter):
    from tte2tee_fast.evaluate.frames import phantom_frames

    real = encoder_features(tiny_segmenter, phantom_frames("tee", 24, seed=20, size=64).images)
    other = encoder_features(tiny_segmenter, phantom_frames("tee", 24, seed=21, size=64).images)
    noise_img = np.random.default_rng(0).integers(0, 256, size=(24, 64, 64), dtype=np.uint8)
    noise = encoder_features(tiny_segmenter, noise_img)
    assert frechet_distance(real, other) < 0.5 * frechet_distance(real, noise)
    kid_other, _ = kernel_inception_distance(real, other, subset_size=24, n_subsets=5)
    kid_noise, _ = kernel_inception_distance(real, noise, subset_size=24, n_subsets=5)
    assert kid_other < 0.25 * kid_noise


def _save(tmp_path, seg):
    from tte2tee_fast.evaluate.segment import save_segmenter

    return save_segmenter(seg, tmp_path / "seg", {})


def test_realism_command(tmp_path, tiny_segmenter):
    seg_dir = _save(tmp_path, tiny_segmenter)
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "phantom",
            "--modality",
            "tee",
            "--n",
            "6",
            "--size",
            "64",
            "--seed",
            "5",
            "--out",
            str(tmp_path / "gen"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "r.json"
    res = runner.invoke(
        main,
        [
            "evaluate",
            "realism",
            "--real",
            "phantom-tee",
            "--n",
            "6",
            "--frames",
            str(tmp_path / "gen"),
            "--segmenter",
            str(seg_dir),
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["n_real"] == report["n_frames"] == 6
    assert report["feature_dim"] == 56 and report["frechet_distance"] >= 0
    assert set(report["region_means"]) == {"outside", "background", "la", "lv", "ra", "rv"}
    assert report["region_means"]["outside"]["frames"] == 0.0  # the phantom is black there
    # a TTE set against the TEE segmenter: one line naming the schemas
    res = runner.invoke(
        main,
        [
            "phantom",
            "--modality",
            "tte",
            "--n",
            "2",
            "--size",
            "64",
            "--out",
            str(tmp_path / "tte"),
        ],
    )
    res = runner.invoke(
        main,
        [
            "evaluate",
            "realism",
            "--real",
            str(tmp_path / "gen"),
            "--frames",
            str(tmp_path / "tte"),
            "--segmenter",
            str(seg_dir),
        ],
    )
    error_line(res, "schema 'tte'", "'tee'")
