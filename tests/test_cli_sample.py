import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tte2tee_fast.cli import main
from tte2tee_fast.data.phantom import case_seed, phantom_case
from tte2tee_fast.models import from_preset, save_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "micro64"
    save_model(from_preset("micro", sample_size=64), path)
    return path


def test_sample_writes_frames_grid_and_report(model_dir, tmp_path):
    out = tmp_path / "out"
    args = ["sample", "--model", str(model_dir), "--n", "2", "--steps", "2", "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 2 and report["remap"] == "tte->tte"
    assert (out / "grid.png").is_file()
    # the written masks are the phantom masks of cases 0 and 1 (seed 0) at the model size
    for i, name in enumerate(sorted(p.name for p in (out / "masks").iterdir())):
        mask = np.asarray(Image.open(out / "masks" / name))
        assert np.array_equal(mask, phantom_case("tte", None, 64, seed=case_seed(0, i)).mask)
        assert np.asarray(Image.open(out / "images" / name)).shape == (64, 64)


def test_sample_bad_input(model_dir, tmp_path):
    runner = CliRunner()
    base = ["sample", "--model", str(model_dir), "--n", "1", "--steps", "2"]
    res = runner.invoke(main, [*base, "--masks", "phantom-tee", "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "schema" in res.output
    res = runner.invoke(main, [*base, "--sampler", "nope", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "unknown sampler" in res.output and "dpmpp_2m" in res.output
    res = runner.invoke(main, [*base, "--steps", "1001", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "1000" in res.output
    res = runner.invoke(main, ["sample", "--model", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "none" in res.output


def test_sample_with_adapter_equals_sampling_the_merged_folder(tmp_path):
    """--adapter merges in memory (conv targets too, which --unmerged refuses): the frames are
    those of `tte2tee merge` + `sample --model MERGED`, and another base's adapter is refused."""
    from test_adapter import make_adapter
    from torch import nn

    torch.manual_seed(0)
    base = from_preset("micro", sample_size=64)
    for m in base.modules():  # re-init the zero output convs so the adapter changes the frames
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    save_model(base.eval(), tmp_path / "base")
    make_adapter(base, tmp_path / "a", "all", 1)
    runner = CliRunner()
    merge = ["merge", "--base", str(tmp_path / "base"), "--adapter", str(tmp_path / "a")]
    assert runner.invoke(main, [*merge, "--out", str(tmp_path / "m")]).exit_code == 0
    common = ["sample", "--masks", "phantom-tee", "--n", "2", "--steps", "2", "--no-bf16"]
    res = runner.invoke(
        main,
        [*common, "--model", str(tmp_path / "base"), "--adapter", str(tmp_path / "a"),
         "--out", str(tmp_path / "s1")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        main, [*common, "--model", str(tmp_path / "m"), "--out", str(tmp_path / "s2")]
    )
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "s1" / "images").iterdir())
    assert len(names) == 2
    for name in names:
        a = np.asarray(Image.open(tmp_path / "s1" / "images" / name))
        b = np.asarray(Image.open(tmp_path / "s2" / "images" / name))
        assert np.array_equal(a, b)
    assert json.loads((tmp_path / "s1" / "report.json").read_text())["remap"] == "tee->tte"
    # the packaged adapter belongs to the packaged base, not to this one
    res = runner.invoke(
        main,
        [*common, "--model", str(tmp_path / "base"), "--adapter", "phantom-tee",
         "--out", str(tmp_path / "s3")],
    )  # fmt: skip
    assert res.exit_code == 2 and "hash" in res.output and not (tmp_path / "s3").exists()
