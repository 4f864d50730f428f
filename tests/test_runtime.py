"""The torch-free runtime (export/runtime.py) against the torch pipeline on the same engine:
every deterministic sampler, the baked graph, and a run in a process where torch cannot load."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_adapter import make_adapter, micro_base

from tte2tee_fast.cli import main
from tte2tee_fast.data.imageio import read_gray_image
from tte2tee_fast.data.preview import save_png
from tte2tee_fast.diffusion.dense import DETERMINISTIC, sampler_plan
from tte2tee_fast.generate.backends import build_denoiser, sample_frames
from tte2tee_fast.generate.sample import SampleConfig
from tte2tee_fast.models import save_model

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")
SIZE, N = 32, 5
KARRAS = {"spacing": "karras", "t_min": 10, "t_max": 979}
DEFAULT_GRID = {"spacing": "trailing", "t_max": 999}  # generate's, the export and runtime default


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from tte2tee_fast.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("runtime")
    base = micro_base(4)
    save_model(base, root / "base")
    make_adapter(base, root / "lora", preset="mlp", rank=2)
    path = export_onnx(str(root / "base"), str(root / "lora"), root / "tee.onnx")
    return root, path


def _labels() -> np.ndarray:
    gen = np.random.default_rng(3)
    return gen.integers(0, 6, (N, SIZE, SIZE)).astype(np.uint8)  # TEE values


def _torch_pipeline(root, path, sampler, steps, guidance=1.0, **kw) -> np.ndarray:
    den = build_denoiser(str(root / "base"), str(root / "lora"), "ort", "fp32", engine=str(path))
    cfg = SampleConfig(sampler, steps, seed=7, batch_size=4, guidance=guidance, **kw)
    lab = torch.from_numpy(_labels().astype(np.int64))
    return sample_frames(den, lab, torch.arange(N), cfg).numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_runtime_frames_equal_the_torch_pipeline(engine, sampler) -> None:
    from tte2tee_fast.export.ort import OrtDenoiser
    from tte2tee_fast.export.runtime import frames

    root, path = engine
    want = _torch_pipeline(root, path, sampler, 4, **KARRAS)
    plan = sampler_plan(sampler, 4, **KARRAS)
    got = frames(OrtDenoiser(path, threads=1), _labels(), range(N), plan, seed=7, batch_size=4)
    assert got.shape == want.shape == (N, 1, SIZE, SIZE)
    assert _rel(got, want) < 1e-3


def test_runtime_with_guidance(engine) -> None:
    from tte2tee_fast.export.ort import OrtDenoiser
    from tte2tee_fast.export.runtime import frames

    root, path = engine
    want = _torch_pipeline(root, path, "dpmpp_2m", 5, guidance=2.0)
    got = frames(
        OrtDenoiser(path, threads=1), _labels(), range(N), sampler_plan("dpmpp_2m", 5), 7, 2.0, 4
    )
    assert _rel(got, want) < 1e-3


def test_runtime_runs_a_plan_file_like_the_torch_pipeline(engine, tmp_path) -> None:
    # a plan whose coefficients are not any named sampler's (as a learned plan's are)
    import dataclasses

    from tte2tee_fast.export.ort import OrtDenoiser
    from tte2tee_fast.export.runtime import frames

    from tte2tee_fast.diffusion.dense import load_plan

    root, path = engine
    base = sampler_plan("unipc", 3, **KARRAS)
    coef = np.asarray(base.coef) * (1 + 0.05 * np.tril(np.ones_like(base.coef)))
    coef[0] = base.coef[0]  # evaluation 0 is x_T
    learned = dataclasses.replace(base, name="learned", coef=tuple(map(tuple, coef.tolist())))
    learned.save(tmp_path / "p.json")
    want = _torch_pipeline(root, path, f"plan:{tmp_path / 'p.json'}", 0)
    got = frames(
        OrtDenoiser(path, threads=1), _labels(), range(N), load_plan(tmp_path / "p.json"), 7,
        batch_size=4,
    )  # fmt: skip
    assert _rel(got, want) < 1e-3
    assert _rel(got, _torch_pipeline(root, path, "unipc", 3, **KARRAS)) > 1e-2  # not unipc's


def test_baked_graph_equals_the_runtime_loop(engine) -> None:
    from tte2tee_fast.export.ort import OrtDenoiser
    from tte2tee_fast.export.runtime import frames

    root, path = engine
    plan = sampler_plan("unipc", 4, **DEFAULT_GRID)
    baked = root / "baked.onnx"
    res = CliRunner().invoke(
        main,
        ["export", "onnx", "--model", str(root / "base"), "--adapter", str(root / "lora"),
         "--bake-sampler", "unipc", "--steps", "4", "--out", str(baked)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    runner = OrtDenoiser(baked, threads=1)
    assert runner.metadata["variant"] == "baked:unipc:4"
    assert runner.metadata["plan"] == plan.to_json()
    got = frames(runner, _labels(), range(N), None, seed=7, batch_size=4)
    want = frames(OrtDenoiser(path, threads=1), _labels(), range(N), plan, seed=7, batch_size=4)
    assert _rel(got, want) < 1e-4


def test_runtime_cli_runs_without_torch(engine, tmp_path) -> None:
    root, path = engine
    masks = tmp_path / "masks"
    for i, m in enumerate(_labels()):
        save_png(masks / f"m{i}.png", m)
    out = tmp_path / "out"
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "from tte2tee_fast.export.runtime import main\n"
        f"sys.exit(main(['--engine', {str(path)!r}, '--masks', {str(masks)!r}, '--n', '{N}', "
        f"'--sampler', 'unipc', '--steps', '4', '--seed', '7', '--batch-size', '4', "
        f"'--out', {str(out)!r}]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    got = np.stack([read_gray_image(out / "images" / f"frame_{i:05d}.png") for i in range(N)])
    want = _torch_pipeline(root, path, "unipc", 4, **DEFAULT_GRID)
    want_u8 = ((np.clip(want[:, 0], -1, 1) + 1) * 127.5).round().astype(np.uint8)
    diff = np.abs(got.astype(int) - want_u8.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # float rounding at a gray-level boundary
    # bad masks: one line naming the values, exit 2, no frames written
    bad = tmp_path / "bad"
    save_png(bad / "x.png", np.full((SIZE, SIZE), 9, np.uint8))
    res = subprocess.run(
        [sys.executable, "-m", "tte2tee_fast.export.runtime", "--engine", str(path), "--masks",
         str(bad), "--n", "1", "--out", str(tmp_path / "o2")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 2 and "[9]" in res.stderr, res.stderr
    assert not (tmp_path / "o2").exists()
