"""The downstream experiment on a tiny configuration: arms, seeds, the paired differences
recomputed from the runs, a split with no case on both sides, the three outputs, and the
one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import error_line
from PIL import Image
from scipy import stats

from tte2tee_fast.cli import main
from tte2tee_fast.evaluate.downstream import (
    DownstreamConfig,
    case_of,
    run_downstream,
    split_by_case,
)
from tte2tee_fast.evaluate.segment import SegmenterConfig

pytest.importorskip("monai")  # the eval extra: pip install -e ".[eval]"
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = DownstreamConfig(
    n_real=(0, 6),
    ratios=(0, 1),
    seeds=(0, 1),
    n_test=6,
    n_synthetic_only=6,
    segmenter=SegmenterConfig(size=32, channels=(4, 8), strides=(2,), steps=8, batch_size=4),
)


def _phantom(tmp_path, name, modality="tee", n=8, seed=7):
    args = [
        "phantom",
        "--modality",
        modality,
        "--n",
        str(n),
        "--size",
        "64",
        "--seed",
        str(seed),
        "--out",
        str(tmp_path / name),
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return tmp_path / name


def test_split_keeps_cases_together():
    names = tuple(f"p{i // 3}__f{i % 3}" for i in range(30))  # 10 cases of 3 frames
    train, test = split_by_case(names, n_test=7, seed=0)
    assert len(test) == 9 and len(train) == 21  # whole cases: 3 cases of 3 frames
    assert not {case_of(names[i]) for i in train} & {case_of(names[i]) for i in test}
    assert case_of("frame7") == "frame7"


def test_tiny_experiment_report(tmp_path):
    syn = _phantom(tmp_path, "syn")
    report = run_downstream("phantom-tee", syn, tmp_path / "ds", cfg=TINY)
    assert {p.name for p in (tmp_path / "ds").iterdir()} == {
        "report.json",
        "report.md",
        "dice.png",
        "arms.jsonl",
    }
    assert json.loads((tmp_path / "ds" / "report.json").read_text())["n_test"] == 6
    assert Image.open(tmp_path / "ds" / "dice.png").size[0] > 100
    arms = [(e["n_real"], e["ratio"], e["n_synthetic"]) for e in report["table"]]
    assert arms == [(0, -1, 6), (6, 0, 0), (6, 1, 6)]
    assert len(report["runs"]) == 6
    for run in report["runs"]:  # no test case trained on
        assert not {case_of(n) for n in run["real_frames"]} & set(report["test_cases"])
    # arms of one seed share their real frames: the difference is paired
    by = {(r["seed"], r["n_real"], r["ratio"]): r for r in report["runs"]}
    assert by[(0, 6, 0)]["real_frames"] == by[(0, 6, 1)]["real_frames"]
    assert by[(0, 6, 0)]["real_frames"] != by[(1, 6, 0)]["real_frames"]
    (diff,) = report["paired_difference"]
    for s in ("la", "lv", "ra", "rv"):
        d = np.array([by[(k, 6, 1)]["dice"][s] - by[(k, 6, 0)]["dice"][s] for k in (0, 1)])
        assert diff[s]["mean"] == pytest.approx(d.mean())
        half = stats.t.ppf(0.975, 1) * d.std(ddof=1) / np.sqrt(2)
        assert diff[s]["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
        mean = np.mean([by[(k, 6, 1)]["dice"][s] for k in (0, 1)])
        assert report["table"][2][s]["mean"] == pytest.approx(mean)
    md = (tmp_path / "ds" / "report.md").read_text()
    assert "| 6 | real + synthetic 1:1 | 6 |" in md and "Paired difference" in md


def test_killed_run_resumes_its_finished_arms(tmp_path, monkeypatch):
    """A run killed after two arms (and in the middle of writing a third) trains only the
    missing arms again and reports what the straight run reports; another seed list extends it;
    other settings into the same folder are refused."""
    import dataclasses

    import tte2tee_fast.evaluate.downstream as ds

    syn = _phantom(tmp_path, "syn")
    straight = run_downstream("phantom-tee", syn, tmp_path / "a", cfg=TINY)
    out = tmp_path / "b"
    out.mkdir()
    lines = (tmp_path / "a" / "arms.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 6  # the key, then one line per arm
    (out / "arms.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    trained = []
    real_train = ds.train_segmenter
    monkeypatch.setattr(
        ds, "train_segmenter", lambda *a, **k: trained.append(1) or real_train(*a, **k)
    )
    resumed = run_downstream("phantom-tee", syn, out, cfg=TINY)
    assert len(trained) == 4 and resumed["resumed_arms"] == 2
    for a, b in zip(straight["runs"], resumed["runs"], strict=True):
        assert a["dice"] == b["dice"] and a["real_frames"] == b["real_frames"]
    assert resumed["table"] == straight["table"]
    assert resumed["paired_difference"] == straight["paired_difference"]
    more = run_downstream("phantom-tee", syn, out, cfg=dataclasses.replace(TINY, seeds=(0, 1, 2)))
    assert len(trained) == 4 + 3 and more["resumed_arms"] == 6
    other = dataclasses.replace(TINY, segmenter=dataclasses.replace(TINY.segmenter, steps=9))
    with pytest.raises(ds.InputError, match="arms of another experiment"):
        run_downstream("phantom-tee", syn, out, cfg=other)
    assert (out / "report.json").exists()  # the refused run left the finished report alone


def test_downstream_command_errors(tmp_path):
    runner = CliRunner()
    syn_tte = _phantom(tmp_path, "tte", modality="tte")
    res = runner.invoke(
        main,
        [
            "evaluate",
            "downstream",
            "--synthetic",
            str(syn_tte),
            "--out",
            str(tmp_path / "o"),
            "--quick",
        ],
    )
    error_line(res, "schema 'tte'", "'tee'")
    real = _phantom(tmp_path, "real", n=4, seed=1)
    syn = _phantom(tmp_path, "syn", n=4, seed=2)
    res = runner.invoke(
        main,
        [
            "evaluate",
            "downstream",
            "--real",
            str(real),
            "--test",
            str(real),
            "--synthetic",
            str(syn),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    error_line(res, "is in the test set and in the real training set")
    res = runner.invoke(
        main,
        [
            "evaluate",
            "downstream",
            "--real",
            str(real),
            "--synthetic",
            str(syn),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    error_line(res, "cannot split 4 real frames")
    (syn / "masks" / "case_00001.png").unlink()
    res = runner.invoke(
        main,
        [
            "evaluate",
            "downstream",
            "--real",
            str(real),
            "--synthetic",
            str(syn),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    error_line(res, "case_00001.png", "image without mask")
    assert not (tmp_path / "o").exists()


def test_the_default_synthetic_set_covers_every_arm() -> None:
    """Without --synthetic the command generates as many frames as the largest arm draws."""
    from tte2tee_fast.evaluate.downstream import QUICK, DownstreamConfig, arms, synthetic_needed

    for cfg in (QUICK, DownstreamConfig()):
        largest = max(cfg.n_synthetic_only if n == 0 else n * r for n, r in arms(cfg))
        assert synthetic_needed(cfg) == largest
    assert synthetic_needed(QUICK) == 200
