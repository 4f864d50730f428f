"""``tte2tee generate`` end to end: the CLI with the fake frame function (options, errors, plan,
resume), with a real micro model (torch), and once with the packaged model and defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import error_line, random_micro
from PIL import Image
from test_generate_fakes import FakeFrameFn, read_tree

from tte2tee_fast.cli import main

backends = pytest.importorskip("tte2tee_fast.generate.backends")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fake_backend(monkeypatch):
    built = []

    def build(config):
        built.append(config)
        return FakeFrameFn(seed=config.seed, size=32)

    monkeypatch.setattr(backends, "build_frame_fn", build)
    return built


def invoke(*args):
    return CliRunner().invoke(main, ["generate", "--no-progress", *args])


def test_cli_defaults_plan_resume_and_refusal(tmp_path, fake_backend):
    out = str(tmp_path / "ds")
    plan = invoke("--n", "10", "--shard-size", "4", "--plan", "--out", out)
    assert plan.exit_code == 0, plan.output
    assert "would generate 3 shards (10 frames)" in plan.output and not (tmp_path / "ds").exists()
    result = invoke("--n", "10", "--shard-size", "4", "--out", out)
    assert result.exit_code == 0, result.output
    assert "wrote 10 frames in 3 shards" in result.output and "dataset complete" in result.output
    config = fake_backend[-1]
    # the CLI defaults reach the frame config (auto resolves in FrameFn: test_auto_sampler.py)
    assert (config.sampler, config.steps, config.spacing, config.t_max) == (
        "auto",
        10,
        "trailing",
        999,
    )
    assert (config.adapter, config.model) == ("phantom-tee", None)
    again = invoke("--n", "10", "--shard-size", "4", "--batch-size", "3", "--out", out)
    assert "wrote 0 frames" in again.output and "3 shards were already there" in again.output
    error_line(invoke("--n", "12", "--shard-size", "4", "--out", out), "dataset.n: 10 -> 12")


def test_cli_lists_every_bad_mask_then_one_error_line(tmp_path, fake_backend):
    root = tmp_path / "masks"
    root.mkdir()
    for name, value in (("a", 1), ("b", 7), ("c", 9)):
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(root / f"{name}.png")
    result = invoke("--masks", str(root), "--schema", "tee", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert "b.png: values [7]" in lines[-3] and "c.png: values [9]" in lines[-2]
    assert lines[-1].startswith("Error: 2 of 3 masks")
    assert not (tmp_path / "o").exists()


def test_cli_shard_option_and_env_split_make_one_dataset(tmp_path, fake_backend, monkeypatch):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert invoke("--n", "9", "--shard-size", "2", "--out", one).exit_code == 0
    first = invoke("--n", "9", "--shard-size", "2", "--shard", "0/2", "--out", two)
    assert "split 0/2: --shard 0/2" in first.output and "incomplete" in first.output
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    second = invoke("--n", "9", "--shard-size", "2", "--out", two)
    assert "split 1/2: torchrun (RANK=1, WORLD_SIZE=2)" in second.output, second.output
    assert "dataset complete" in second.output
    assert read_tree(tmp_path / "one") == read_tree(tmp_path / "two")
    error_line(invoke("--shard", "2/2", "--out", one), "need 0 <= i < N")


def test_micro_model_on_torch_end_to_end_is_deterministic_across_batch_sizes(tmp_path):
    from tte2tee_fast.models import save_model

    model_dir = tmp_path / "micro"
    save_model(random_micro(0).eval(), model_dir)
    common = ["--model", str(model_dir), "--adapter", "none", "--masks", "phantom:tte"]
    common += ["--backend", "torch", "--steps", "2", "--n", "5", "--shard-size", "3"]
    a = invoke(*common, "--batch-size", "2", "--out", str(tmp_path / "a"))
    assert a.exit_code == 0, a.output
    b = invoke(*common, "--batch-size", "5", "--format", "wds", "--out", str(tmp_path / "b"))
    assert b.exit_code == 0, b.output
    assert read_tree(tmp_path / "a") == read_tree(tmp_path / "b")
    import webdataset as wds

    urls = [str(p) for p in sorted((tmp_path / "a").glob("shard-*.tar"))]
    rows = list(wds.WebDataset(urls, shardshuffle=False).decode("l8"))
    assert len(rows) == 5 and rows[0]["image.png"].shape == (32, 32)
    assert rows[0]["json"]["backend"] == "torch" and rows[0]["json"]["steps"] == 2
    assert len({r["image.png"].tobytes() for r in rows}) == 5  # a frame per index


@pytest.mark.slow
def test_packaged_model_with_only_out_writes_tee_frames(tmp_path):
    out = tmp_path / "tee"
    result = invoke("--n", "4", "--shard-size", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    dataset = json.loads((out / "dataset.json").read_text())
    engine = dataset["configuration"]["engine"]
    assert dataset["totals"]["frames"] == 4 and engine["adapter_hash"]
    import webdataset as wds

    rows = list(
        wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False).decode("l8")
    )
    assert [r["mask.png"].max() for r in rows] == [5] * 4  # tee labels (rv = 5)
    assert all(r["image.png"].shape == (128, 128) for r in rows)
