"""Contact sheet: overlay colours against a float64 blend, layout, legend, atomic PNG writing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tte2tee_fast.data.preview import contact_sheet, overlay, save_contact_sheet, save_png
from tte2tee_fast.data.schemas import TEE, TTE
from tte2tee_fast.errors import InputError


def _case(seed: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size), dtype=np.uint8)
    mask = np.full((size, size), 2, dtype=np.uint8)  # tte background
    mask[:, :4] = 0
    mask[10:30, 10:25] = 1
    mask[30:40, 10:25] = 4
    mask[8:10, 10:25] = 3
    return image, mask


def test_overlay_blends_structures_only():
    image, mask = _case(0)
    out = overlay(image, mask, TTE, alpha=0.4)
    assert out.shape == (*image.shape, 3) and out.dtype == np.uint8
    # outside and background: the gray image unchanged in all three channels
    plain = np.isin(mask, [0, 2])
    np.testing.assert_array_equal(out[plain], np.repeat(image[plain][:, None], 3, axis=1))
    # structure interiors: float64 alpha blend with the schema colour
    interior = np.zeros_like(mask, dtype=bool)
    interior[12:28, 12:23] = True
    ref = 0.6 * image[interior][:, None].astype(np.float64) + 0.4 * np.array(TTE.colors[1])
    assert np.abs(out[interior].astype(float) - ref).max() <= 1.0
    # outline pixels carry the pure schema colour
    assert (out[29, 12] == TTE.colors[1]).all()


def test_overlay_rejects_values_outside_schema():
    image, mask = _case(1)
    mask[0, 0] = 9
    with pytest.raises(InputError, match=r"values \[9\] are not in schema 'tte'"):
        overlay(image, mask, TTE)


def test_contact_sheet_layout_and_legend():
    cases = [_case(s) for s in range(3)]
    images, masks = zip(*cases, strict=True)
    sheet = contact_sheet(images, masks, TTE, columns=2)
    h = w = 48
    tile = 2 * w + 4
    assert sheet.shape == (2 * h + 4 + 22, 2 * tile + 4, 3)
    # case 2 sits in row 1, column 0: gray image then overlay
    np.testing.assert_array_equal(sheet[h + 4 : 2 * h + 4, :w, 1], images[2])
    np.testing.assert_array_equal(
        sheet[h + 4 : 2 * h + 4, w + 4 : tile], overlay(images[2], masks[2], TTE)
    )
    # empty slot stays black; the legend strip shows each structure colour
    assert sheet[h + 4 : 2 * h + 4, tile + 4 :].max() == 0
    legend = sheet[-22:].reshape(-1, 3)
    for name, colour in zip(TTE.names, TTE.colors, strict=True):
        if name not in ("outside", "background"):
            assert (legend == colour).all(axis=1).any(), name
    no_legend = contact_sheet(images, masks, TTE, columns=3, legend=False)
    assert no_legend.shape == (h, 3 * tile + 2 * 4, 3)


def test_contact_sheet_input_errors():
    image, mask = _case(0)
    with pytest.raises(InputError, match="as many masks as images"):
        contact_sheet([image], [], TEE)
    with pytest.raises(InputError, match=r"case 1: image \(40, 40\)"):
        contact_sheet([image, image[:40, :40]], [mask, mask[:40, :40]], TTE)


def test_save_png_atomic_deterministic_round_trip(tmp_path):
    cases = [_case(s) for s in range(2)]
    images, masks = zip(*cases, strict=True)
    a = save_contact_sheet(tmp_path / "a" / "sheet.png", images, masks, TTE)
    b = save_contact_sheet(tmp_path / "b.png", images, masks, TTE)
    assert a.read_bytes() == b.read_bytes()
    np.testing.assert_array_equal(np.asarray(Image.open(a)), contact_sheet(images, masks, TTE))
    save_png(tmp_path / "m.png", masks[0])
    back = np.asarray(Image.open(tmp_path / "m.png"))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, masks[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.png", "m.png"]  # no temp files
