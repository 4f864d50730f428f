"""CAMUS reader on synthetic patients written with SimpleITK (.mhd/.raw) and nibabel (.nii.gz)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from tte2tee_fast.data.camus import (
    CamusSource,
    derive_cone,
    find_cases,
    parse_value_map,
    read_case,
    to_tte,
)
from tte2tee_fast.data.schemas import TTE
from tte2tee_fast.errors import InputError

H, W = 120, 100  # non-square on purpose: a swapped axis cannot pass


def _sector(apex=(4.0, 49.5), radius=108.0, half_angle=40.0):
    """Analytic scan sector on pixel centres: within radius of the apex and the angle."""
    rows, cols = np.mgrid[0:H, 0:W].astype(float)
    dy, dx = rows - apex[0], cols - apex[1]
    angle = np.degrees(np.arctan2(np.abs(dx), dy))
    return (np.hypot(dy, dx) <= radius) & (dy >= 0) & (angle <= half_angle)


def _ellipse(cy, cx, ry, rx):
    rows, cols = np.mgrid[0:H, 0:W].astype(float)
    return ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0


def synthetic_case(seed=0):
    """(image uint8, raw CAMUS mask, expected tte mask) for a fan with known structures."""
    rng = np.random.default_rng(seed)
    sector = _sector()
    image = np.where(sector, rng.integers(20, 256, (H, W)), 0).astype(np.uint8)
    image[sector & (rng.random((H, W)) < 0.05)] = 0  # speckle drop-outs inside the fan
    lv, myo = _ellipse(45, 50, 22, 12), _ellipse(45, 50, 27, 17)
    la = _ellipse(100, 52, 12, 16)  # reaches below the fan's arc: stays labelled there
    image[lv] = 0  # a black blood pool: hole filling must keep it inside the cone
    raw = np.zeros((H, W), np.uint8)
    raw[myo] = 2
    raw[lv] = 1
    raw[la] = 3
    expected = np.where(sector, 2, 0).astype(np.uint8)
    expected[myo] = 3
    expected[lv] = 1
    expected[la] = 4
    assert (la & ~sector).any()  # the test really covers structures outside the cone
    return image, raw, expected


def _border_zone(sector, width=2):
    return ndimage.binary_dilation(sector, iterations=width) & ~ndimage.binary_erosion(
        sector, iterations=width
    )


def write_mhd(path: Path, arr: np.ndarray, three_d: bool = True) -> None:
    """The original release: NDims = 3 with depth 1, written by SimpleITK (+ .raw)."""
    img = sitk.GetImageFromArray(arr[None] if three_d else arr)
    img.SetSpacing((0.154, 0.308, 1.0) if three_d else (0.154, 0.308))
    sitk.WriteImage(img, str(path))


def write_nii(path: Path, arr: np.ndarray) -> None:
    """The NIfTI release: data stored x-fastest ([W, H] in nibabel's index order)."""
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr.T), np.diag([0.154, 0.308, 1.0, 1.0])), path)


def make_camus(root: Path, fmt: str, patients=(1, 2), views=("4CH", "2CH"), phases=("ED", "ES")):
    for p in patients:
        pdir = root / f"patient{p:04d}"
        pdir.mkdir(parents=True, exist_ok=True)
        for v in views:
            for ph in phases:
                image, raw, _ = synthetic_case(p)
                stem = pdir / f"patient{p:04d}_{v}_{ph}"
                if fmt == "mhd":
                    write_mhd(Path(f"{stem}.mhd"), image, three_d=p % 2 == 1)
                    write_mhd(Path(f"{stem}_gt.mhd"), raw, three_d=p % 2 == 1)
                else:
                    write_nii(Path(f"{stem}.nii.gz"), image)
                    write_nii(Path(f"{stem}_gt.nii.gz"), raw)
        # files the reader must ignore
        (pdir / f"Info_{views[0]}.cfg").write_text("ED: 1\nES: 10\n")
        write_nii(pdir / f"patient{p:04d}_{views[0]}_half_sequence.nii.gz", np.zeros((H, W)))
    return root


def test_derive_cone_matches_analytic_sector():
    image, _, _ = synthetic_case(3)
    cone, sector = derive_cone(image), _sector()
    wrong = cone != sector
    assert not (wrong & ~_border_zone(sector)).any()
    assert wrong.sum() < 0.02 * sector.sum()
    assert cone[_ellipse(45, 50, 22, 12)].all()  # the black blood pool is inside


@pytest.mark.parametrize("fmt", ["mhd", "nii"])
def test_reader_converts_to_expected_tte_mask(tmp_path, fmt):
    make_camus(tmp_path, fmt, patients=(1, 2))
    src = CamusSource(tmp_path, views=["4CH"], phases=["ED"])
    assert src.schema is TTE
    assert src.names == ["patient0001_4CH_ED", "patient0002_4CH_ED"]
    for i, seed in enumerate((1, 2)):
        image, mask = src.load(i)
        exp_image, _, expected = synthetic_case(seed)
        assert image.shape == mask.shape == (H, W)
        np.testing.assert_array_equal(image, exp_image)  # upright, no transpose or flip
        wrong = mask != expected
        assert not (wrong & ~_border_zone(_sector())).any()
        assert wrong.sum() < 0.02 * _sector().sum()
        structures = np.isin(expected, (1, 3, 4))
        np.testing.assert_array_equal(mask[structures], expected[structures])


def test_both_formats_give_identical_results(tmp_path):
    a = CamusSource(make_camus(tmp_path / "a", "mhd", patients=(1,)), views=["2CH"])
    b = CamusSource(make_camus(tmp_path / "b", "nii", patients=(1,)), views=["2CH"])
    assert a.names == b.names == ["patient0001_2CH_ED", "patient0001_2CH_ES"]
    for i in range(len(a)):
        for x, y in zip(a.load(i), b.load(i), strict=True):
            np.testing.assert_array_equal(x, y)


def test_selection_by_view_phase_and_patient(tmp_path):
    make_camus(tmp_path, "nii", patients=(1, 2, 3))
    assert len(find_cases(tmp_path)) == 12
    assert len(find_cases(tmp_path, views=["4ch"], phases=["ES"])) == 3
    assert len(find_cases(tmp_path, views="2CH", phases="ED", patients=2)) == 1
    cases = find_cases(tmp_path, patients=["patient0002", 3])
    assert {c.patient for c in cases} == {"patient0002", "patient0003"}
    assert len(find_cases(tmp_path / "patient0001")) == 4  # one patient folder works too
    with pytest.raises(InputError, match=r"patient0009"):
        find_cases(tmp_path, patients=[9])
    with pytest.raises(InputError, match="3CH"):
        find_cases(tmp_path, views=["3CH"])


def test_declared_value_map_for_camus_derived_variant():
    _, _, expected = synthetic_case(4)
    # the common variant: 0 outside, 1 background, 2 LV, 3 myocardium, 4 LA
    variant_of_tte = {0: 0, 2: 1, 1: 2, 3: 3, 4: 4}
    variant = np.vectorize(variant_of_tte.get)(expected).astype(np.uint8)
    vmap = parse_value_map(
        {"0": "outside", "1": "background", "2": "lv_cavity", "3": "lv_myocardium", "4": "la"}
    )
    # the map names "outside", so no cone is derived: a blank image is fine
    np.testing.assert_array_equal(to_tte(np.zeros((H, W)), variant, vmap), expected)


def test_value_map_errors_name_the_problem():
    with pytest.raises(InputError, match="lv_wall"):
        parse_value_map({0: "outside", 1: "lv_wall"})
    with pytest.raises(InputError, match="not an integer"):
        parse_value_map({"a": "outside"})
    image, raw, _ = synthetic_case(0)
    raw[0, 0] = 7
    with pytest.raises(InputError, match=r"case\.mhd: values \[7\]"):
        to_tte(image, raw, source="case.mhd")


def test_missing_ground_truth_names_the_image(tmp_path):
    make_camus(tmp_path, "mhd", patients=(1,), views=("4CH",), phases=("ED",))
    (tmp_path / "patient0001" / "patient0001_4CH_ED_gt.mhd").unlink()
    with pytest.raises(InputError, match=r"patient0001_4CH_ED\.mhd: image without ground truth"):
        find_cases(tmp_path)


def test_corrupt_and_truncated_files_are_named(tmp_path):
    make_camus(tmp_path, "mhd", patients=(1,), views=("4CH",), phases=("ED", "ES"))
    pdir = tmp_path / "patient0001"
    (pdir / "patient0001_4CH_ED.raw").write_bytes(b"\x00" * 10)  # truncated pixel data
    (pdir / "patient0001_4CH_ES_gt.raw").unlink()
    cases = find_cases(tmp_path)
    with pytest.raises(InputError, match=r"patient0001_4CH_ED\.mhd: cannot read image"):
        read_case(cases[0])
    with pytest.raises(InputError, match=r"patient0001_4CH_ES_gt\.mhd: its data file .*_gt\.raw"):
        read_case(cases[1])


def test_shape_mismatch_and_empty_folder(tmp_path):
    make_camus(tmp_path, "nii", patients=(1,), views=("4CH",), phases=("ED",))
    gt = tmp_path / "patient0001" / "patient0001_4CH_ED_gt.nii.gz"
    write_nii(gt, np.zeros((H, W - 1), np.uint8))
    with pytest.raises(
        InputError, match=r"_gt\.nii\.gz: mask shape \(120, 99\) differs .*\(120, 100\)"
    ):
        read_case(find_cases(tmp_path)[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no CAMUS frames"):
        find_cases(tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        find_cases(tmp_path / "nope")


def test_blank_image_cannot_give_a_cone():
    with pytest.raises(InputError, match="scan cone"):
        derive_cone(np.zeros((8, 8)), source="blank.mhd")


def test_convex_hull_fill_matches_delaunay():
    from scipy.spatial import Delaunay

    from tte2tee_fast.data.camus import _convex_hull_fill

    rng = np.random.default_rng(0)
    region = np.zeros((60, 70), bool)
    pts = rng.integers([5, 5], [55, 65], size=(12, 2))
    region[pts[:, 0], pts[:, 1]] = True
    grid = np.argwhere(np.ones_like(region)).astype(float)
    ref = (Delaunay(pts).find_simplex(grid, tol=1e-9) >= 0).reshape(region.shape)
    np.testing.assert_array_equal(_convex_hull_fill(region), ref)
