import json

import numpy as np
import pytest
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
