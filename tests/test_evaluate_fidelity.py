"""Structural fidelity with the packaged segmenter: real phantom frames score high, noise and
shuffled masks score low (the metric would pass neither if it were broken), the bootstrap
interval against the normal approximation, the report against a numpy Dice of the same
predictions, and the command's output and one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import error_line

from tte2tee_fast.cli import main
from tte2tee_fast.evaluate.fidelity import bootstrap_mean_ci, fidelity_report
from tte2tee_fast.evaluate.frames import Frames, load_frames, phantom_frames
from tte2tee_fast.evaluate.segment import load_segmenter, predict

pytest.importorskip("monai")  # the eval extra: pip install -e ".[eval]"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def seg():
    return load_segmenter()  # the packaged segmenter-tee


@pytest.fixture(scope="module")
def real():
    # seed 5: neither the training (1) nor the held-out (2) cases of the packaged segmenter
    return phantom_frames("tee", 16, seed=5, size=128)


def test_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    v = rng.normal(0.7, 0.1, size=400)
    mean, lo, hi = bootstrap_mean_ci(v, n_boot=2000, seed=1)
    half = 1.96 * v.std(ddof=1) / np.sqrt(v.size)
    assert mean == pytest.approx(v.mean())
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert lo < mean < hi
    assert bootstrap_mean_ci(np.full(10, 0.3), 100) == pytest.approx((0.3, 0.3, 0.3))
    m, lo, hi = bootstrap_mean_ci(np.array([np.nan, 0.5, 0.5]))
    assert (m, lo, hi) == pytest.approx((0.5, 0.5, 0.5))
    assert all(np.isnan(bootstrap_mean_ci(np.array([np.nan]))))
    assert bootstrap_mean_ci(v, 500, seed=3) == bootstrap_mean_ci(v, 500, seed=3)


def test_real_phantom_frames_score_high(seg, real):
    report = fidelity_report(seg, real)
    assert report["mean_dice"]["mean"] > 0.8, report
    for name in ("la", "lv", "ra", "rv"):
        assert report["per_class"][name]["mean"] > 0.6, (name, report["per_class"][name])
        lo, hi = report["per_class"][name]["ci95"]
        assert lo <= report["per_class"][name]["mean"] <= hi


def test_packaged_tte_segmenter_scores_tte_phantom_frames_high_and_noise_low():
    tte = load_segmenter("segmenter-tte")
    assert tte.schema.name == "tte"
    frames = phantom_frames("tte", 12, seed=5, size=128)  # not its training (1) / held-out (2)
    report = fidelity_report(tte, frames)
    assert report["mean_dice"]["mean"] > 0.85, report
    assert set(report["per_class"]) == {"lv_cavity", "lv_myocardium", "la"}
    noise = np.random.default_rng(0).integers(0, 256, frames.images.shape).astype(np.uint8)
    low = fidelity_report(tte, Frames(noise, frames.masks, frames.names, frames.schema, "noise"))
    assert low["mean_dice"]["mean"] < 0.5, low


def test_report_matches_numpy_dice_of_the_predictions(seg, real):
    pred = predict(seg, real.images)
    report = fidelity_report(seg, real, n_boot=50)
    for name, value in zip(("la", "lv", "ra", "rv"), (2, 3, 4, 5), strict=True):
        p, t = pred == value, real.masks == value
        ref = 2 * (p & t).sum((1, 2)) / (p.sum((1, 2)) + t.sum((1, 2)))
        assert report["per_class"][name]["mean"] == pytest.approx(ref.mean(), rel=1e-6)


def test_noise_and_shuffled_masks_score_low(seg, real):
    matched = fidelity_report(seg, real)["mean_dice"]["mean"]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=real.images.shape, dtype=np.uint8)
    noise[real.masks == 0] = 0  # even with the true cone
    noisy = Frames(noise, real.masks, real.names, real.schema, "noise")
    assert fidelity_report(seg, noisy)["mean_dice"]["mean"] < 0.35
    # each image paired with another case's mask, flipped left-right: anatomy in the wrong place
    shuffled = Frames(
        real.images, np.roll(real.masks, 1, axis=0)[:, :, ::-1], real.names, real.schema, "shuf"
    )
    assert fidelity_report(seg, shuffled)["mean_dice"]["mean"] < matched - 0.4
    # another case's mask as it is: the chambers sit roughly where they always do, yet the
    # score drops clearly below the matched pairs
    rolled = Frames(real.images, np.roll(real.masks, 1, axis=0), real.names, real.schema, "roll")
    assert fidelity_report(seg, rolled)["mean_dice"]["mean"] < matched - 0.1


def _phantom(tmp_path, name, *extra):
    res = CliRunner().invoke(
        main,
        [
            "phantom",
            "--n",
            "4",
            "--size",
            "128",
            "--seed",
            "9",
            "--out",
            str(tmp_path / name),
            *extra,
        ],
    )
    assert res.exit_code == 0, res.output
    return tmp_path / name


def test_fidelity_command_on_a_folder(tmp_path, seg):
    folder = _phantom(tmp_path, "tee", "--modality", "tee")
    out = tmp_path / "f.json"
    res = CliRunner().invoke(
        main, ["evaluate", "fidelity", "--frames", str(folder), "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["n_frames"] == 4 and set(report["per_class"]) == {"la", "lv", "ra", "rv"}
    direct = fidelity_report(seg, load_frames(folder))
    for name, r in direct["per_class"].items():
        assert report["per_class"][name]["mean"] == pytest.approx(r["mean"])
        assert report["per_class"][name]["ci95"] == pytest.approx(r["ci95"])
    assert "rv" in res.output and "95% CI" in res.output
    # a tte2tee sample output: no card.json, the schema comes from report.json
    sample = tmp_path / "sample"
    shutil.copytree(folder / "images", sample / "images")
    shutil.copytree(folder / "masks", sample / "masks")
    (sample / "report.json").write_text(json.dumps({"schema": "tee"}))
    assert load_frames(sample).schema.name == "tee"


def test_fidelity_command_errors(tmp_path):
    runner = CliRunner()
    tte = _phantom(tmp_path, "tte", "--modality", "tte")
    res = runner.invoke(main, ["evaluate", "fidelity", "--frames", str(tte)])
    error_line(res, "schema 'tte'", "'tee'")
    tee = _phantom(tmp_path, "tee", "--modality", "tee")
    (tee / "masks" / "case_00002.png").unlink()
    res = runner.invoke(main, ["evaluate", "fidelity", "--frames", str(tee)])
    error_line(res, "case_00002.png", "image without mask")
    (tmp_path / "empty").mkdir()
    res = runner.invoke(main, ["evaluate", "fidelity", "--frames", str(tmp_path / "empty")])
    error_line(res, "no image/mask pairs")
    res = runner.invoke(
        main,
        [
            "evaluate",
            "fidelity",
            "--frames",
            "phantom-tee",
            "--n",
            "2",
            "--segmenter",
            str(tmp_path),
        ],
    )
    error_line(res, "not a segmenter folder")


def test_segmenter_command_trains_scores_and_records(tmp_path):
    out = tmp_path / "seg"
    args = [
        "evaluate",
        "segmenter",
        "--n",
        "8",
        "--val-n",
        "4",
        "--size",
        "64",
        "--steps",
        "3",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "training.json").read_text())
    assert meta["train"] == {"source": "phantom-tee (seed 1, 8 cases, 64px)", "n": 8, "seed": 1}
    assert meta["held_out"]["n_frames"] == 4 and "--steps 3" in meta["command"]
    assert load_segmenter(out).config.steps == 3
    res = CliRunner().invoke(main, [*args[:-2], "--val-seed", "1", "--out", str(tmp_path / "x")])
    error_line(res, "held-out frames", "are the training frames")
    assert not (tmp_path / "x").exists()
