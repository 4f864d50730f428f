"""Phantom anatomy: schema values, determinism, variation, cone, anatomy layout, echogenicity."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from tte2tee_fast.data import phantom as P
from tte2tee_fast.data.phantom import VIEWS, PhantomCase, case_seed, phantom_case
from tte2tee_fast.data.schemas import TEE, TTE
from tte2tee_fast.errors import InputError

ALL_VIEWS = [(m, v) for m, vs in VIEWS.items() for v in vs]


def _centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([rows.mean(), cols.mean()])


def _independent_cone(params: dict, size: int) -> np.ndarray:
    """The scan sector recomputed in float64 from the case parameters."""
    c = (np.arange(size) + 0.5) / size
    dx, dy = c[None, :] - 0.5, c[:, None] - 0.0
    sec = params["sector"]
    half = math.radians(sec["half_angle_deg"])
    return (np.hypot(dx, dy) <= sec["depth"]) & (np.abs(np.arctan2(dx, dy)) <= half)


def test_views_contract_and_default_view():
    assert VIEWS == {"tte": ("a4c", "a2c"), "tee": ("me4c",)}
    case = phantom_case(modality="tee", view=None, size=64, seed=0)
    assert isinstance(case, PhantomCase)
    assert case.view == "me4c" and case.schema is TEE
    assert case.image.dtype == np.uint8 and case.mask.dtype == np.uint8
    assert case.image.shape == case.mask.shape == (64, 64)
    assert phantom_case("tte", size=64, seed=0).view == "a4c"
    json.dumps(case.params)  # JSON-serialisable


@pytest.mark.parametrize(("modality", "view"), ALL_VIEWS)
def test_masks_in_schema_and_all_structures_present(modality, view):
    schema = TTE if modality == "tte" else TEE
    expected = {
        "a4c": {0, 1, 2, 3, 4},
        "a2c": {0, 1, 2, 3, 4},
        "me4c": {0, 1, 2, 3, 4, 5},
    }[view]
    for seed in range(6):
        case = phantom_case(modality, view, 96, seed)
        schema.validate(case.mask, f"{view} seed {seed}")
        assert set(np.unique(case.mask).tolist()) == expected


@pytest.mark.parametrize(("modality", "view"), ALL_VIEWS)
def test_same_seed_same_case_and_case_seed_is_stable(modality, view):
    a = phantom_case(modality, view, 80, 1234)
    b = phantom_case(modality, view, 80, 1234)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert json.dumps(a.params) == json.dumps(b.params)
    # case seeds depend on (base seed, index) only, and differ between indices and bases
    seeds = [case_seed(7, i) for i in range(50)]
    assert len(set(seeds)) == 50
    assert seeds[:10] == [case_seed(7, i) for i in range(10)]
    assert case_seed(8, 0) != case_seed(7, 0)


@pytest.mark.parametrize(("modality", "view"), ALL_VIEWS)
def test_different_seeds_give_different_anatomy(modality, view):
    masks = [phantom_case(modality, view, 128, s).mask for s in range(6)]
    lv = 1 if modality == "tte" else 3
    areas = np.array([(m == lv).sum() for m in masks], dtype=float)
    assert areas.std() / areas.mean() > 0.05  # chamber size varies like a shape model mode
    for i in range(len(masks) - 1):
        a, b = masks[i] == lv, masks[i + 1] == lv
        iou = (a & b).sum() / (a | b).sum()
        assert iou < 0.95, f"seeds {i} and {i + 1}: LV IoU {iou:.3f}"
        assert (masks[i] != masks[i + 1]).mean() > 0.02


@pytest.mark.parametrize("size", [64, 512])
def test_extreme_sizes(size):
    for modality in VIEWS:
        case = phantom_case(modality, None, size, 3)
        assert case.image.shape == case.mask.shape == (size, size)
        assert (case.mask > 0).mean() > 0.3


@pytest.mark.parametrize(("modality", "view"), ALL_VIEWS)
def test_cone_zero_outside_and_covers_structures(modality, view):
    for seed in range(4):
        case = phantom_case(modality, view, 128, seed)
        outside = case.mask == 0
        assert (case.image[outside] == 0).all()
        assert (case.image[~outside] >= 1).all()  # the cone is recoverable from the image
        # the mask's cone is the scan sector, recomputed independently
        cone = _independent_cone(case.params, 128)
        assert (cone != ~outside).mean() < 0.002
        # the chambers lie inside the cone: almost nothing of them is cut off
        free = P.tissue_map(case.params, 128, cone=False)
        chambers = np.isin(free, [P.LV_BLOOD, P.LA_BLOOD, P.RV_BLOOD, P.RA_BLOOD, P.LV_MYO])
        assert (chambers & ~cone).sum() <= 0.02 * chambers.sum()


def test_a4c_layout_apex_up_la_down_right_heart_is_background():
    for seed in range(5):
        case = phantom_case("tte", "a4c", 128, seed)
        m = case.mask
        lv, la = _centroid(m == 1), _centroid(m == 4)
        assert lv[0] < la[0]  # LV nearer the probe than the LA
        assert abs(lv[1] - 64) < 20  # LV along the sector axis
        # myocardium wraps the cavity, open only at the mitral valve towards the LA
        ring = ndimage.binary_dilation(m == 1, iterations=2) & (m != 1)
        assert np.isin(m[ring], [3, 4]).mean() > 0.97
        assert (m[ring] == 3).mean() > 0.7
        assert np.nonzero(m == 3)[0].min() < np.nonzero(m == 1)[0].min()  # wall above the apex
        assert (ndimage.binary_dilation(m == 4, iterations=2) & (m == 1)).any()
        # the right heart is drawn (dark blood pools left of the septum) but labelled background
        tissue = P.tissue_map(case.params, 128)
        rv = tissue == P.RV_BLOOD
        assert rv.sum() > 50 and (m[rv] == 2).all()
        assert _centroid(rv)[1] < lv[1]
        assert case.image[rv].mean() < case.image[m == 3].mean()


def test_me4c_layout_atria_near_probe_lv_right_rv_left():
    for seed in range(5):
        m = phantom_case("tee", "me4c", 128, seed).mask
        la, lv, ra, rv = (_centroid(m == k) for k in (2, 3, 4, 5))
        assert la[0] < lv[0] and ra[0] < rv[0]  # atria nearest the probe
        assert lv[1] > rv[1]  # LV on the image right, RV left
        assert ra[1] < la[1]  # RA beside the LA, on the left
        # septa: the LV and RV cavities never touch (myocardium between, labelled background)
        assert not (ndimage.binary_dilation(m == 3) & (m == 5)).any()
        assert not (ndimage.binary_dilation(m == 2) & (m == 4)).any()


def test_blood_darker_than_myocardium_tte():
    for view in ("a4c", "a2c"):
        for seed in range(4):
            case = phantom_case("tte", view, 128, seed)
            img, m = case.image.astype(float), case.mask
            myo = img[m == 3].mean()
            assert img[m == 1].mean() < 0.6 * myo, (view, seed)
            assert img[m == 4].mean() < 0.6 * myo, (view, seed)


def test_blood_darker_than_walls_tee():
    # no myocardium label in tee: compare each cavity with a ring just outside it (its wall)
    for seed in range(4):
        case = phantom_case("tee", "me4c", 128, seed)
        img, m = case.image.astype(float), case.mask
        for k in (3, 5):
            cav = ndimage.binary_erosion(m == k, iterations=2)
            ring = ndimage.binary_dilation(m == k, iterations=4) & (m == 1)
            assert img[cav].mean() < 0.6 * img[ring].mean(), (seed, k)


def test_bad_input_names_the_problem():
    with pytest.raises(InputError, match=r"view 'me4c' does not belong to modality 'tte'"):
        phantom_case("tte", "me4c")
    with pytest.raises(InputError, match=r"unknown modality 'mri'"):
        phantom_case("mri")
    with pytest.raises(InputError, match=r"size 63 is out of range; use 64\.\.512"):
        phantom_case("tte", size=63)
    with pytest.raises(InputError, match=r"size 513"):
        phantom_case("tee", size=513)
