"""`tte2tee phantom`: writes the dataset and preview; bad options give one clear error line."""

from __future__ import annotations

import json

from click.testing import CliRunner
from PIL import Image

from tte2tee_fast.cli import main


def _run(args):
    return CliRunner().invoke(main, ["phantom", *args])


def test_phantom_command_writes_pairs_and_preview(tmp_path):
    out, prev = tmp_path / "ds", tmp_path / "prev.png"
    result = _run(
        ["--modality", "tte", "--view", "a2c", "--n", "2", "--size", "64", "--seed", "3",
         "--out", str(out), "--preview", str(prev), "--preview-n", "1"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote 2 pairs to {out}" in result.output
    card = json.loads((out / "card.json").read_text())
    assert (card["modality"], card["view"], card["n"], card["seed"]) == ("tte", "a2c", 2, 3)
    assert len(list((out / "masks").glob("*.png"))) == 2
    assert Image.open(prev).size == (2 * 64 + 4, 64 + 22)


def test_default_view_follows_modality(tmp_path):
    result = _run(["--modality", "tee", "--n", "1", "--size", "64", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "d" / "card.json").read_text())["view"] == "me4c"


def _error_lines(result):
    return [line for line in result.output.splitlines() if line.startswith("Error")]


def test_view_modality_mismatch_is_one_clear_line(tmp_path):
    result = _run(["--modality", "tte", "--view", "me4c", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2
    lines = _error_lines(result)
    assert lines == [
        "Error: view 'me4c' does not belong to modality 'tte' (it is a tee view); "
        "tte views: a4c, a2c"
    ]
    assert "Traceback" not in result.output
    assert not (tmp_path / "d").exists()


def test_out_of_range_options_rejected(tmp_path):
    for args, word in (
        (["--size", "32"], "--size"),
        (["--size", "1024"], "--size"),
        (["--n", "0"], "--n"),
        (["--modality", "mri"], "--modality"),
        (["--view", "plax"], "--view"),
    ):
        result = _run([*args, "--out", str(tmp_path / "d")])
        assert result.exit_code == 2, args
        lines = _error_lines(result)
        assert len(lines) == 1 and word in lines[0], (args, result.output)


def test_help_has_examples():
    result = _run(["--help"])
    assert result.exit_code == 0
    assert "tte2tee phantom --modality tee" in result.output
    assert "[default: 256; 64<=x<=512]" in result.output
