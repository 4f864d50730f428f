"""`tte2tee inspect`: a summary for good data, one `Error:` line and exit 2 for bad data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import error_line
from PIL import Image

from tte2tee_fast.cli import main


def _folder(root: Path, schema: str | None = "tee") -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 8:24] = 1
        mask[12:20, 12:20] = 2 + i  # labels 2, 3, 4
        Image.fromarray(np.full((32, 32), 50 * i, np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
    if schema:
        (root / "card.json").write_text(json.dumps({"schema": schema}))
    return root


def _run(*args: str):
    result = CliRunner().invoke(main, ["inspect", *args])
    return result, result.output


def test_summary_of_a_good_folder(tmp_path):
    result, out = _run("--data", str(_folder(tmp_path)))
    assert result.exit_code == 0, out
    assert "format folder" in out and "schema: tee" in out and "pairs: 3" in out
    assert "32x32 (3)" in out
    # per-label fractions against a direct count: 1024 px/frame, square 256 px, inner 64 px
    total = 3 * 1024
    expected = {
        "outside": 3 * (1024 - 256),
        "background": 3 * (256 - 64),
        "la": 64,
        "lv": 64,
        "ra": 64,
    }
    for name, count in expected.items():
        line = next(ln for ln in out.splitlines() if f" {name} " in ln)
        assert line.strip().endswith(f"{100.0 * count / total:.2f}%"), line


def test_mask_value_outside_schema(tmp_path):
    root = _folder(tmp_path)
    bad = np.zeros((32, 32), np.uint8)
    bad[0, 0], bad[0, 1] = 7, 9
    Image.fromarray(bad).save(root / "masks" / "c1.png")
    result, _ = _run("--data", str(root))
    error_line(result, "c1.png", "[7, 9]", "'tee'")


def test_declared_schema_overrides_card_and_reports_values(tmp_path):
    root = _folder(tmp_path)  # labels up to 4: valid tee, and valid tte too
    result, _ = _run("--data", str(root), "--schema", "camus")
    error_line(result, "c2.png", "[4]", "'camus'")


def test_size_mismatch(tmp_path):
    root = _folder(tmp_path)
    Image.fromarray(np.zeros((32, 30), np.uint8)).save(root / "masks" / "c0.png")
    result, _ = _run("--data", str(root))
    error_line(result, "c0.png", "32x30", "32x32")


def test_unreadable_file(tmp_path):
    root = _folder(tmp_path)
    (root / "images" / "c2.png").write_bytes(b"not a png at all")
    result, _ = _run("--data", str(root))
    error_line(result, "c2.png", "cannot read image")


def test_missing_folder(tmp_path):
    result, _ = _run("--data", str(tmp_path / "nowhere"))
    error_line(result, "nowhere", "not found")


@pytest.mark.parametrize("fmt", ["folder", "camus"])
def test_empty_folder_in_each_format(tmp_path, fmt):
    result, _ = _run("--data", str(tmp_path), "--format", fmt)
    error_line(result, str(tmp_path))


def test_image_without_mask_and_missing_schema(tmp_path):
    root = _folder(tmp_path, schema=None)
    result, _ = _run("--data", str(root))
    error_line(result, "--schema")
    (root / "masks" / "c1.png").unlink()
    result, _ = _run("--data", str(root), "--schema", "tee")
    error_line(result, "c1.png", "image without mask")


def test_value_map_file(tmp_path):
    root = _folder(tmp_path / "d")
    vmap = tmp_path / "map.json"
    vmap.write_text(
        json.dumps({"0": "outside", "1": "background", "2": "lv", "3": "la", "4": "rv"})
    )
    result, out = _run("--data", str(root), "--value-map", str(vmap))
    assert result.exit_code == 0, out
    assert next(ln for ln in out.splitlines() if " rv " in ln).strip().endswith("2.08%")
    vmap.write_text("[1, 2]")
    error_line(_run("--data", str(root), "--value-map", str(vmap))[0], "map.json")
