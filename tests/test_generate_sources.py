"""Mask sources: the phantom per frame, folders of masks alone, the resize rule, the check that
lists every bad file at once, and the whole run refusing bad masks before any frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_generate_fakes import FakeFrameFn, fake_config

from tte2tee_fast.data.phantom import case_seed, phantom_case
from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.distribute import Split
from tte2tee_fast.generate.run import DatasetConfig, generate_dataset
from tte2tee_fast.generate.sources import MaskCheckError, check_masks, fit_mask, open_mask_source


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def test_phantom_mask_of_frame_i_is_the_shape_model_case_of_case_seed():
    src = open_mask_source("phantom:tte:a2c", size=64, seed=3)
    mask, mask_id = src.mask(5)
    expected = phantom_case("tte", "a2c", 64, seed=case_seed(3, 5)).mask
    np.testing.assert_array_equal(mask, expected)
    assert mask_id == "phantom:tte:a2c#5" and src.schema.name == "tte" and src.count is None
    # new anatomy per frame
    assert not np.array_equal(mask, src.mask(6)[0])


def test_phantom_augment_is_per_frame_deterministic_and_keeps_labels():
    plain = open_mask_source("phantom:tee", size=64, seed=0)
    aug = open_mask_source("phantom:tee", size=64, seed=0, augment=True)
    a, b = aug.mask(2)[0], aug.mask(2)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, plain.mask(2)[0])
    assert set(np.unique(a)) <= set(np.unique(plain.mask(2)[0])) | {0}


@pytest.mark.parametrize("shape", [(20, 40), (40, 20), (33, 33), (7, 100), (200, 150)])
def test_fit_mask_keeps_aspect_pads_with_outside_and_never_invents_values(shape):
    rng = np.random.default_rng(sum(shape))
    mask = rng.choice(np.array([1, 3, 5], np.uint8), size=shape)
    out = fit_mask(mask, 32, fill=0)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 1, 3, 5}
    # the non-padded block is a nearest-neighbour resampling, reference: PIL NEAREST
    h, w = shape
    scale = 32 / max(h, w)
    oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (32 - oh) // 2, (32 - ow) // 2
    ref = np.asarray(Image.fromarray(mask).resize((ow, oh), Image.NEAREST))
    block = out[top : top + oh, left : left + ow]
    np.testing.assert_array_equal(block, ref)
    pad = np.ones((32, 32), bool)
    pad[top : top + oh, left : left + ow] = False
    assert (out[pad] == 0).all()


def test_mask_folder_alone_with_value_map_and_frame_i_uses_mask_i_mod_m(tmp_path):
    root = tmp_path / "masks_only"
    rng = np.random.default_rng(0)
    stored = [rng.choice(np.array([10, 20, 30], np.uint8), size=(48, 64)) for _ in range(3)]
    for k, m in enumerate(stored):
        _png(root / f"m{k}.png", m)
    vmap = {"10": "outside", "20": "la", "30": "rv"}
    src = open_mask_source(str(root), size=32, schema="tee", value_map=vmap)
    assert src.count == 3 and src.schema.name == "tee"
    mask, mask_id = src.mask(4)  # 4 mod 3 = 1
    assert mask_id == "m1.png"
    lut = np.zeros(256, np.uint8)
    lut[[10, 20, 30]] = [0, 2, 5]
    np.testing.assert_array_equal(mask, fit_mask(lut[stored[1]], 32, fill=0))


def test_every_bad_mask_is_listed_at_once(tmp_path):
    root = tmp_path / "bad"
    _png(root / "masks" / "a.png", np.full((8, 8), 1))
    _png(root / "masks" / "b.png", np.full((8, 8), 9))  # 9 is not a tee value
    (root / "masks" / "c.png").write_bytes(b"not a png")
    _png(root / "masks" / "d.png", np.array([[0, 7], [8, 2]]))
    src = open_mask_source(str(root), size=32, schema="tee")
    with pytest.raises(MaskCheckError) as info:
        check_masks(src)
    problems = info.value.problems
    assert len(problems) == 3
    assert "b.png: values [9]" in problems[0] and "c.png" in problems[1]
    assert "d.png: values [7, 8]" in problems[2]
    assert "3 of 4 masks" in str(info.value)


def test_a_run_with_bad_masks_generates_nothing_and_writes_nothing(tmp_path):
    root = tmp_path / "bad"
    _png(root / "x.png", np.full((8, 8), 6))
    fn = FakeFrameFn(size=32)
    with pytest.raises(MaskCheckError):
        generate_dataset(
            tmp_path / "out",
            DatasetConfig(masks=str(root), schema="tee"),
            fake_config(),
            frame_fn=fn,
            split=Split(0, 1, "t"),
            progress=False,
        )
    assert fn.calls == [] and not (tmp_path / "out").exists()


def test_folder_masks_generate_and_fingerprint_changes_with_content(tmp_path):
    root = tmp_path / "m"
    for k in range(2):
        _png(root / f"m{k}.png", np.full((16, 16), k + 1))
    (root / "card.json").write_text(json.dumps({"schema": "tee"}))
    fp = check_masks(open_mask_source(str(root), size=32))
    kw = {"split": Split(0, 1, "t"), "progress": False}
    report = generate_dataset(
        tmp_path / "o",
        DatasetConfig(masks=str(root), n=5),
        fake_config(),
        frame_fn=FakeFrameFn(size=32),
        **kw,
    )
    assert report.complete
    _png(root / "m1.png", np.full((16, 16), 3))
    assert check_masks(open_mask_source(str(root), size=32)) != fp
    with pytest.raises(InputError, match="masks_sha256"):
        generate_dataset(
            tmp_path / "o",
            DatasetConfig(masks=str(root), n=5),
            fake_config(),
            frame_fn=FakeFrameFn(size=32),
            **kw,
        )


def test_schema_mismatch_and_bad_source_names_are_one_line_errors(tmp_path):
    kw = {"split": Split(0, 1, "t"), "progress": False}
    with pytest.raises(InputError, match=r"'tte' schema but the model .* takes 'tee' masks"):
        generate_dataset(
            tmp_path / "o",
            DatasetConfig(masks="phantom:tte"),
            fake_config(),
            frame_fn=FakeFrameFn(size=32),
            **kw,
        )
    for bad in ("phantom:", "phantom:tee:a4c", "phantom:mri", str(tmp_path / "nope")):
        with pytest.raises(InputError):
            open_mask_source(bad, size=32)
