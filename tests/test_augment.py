"""Augmentation: identity, affine against PIL/scipy/explicit trigonometry, labels, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tte2tee_fast.data.augment import (
    REFERENCE_SIZE,
    AugmentConfig,
    AugmentParams,
    affine_matrix,
    augment_pair,
    coordinate_map,
    displacement_field,
    sample_params,
    warp_image,
    warp_mask,
)


def _smooth_image(shape, seed=0):
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape) * 255.0, 2.0)
    return ((img - img.min()) / np.ptp(img) * 255.0).astype(np.uint8)


def _blob_mask(shape, seed=0):
    """A label map 0..4 of nested ellipses with random centres."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros(shape, np.uint8)
    for label in (2, 3, 1, 4):
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        ry, rx = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = label
    return mask


def _inside_source(coords, shape, margin=1.0):
    h, w = shape
    return (
        (coords[0] >= margin)
        & (coords[0] <= h - 1 - margin)
        & (coords[1] >= margin)
        & (coords[1] <= w - 1 - margin)
    )


def test_identity_params_are_identity():
    img, mask = _smooth_image((37, 53)), _blob_mask((37, 53))
    coords = coordinate_map(AugmentParams(), img.shape)
    rows, cols = np.mgrid[0:37, 0:53]
    np.testing.assert_array_equal(coords, np.stack([rows, cols]).astype(float))
    np.testing.assert_array_equal(warp_image(img, coords), img.astype(np.float32))
    np.testing.assert_array_equal(warp_mask(mask, coords), mask)
    zero_elastic = AugmentParams(elastic=np.zeros((2, 10, 10)))
    np.testing.assert_array_equal(warp_mask(mask, coordinate_map(zero_elastic, mask.shape)), mask)


@pytest.mark.parametrize("quarter", [1, 2, 3])
def test_right_angle_rotation_matches_rot90(quarter):
    img, mask = _smooth_image((41, 41)), _blob_mask((41, 41))
    coords = coordinate_map(AugmentParams(angle_deg=90.0 * quarter), img.shape)
    np.testing.assert_allclose(warp_image(img, coords), np.rot90(img, quarter), atol=1e-6)
    np.testing.assert_array_equal(warp_mask(mask, coords), np.rot90(mask, quarter))


@pytest.mark.parametrize(
    ("angle", "shift"), [(17.0, (5.0, -3.0)), (-4.0, (0.0, 2.5)), (33.0, (0, 0))]
)
def test_rotation_translation_matches_pil(angle, shift):
    """PIL's rotate (centre w/2, h/2 in its half-pixel convention, post-rotate translate)."""
    img, mask = _smooth_image((64, 80), 1), _blob_mask((64, 80), 1)
    coords = coordinate_map(AugmentParams(angle_deg=angle, translate=shift), img.shape)
    inside = _inside_source(coords, img.shape)
    pil_img = Image.fromarray(img).rotate(angle, resample=Image.BILINEAR, translate=shift)
    pil_mask = Image.fromarray(mask).rotate(angle, resample=Image.NEAREST, translate=shift)
    ours = warp_image(img, coords)
    assert np.abs(ours - np.asarray(pil_img, float))[inside].max() <= 1.5  # PIL rounds to uint8
    agree = (warp_mask(mask, coords) == np.asarray(pil_mask))[inside].mean()
    assert agree > 0.999


def _forward_point(row, col, shape, angle, shift, scale, shear):
    """Explicit trigonometry: scale, x-shear, counter-clockwise rotation, then shift."""
    h, w = shape
    x, y = col - (w - 1) / 2, row - (h - 1) / 2
    x, y = scale * x, scale * y
    x = x + math.tan(math.radians(shear)) * y
    a = math.radians(angle)
    # counter-clockwise on screen with y pointing down: (1, 0) -> (cos a, -sin a)
    x, y = math.cos(a) * x + math.sin(a) * y, -math.sin(a) * x + math.cos(a) * y
    return y + (h - 1) / 2 + shift[1], x + (w - 1) / 2 + shift[0]


def test_full_affine_moves_blob_centroid_as_explicit_formula():
    shape = (96, 112)
    angle, shift, scale, shear = 4.0, (3.5, -2.0), 0.9, 5.0
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    p = (40.0, 70.0)
    blob = np.exp(-((rows - p[0]) ** 2 + (cols - p[1]) ** 2) / (2 * 3.0**2))
    params = AugmentParams(angle, shift, scale, shear)
    out = warp_image(blob, coordinate_map(params, shape))
    centroid = ndimage.center_of_mass(out)
    expected = _forward_point(*p, shape, angle, shift, scale, shear)
    assert np.allclose(centroid, expected, atol=0.1), (centroid, expected)
    # The matrix itself maps the point the same way.
    m = affine_matrix(params, shape)
    np.testing.assert_allclose((m @ [p[0], p[1], 1.0])[:2], expected, atol=1e-9)


def test_affine_warp_equals_scipy_affine_transform():
    img = _smooth_image((50, 60), 2).astype(np.float64)
    params = AugmentParams(-3.0, (2.0, 1.5), 1.04, -4.0)
    inv = np.linalg.inv(affine_matrix(params, img.shape))
    ref = ndimage.affine_transform(
        img, inv[:2, :2], offset=inv[:2, 2], order=1, mode="grid-constant", cval=0.0
    )
    np.testing.assert_allclose(warp_image(img, coordinate_map(params, img.shape)), ref, atol=1e-3)


def test_mask_labels_are_preserved():
    mask = _blob_mask((128, 128), 3)
    rng = np.random.default_rng(7)
    for _ in range(5):
        _, out = augment_pair(None, mask, rng)
        assert set(np.unique(out)) <= set(np.unique(mask))
        assert out.dtype == mask.dtype
    # A mask without 0: only the fill label can be added, where the map leaves the frame.
    no_zero = mask + 1
    _, out = augment_pair(None, no_zero, np.random.default_rng(1), fill_label=0)
    assert set(np.unique(out)) <= set(np.unique(no_zero)) | {0}


def test_augment_is_deterministic_from_seed():
    img, mask = _smooth_image((64, 64)), _blob_mask((64, 64))
    a = augment_pair(img, mask, np.random.default_rng(123))
    b = augment_pair(img, mask, np.random.default_rng(123))
    c = augment_pair(img, mask, np.random.default_rng(124))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_image_and_mask_share_one_coordinate_map():
    """An image equal to the mask (as floats) warps to the mask wherever nearest == bilinear."""
    mask = _blob_mask((64, 64), 4)
    img, out = augment_pair(mask.astype(np.float32), mask, np.random.default_rng(5))
    flat = ndimage.minimum_filter(mask, 3) == ndimage.maximum_filter(mask, 3)  # away from edges
    coords = coordinate_map(sample_params(np.random.default_rng(5), mask.shape), mask.shape)
    src_flat = ndimage.map_coordinates(flat.astype(float), coords, order=1) > 0.999
    assert src_flat.mean() > 0.5
    np.testing.assert_allclose(img[src_flat], out[src_flat], atol=1e-4)


@pytest.mark.parametrize("size", [128, 256])
def test_elastic_displacement_is_bounded_and_scales_with_size(size):
    cfg = AugmentConfig(affine=False)
    limit = cfg.elastic_px * size / REFERENCE_SIZE
    rng = np.random.default_rng(size)
    peak = 0.0
    for _ in range(4):
        params = sample_params(rng, (size, size), cfg)
        assert params.elastic.shape == (2, 10, 10)
        assert np.abs(params.elastic).max() <= limit
        field = displacement_field(params, (size, size))  # [2, H, W]
        assert np.abs(field).max() <= limit + 1e-9
        peak = max(peak, np.abs(field).max())
        # smooth: neighbouring pixels move by much less than a control spacing allows
        assert np.abs(np.diff(field, axis=1)).max() < limit / (size / 9) * 4
        # with affine off, the coordinate map is exactly identity + field
        rows, cols = np.mgrid[0:size, 0:size]
        np.testing.assert_allclose(
            coordinate_map(params, (size, size)), np.stack([rows, cols]) + field, atol=1e-9
        )
    assert peak > 0.3 * limit  # the deformation is not vanishingly small


def test_sampled_affine_parameters_stay_in_range():
    cfg = AugmentConfig()
    rng = np.random.default_rng(0)
    draws = [sample_params(rng, (200, 100), cfg) for _ in range(200)]
    assert all(abs(d.angle_deg) <= 5 and abs(d.shear_deg) <= 5 for d in draws)
    assert all(0.8 <= d.scale <= 1.05 for d in draws)
    assert all(abs(d.translate[0]) <= 5 and abs(d.translate[1]) <= 10 for d in draws)
    assert max(abs(d.angle_deg) for d in draws) > 4  # the range is actually used


def test_config_rejects_bad_ranges():
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(1.1, 0.9))
    with pytest.raises(ValueError, match="elastic_points"):
        AugmentConfig(elastic_points=1)
