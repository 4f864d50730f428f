"""Dataset writer: layout, card, byte-identical reruns, case i independent of n, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tte2tee_fast import __version__
from tte2tee_fast.data.pairs import write_pairs
from tte2tee_fast.data.phantom import case_seed, phantom_case
from tte2tee_fast.data.schemas import TEE
from tte2tee_fast.errors import InputError


def _files(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_card_and_contents(tmp_path):
    out = write_pairs(tmp_path / "ds", "tee", None, n=3, size=64, seed=5, progress=False)
    stems = sorted(p.stem for p in (out / "images").iterdir())
    assert stems == ["case_00000", "case_00001", "case_00002"]
    assert stems == sorted(p.stem for p in (out / "masks").iterdir())
    card = json.loads((out / "card.json").read_text())
    assert {k: card[k] for k in ("schema", "modality", "view", "size", "seed", "n")} == {
        "schema": "tee", "modality": "tee", "view": "me4c", "size": 64, "seed": 5, "n": 3,
    }  # fmt: skip
    assert card["generator"] == f"tte2tee-fast phantom {__version__}"
    for i, entry in enumerate(card["cases"]):
        assert entry["name"] == f"case_{i:05d}" and entry["seed"] == case_seed(5, i)
        case = phantom_case("tee", "me4c", 64, entry["seed"])
        image = np.asarray(Image.open(out / "images" / f"{entry['name']}.png"))
        mask = np.asarray(Image.open(out / "masks" / f"{entry['name']}.png"))
        assert image.dtype == mask.dtype == np.uint8 and image.ndim == mask.ndim == 2
        np.testing.assert_array_equal(image, case.image)
        np.testing.assert_array_equal(mask, case.mask)
        TEE.validate(mask)
        assert entry["params"] == json.loads(json.dumps(case.params))
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_same_seed_byte_identical(tmp_path):
    a = write_pairs(tmp_path / "a", "tte", "a4c", n=3, size=64, seed=1, progress=False)
    b = write_pairs(tmp_path / "b", "tte", "a4c", n=3, size=64, seed=1, progress=False)
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys() and len(fa) == 7
    assert all(fa[k] == fb[k] for k in fa)
    c = write_pairs(tmp_path / "c", "tte", "a4c", n=3, size=64, seed=2, progress=False)
    fc = _files(c)
    assert fc["masks/case_00000.png"] != fa["masks/case_00000.png"]


def test_case_i_independent_of_n(tmp_path):
    few = _files(write_pairs(tmp_path / "few", "tte", "a2c", n=2, size=64, seed=9, progress=False))
    many = _files(
        write_pairs(tmp_path / "many", "tte", "a2c", n=4, size=64, seed=9, progress=False)
    )
    for name in ("images/case_00000.png", "images/case_00001.png", "masks/case_00001.png"):
        assert few[name] == many[name]


def test_preview_written(tmp_path):
    write_pairs(
        tmp_path / "ds", "tee", n=3, size=64, seed=0, preview=tmp_path / "p.png", preview_n=2,
        progress=False,
    )  # fmt: skip
    sheet = np.asarray(Image.open(tmp_path / "p.png"))
    assert sheet.ndim == 3 and sheet.shape[1] == 2 * 64 + 4  # 2 cases, 1 per row
    assert sheet.shape[0] == 2 * 64 + 4 + 22


def test_bad_input_leaves_nothing(tmp_path):
    with pytest.raises(InputError, match=r"view 'a4c' does not belong to modality 'tee'"):
        write_pairs(tmp_path / "x", "tee", "a4c", n=1, size=64)
    with pytest.raises(InputError, match="n must be at least 1"):
        write_pairs(tmp_path / "x", "tte", None, n=0, size=64)
    with pytest.raises(InputError, match=r"size 600 is out of range"):
        write_pairs(tmp_path / "x", "tte", None, n=1, size=600)
    assert not (tmp_path / "x").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        write_pairs(tmp_path / "file", "tte", None, n=1, size=64)
