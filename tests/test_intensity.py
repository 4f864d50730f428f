import numpy as np

from tte2tee_fast.data.schemas import TTE
from tte2tee_fast.evaluate.intensity import (
    compare_regions,
    outside_std,
    region_means,
    worst_region,
)


def test_region_means_match_pixel_loop():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 5, size=(3, 9, 11))
    masks[masks == 4] = 3  # label 4 (la) absent
    images = rng.integers(0, 256, size=masks.shape).astype(np.uint8)
    got = region_means(images, masks, TTE)
    for name, value in zip(TTE.names, TTE.values, strict=True):
        vals = [
            float(images[n, i, j])
            for n in range(3)
            for i in range(9)
            for j in range(11)
            if masks[n, i, j] == value
        ]
        if vals:
            assert abs(got[name] - sum(vals) / len(vals)) < 1e-9
        else:
            assert np.isnan(got[name])


def test_outside_std_and_compare():
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    masks[:, 1:3, 1:3] = 2
    flat = np.where(masks == 0, 0, 100).astype(np.uint8)
    assert outside_std(flat, masks) == 0.0
    noisy = flat.copy()
    noisy[0, 0, 0] = 30
    assert outside_std(noisy, masks) > 0
    cmp = compare_regions(flat * 1.1, flat, masks, TTE)
    assert abs(cmp["background"]["rel_diff"] - 0.1) < 1e-9
    assert cmp["outside"]["rel_diff"] == 0.0


def test_worst_region_leaves_the_outside_out():
    masks = np.zeros((1, 4, 4), dtype=np.uint8)
    masks[:, 1:3, 1:3] = 2  # background
    masks[:, 1, 1] = 1  # LV cavity
    masks[:, 1, 2], masks[:, 2, 1] = 3, 4  # myocardium, LA: every structure present
    ref = np.where(masks == 0, 0, 100).astype(np.float64)
    gen = ref.copy()
    gen[masks == 0] = 50  # outside 50 against 0: rel_diff 50, not a structure
    gen[masks == 1] = 120  # LV 20 % off
    cmp = compare_regions(gen, ref, masks, TTE)
    assert cmp["outside"]["rel_diff"] == 50.0
    assert abs(worst_region(cmp) - 0.2) < 1e-9
