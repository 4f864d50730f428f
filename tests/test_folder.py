"""Folder reader: layouts, schema resolution, and one clear error per kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tte2tee_fast.data.folder import FolderSource, find_pairs, resolve_schema
from tte2tee_fast.data.schemas import TEE, TTE
from tte2tee_fast.errors import InputError


def _case(seed: int, shape=(24, 32), labels=(0, 1, 2, 3, 4, 5)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    mask = rng.choice(np.array(labels, np.uint8), size=shape)
    return image, mask


def write_folder(
    root: Path, n=3, schema="tee", shape=(24, 32)
) -> list[tuple[np.ndarray, np.ndarray]]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    cases = []
    for i in range(n):
        image, mask = _case(i, shape)
        Image.fromarray(image).save(root / "images" / f"case_{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"case_{i:03d}.png")
        cases.append((image, mask))
    if schema is not None:
        (root / "card.json").write_text(json.dumps({"schema": schema, "n": n}))
    return cases


def test_reads_pairs_in_order_with_schema_from_card(tmp_path):
    cases = write_folder(tmp_path)
    src = FolderSource(tmp_path)
    assert src.schema is TEE
    assert src.names == ["case_000", "case_001", "case_002"]
    for i, (image, mask) in enumerate(cases):
        got_image, got_mask = src.load(i)
        np.testing.assert_array_equal(got_image, image)
        np.testing.assert_array_equal(got_mask, mask)
        assert got_image.dtype == got_mask.dtype == np.uint8


def test_declared_schema_overrides_card(tmp_path):
    write_folder(tmp_path, schema="tte")
    assert resolve_schema(tmp_path, None) is TTE
    # the TEE masks hold value 5, which the card's tte schema lacks: loading fails, naming it
    with pytest.raises(InputError, match=r"case_000\.png: values \[5\] are not in schema 'tte'"):
        FolderSource(tmp_path).load(0)
    assert FolderSource(tmp_path, schema="tee").schema is TEE


def test_phantom_cases_round_trip(tmp_path):
    from tte2tee_fast.data.phantom import phantom_case

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    case = phantom_case("tte", size=64, seed=5)
    Image.fromarray(case.image).save(tmp_path / "images" / "a.png")
    Image.fromarray(case.mask).save(tmp_path / "masks" / "a.png")
    image, mask = FolderSource(tmp_path, schema="tte").load(0)
    np.testing.assert_array_equal(image, case.image)
    np.testing.assert_array_equal(mask, case.mask)


def test_flat_layout_and_mask_encodings(tmp_path):
    image, mask = _case(0, labels=(0, 1, 2))
    Image.fromarray(np.stack([image] * 3, -1)).save(tmp_path / "x.png")  # RGB image -> gray
    pal = Image.fromarray(mask, mode="L").convert("P")  # palette mask: indices are the labels
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "x_mask.png")
    deep = (image.astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "y.png")  # 16-bit image -> scaled to 8 bit
    Image.fromarray(np.stack([mask] * 3, -1)).save(tmp_path / "y_mask.png")  # gray-as-RGB mask
    src = FolderSource(tmp_path, schema="tte")
    assert src.names == ["x", "y"]
    for i in range(2):
        got_image, got_mask = src.load(i)
        np.testing.assert_array_equal(got_image, image)
        np.testing.assert_array_equal(got_mask, mask)


def test_value_map_relabels_into_the_schema(tmp_path):
    write_folder(tmp_path, n=1, schema=None)
    _, mask = _case(0)
    vmap = {0: "outside", 1: "background", 2: "lv", 3: "la", 4: "rv", 5: "ra"}
    _, got = FolderSource(tmp_path, schema="tee", value_map=vmap).load(0)
    expected = np.array([0, 1, 3, 2, 5, 4], np.uint8)[mask]
    np.testing.assert_array_equal(got, expected)


def test_missing_folder_and_no_pairs(tmp_path):
    with pytest.raises(InputError, match="data folder not found"):
        find_pairs(tmp_path / "nope")
    with pytest.raises(InputError, match="no image/mask pairs found"):
        find_pairs(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(InputError, match=r"masks: folder not found"):
        find_pairs(tmp_path)


def test_image_without_mask_and_mask_without_image(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "masks" / "case_001.png").unlink()
    with pytest.raises(InputError, match=r"images/case_001\.png: image without mask"):
        find_pairs(tmp_path)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "masks" / "case_001.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "masks" / "extra.png")
    with pytest.raises(InputError, match=r"masks/extra\.png: mask without image"):
        find_pairs(tmp_path)


def test_size_mismatch_names_file_and_both_shapes(tmp_path):
    write_folder(tmp_path)
    Image.fromarray(np.zeros((24, 30), np.uint8)).save(tmp_path / "masks" / "case_002.png")
    src = FolderSource(tmp_path)
    with pytest.raises(InputError, match=r"case_002\.png: mask size 24x30 differs .* size 24x32"):
        src.load(2)


def test_corrupt_files_are_named(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "images" / "case_001.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (tmp_path / "masks" / "case_002.png").write_bytes(b"")
    src = FolderSource(tmp_path)
    with pytest.raises(InputError, match=r"images/case_001\.png: cannot read image"):
        src.load(1)
    with pytest.raises(InputError, match=r"masks/case_002\.png: cannot read image"):
        src.load(2)


def test_colour_mask_is_refused(tmp_path):
    write_folder(tmp_path, n=1)
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "masks" / "case_000.png")
    with pytest.raises(InputError, match=r"case_000\.png: mask is a colour image"):
        FolderSource(tmp_path).load(0)


def test_schema_errors(tmp_path):
    write_folder(tmp_path, schema=None)
    with pytest.raises(InputError, match="no label schema declared"):
        FolderSource(tmp_path)
    with pytest.raises(InputError, match="unknown label schema 'mri'"):
        FolderSource(tmp_path, schema="mri")
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(InputError, match=r"card\.json: cannot read dataset card"):
        FolderSource(tmp_path)
