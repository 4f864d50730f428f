"""Sampler benchmark: outputs, NFE accounting, the error metric, convergence, CLI errors.

Independent references: a network wrapper that counts the rows it is fed (NFE = rows / batch);
numpy float64 for the rel-RMSE formula; the closed-form probability-flow ODE solution for
Gaussian data; the exact eps of a per-pixel Gaussian mixture (smooth, nonlinear) for convergence.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import random_micro
from PIL import Image

from tte2tee_fast.bench.samplers import (
    FILES,
    REFERENCE_SAMPLERS,
    SamplerBenchConfig,
    markdown_table,
    parse_nfes,
    parse_samplers,
    rel_rmse,
    run_sampler,
    sampler_bench,
    steps_for_nfe,
    write_outputs,
)
from tte2tee_fast.cli import main
from tte2tee_fast.commands.bench import _BENCH_REFERENCE_SAMPLERS
from tte2tee_fast.diffusion import SAMPLERS, NoiseSchedule, NoiseSource
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import save_model

SCHED = NoiseSchedule.cosine(1000)
ABAR = SCHED.alphas_cumprod.clone()  # float64 [T]


class MixtureEps(torch.nn.Module):
    """Exact eps of per-pixel data ~ sum_k w_k N(mu_k, s_k^2); counts the rows it evaluates."""

    def __init__(self, components=((0.3, -0.6, 0.2), (0.7, 0.5, 0.3))) -> None:
        super().__init__()
        self.components = components
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        xd = x.double()
        ab = ABAR[t.long().cpu()].view(-1, 1, 1, 1)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        logw, means = [], []
        for w, mu, sd in self.components:
            v = a * a * sd * sd + s * s  # marginal variance of x_t under component k
            logw.append(math.log(w) - 0.5 * torch.log(v) - 0.5 * (xd - a * mu) ** 2 / v)
            means.append(mu + a * sd * sd / v * (xd - a * mu))  # E[x0 | x_t, k]
        post = torch.softmax(torch.stack(logw), 0)
        x0 = (post * torch.stack(means)).sum(0)
        return ((xd - a * x0) / s).float()


def _cond(n: int = 2, size: int = 8) -> torch.Tensor:
    labels = torch.randint(0, 5, (n, size, size), generator=torch.Generator().manual_seed(1))
    return torch.nn.functional.one_hot(labels, 5).permute(0, 3, 1, 2).float()  # [n, 5, S, S]


def _micro(size: int = 32) -> torch.nn.Module:
    """A random micro model whose zero-initialised layers are randomised too (eps != 0)."""
    return random_micro(0, sample_size=size).eval()


pytestmark = pytest.mark.usefixtures("one_thread")


def _expected_nfe(name: str, budget: int, guidance: float) -> int:
    cost = 1 if guidance in (0.0, 1.0) else 2
    calls = budget // cost
    if name == "heun":  # 2 steps - 1 evaluations: the largest odd count that fits
        calls = calls if calls % 2 == 1 else calls - 1
    return calls * cost


@pytest.fixture(scope="module")
def micro_result():
    model = _micro()
    config = SamplerBenchConfig(nfes=(2, 4), reference_nfe=40, grid_frames=2)
    return sampler_bench(model, _cond(2, 32), config, progress=False)


def test_all_outputs_written(micro_result, tmp_path):
    paths = write_outputs(micro_result, tmp_path / "out")
    assert {p.name for p in paths.values()} == set(FILES.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(FILES.values())
    data = json.loads(paths["json"].read_text())
    assert len(data["rows"]) == len(SAMPLERS) * 2
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["cpu_count"] >= 1
    assert data["config"]["reference_nfe"] == 40 and data["reference"]["nfe"] == 40
    assert data["reference"]["half_nfe"] == 20
    table = paths["markdown"].read_text()
    for name in SAMPLERS:
        assert f"| {name}" in table
    assert "ddpm (stochastic)" in table and "dpmpp_2m_sde (stochastic)" in table
    assert "| heun | " in table and "(1 NFE)" in table and "(3 NFE)" in table
    for key in ("plot", "grid"):
        with Image.open(paths[key]) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_rows_rel_rmse_matches_numpy(micro_result):
    ref = micro_result.reference_frames.double().numpy()
    for row in micro_result.rows:
        x = micro_result.frames[(row.sampler, row.target_nfe)].double().numpy()
        expected = np.sqrt(np.sum((x - ref) ** 2)) / np.sqrt(np.sum(ref**2))
        assert row.rel_rmse == pytest.approx(expected, rel=1e-9)
        assert row.stochastic == (row.sampler in ("ddpm", "dpmpp_2m_sde"))
        assert row.ms_per_frame > 0
    # deterministic first-order samplers on the same grid agree (ddim == euler), and the runs
    # differ from the reference
    rows = {(r.sampler, r.target_nfe): r for r in micro_result.rows}
    assert rows[("ddim", 4)].rel_rmse == pytest.approx(rows[("euler", 4)].rel_rmse, rel=1e-4)
    assert rows[("ddim", 2)].rel_rmse > 0


def test_rel_rmse_formula():
    g = torch.Generator().manual_seed(3)
    x, ref = torch.randn(3, 1, 5, 7, generator=g), torch.randn(3, 1, 5, 7, generator=g)
    xn, rn = x.numpy().astype(np.float64), ref.numpy().astype(np.float64)
    assert rel_rmse(x, ref) == pytest.approx(np.linalg.norm(xn - rn) / np.linalg.norm(rn), 1e-12)
    assert rel_rmse(ref, ref) == 0.0
    with pytest.raises(InputError, match="shapes differ"):
        rel_rmse(x, ref[:2])


@pytest.mark.parametrize("guidance", [1.0, 2.0])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_nfe_counted_equals_budget(name, guidance):
    model = MixtureEps()
    cond = _cond(3, 4)
    config = SamplerBenchConfig(guidance=guidance, batch_size=2, reference_nfe=100)
    for budget in (2, 4, 5, 7) if guidance == 1.0 else (4, 6, 7):
        model.batches.clear()
        steps = steps_for_nfe(name, budget, guidance, SCHED.num_train_timesteps)
        _, nfe, _ = run_sampler(model, cond, name, steps, config, SCHED)
        # independent count: rows the network saw / frames (two chunks of 2 and 1 frames)
        assert sum(model.batches) % 3 == 0
        counted = sum(model.batches) // 3
        assert counted == nfe == _expected_nfe(name, budget, guidance)
        if name != "heun":
            assert counted == 2 * (budget // 2) if guidance != 1.0 else counted == budget


def test_bench_rows_report_counted_nfe():
    model = MixtureEps()
    config = SamplerBenchConfig(nfes=(2, 3), reference_nfe=12, samplers=("heun", "unipc"))
    result = sampler_bench(model, _cond(2, 4), config, SCHED, progress=False)
    assert [(r.sampler, r.nfe) for r in result.rows] == [
        ("heun", 1),
        ("heun", 3),
        ("unipc", 2),
        ("unipc", 3),
    ]
    # every network row is accounted for: warm-up (1 frame, 1 NFE), reference, half, rows
    total = 1 + 2 * (12 + 6 + sum(r.nfe for r in result.rows))
    assert sum(model.batches) == total


@pytest.mark.parametrize("t_max", [979, None])  # the default start, and diffusers' t = 999
def test_reference_matches_closed_form_gaussian(t_max):
    mu, sd = 0.3, 0.5
    model = MixtureEps(components=((1.0, mu, sd),))
    cond = _cond(2, 6)
    config = SamplerBenchConfig(samplers=("dpmpp_3m",), nfes=(10,), reference_nfe=200, t_max=t_max)
    result = sampler_bench(model, cond, config, SCHED, progress=False)
    # Gaussian data: (x_t - a mu) / sqrt(a^2 sd^2 + s^2) is constant along the ODE
    x_T = NoiseSource(0, [0, 1]).initial((1, 6, 6)).double()  # the benchmark's x_T
    start = 999 if t_max is None else t_max
    a, s = ABAR[start].sqrt(), (1 - ABAR[start]).sqrt()
    exact = mu + sd * (x_T - a * mu) / torch.sqrt(a * a * sd * sd + s * s)  # [2, 1, 6, 6]
    # measured: 4.8e-4 against the exact solution, estimate 8.5e-4 (the estimate bounds it)
    assert rel_rmse(result.reference_frames, exact) < result.reference.error_estimate < 1e-3
    # the row's error against the reference is its error against the exact solution
    row_exact = rel_rmse(result.frames[("dpmpp_3m", 10)], exact)
    assert result.rows[0].rel_rmse == pytest.approx(row_exact, rel=0.05)


@pytest.mark.parametrize("name", ["dpmpp_3m", "heun", "unipc"])
def test_error_decreases_with_nfe_on_smooth_eps(name):
    model = MixtureEps()
    nfes = (5, 10, 20, 40)
    config = SamplerBenchConfig(samplers=(name,), nfes=nfes, reference_nfe=400)
    result = sampler_bench(model, _cond(2, 8), config, SCHED, progress=False)
    errs = [r.rel_rmse for r in result.rows]
    assert all(b < a for a, b in itertools.pairwise(errs)), errs
    assert errs[-1] < errs[0] / 10
    assert result.reference.error_estimate < errs[-1]
    if name != "heun":  # heun from t = T - 1 (k-sigma ~2e4) stays far above 2 % up to 40 NFE
        assert result.best is not None and result.best.sampler == name


def test_verdict_excludes_stochastic():
    model = MixtureEps()
    config = SamplerBenchConfig(
        samplers=("dpmpp_2m_sde", "ddpm"), nfes=(50,), reference_nfe=100, threshold=0.99
    )
    result = sampler_bench(model, _cond(2, 4), config, SCHED, progress=False)
    assert all(r.stochastic for r in result.rows)
    assert result.best is None and "no deterministic sampler" in result.verdict


@pytest.mark.parametrize(("t_max", "full"), [(None, 1000), (979, 980)])
def test_ddpm_full_row(t_max, full):
    """The full ancestral row runs every timestep from the start (t_max) down."""
    model = MixtureEps()
    config = SamplerBenchConfig(
        samplers=("ddpm", "ddim"), nfes=(4,), reference_nfe=8, ddpm_full=True, t_max=t_max
    )
    result = sampler_bench(model, _cond(1, 4), config, SCHED, progress=False)
    assert [(r.sampler, r.target_nfe, r.nfe, r.steps) for r in result.rows] == [
        ("ddpm", 4, 4, 4),
        ("ddim", 4, 4, 4),
        ("ddpm", full, full, full),
    ]
    assert f"NFE {full}" in markdown_table(result)


def test_bf16_reference_uses_same_precision():
    model = _micro()
    cond = _cond(1, 32)
    base = dict(samplers=("dpmpp_2m",), nfes=(3,), reference_nfe=8)
    fp32 = sampler_bench(model, cond, SamplerBenchConfig(**base), progress=False)
    bf16 = sampler_bench(model, cond, SamplerBenchConfig(**base, bf16=True), progress=False)
    # the bf16 run's reference is itself bf16: it differs from the fp32 one
    assert rel_rmse(bf16.reference_frames, fp32.reference_frames) > 1e-6
    assert bf16.config.bf16


def test_config_and_parse_errors():
    with pytest.raises(InputError, match="choose one of"):
        parse_samplers("heun,rk4")
    assert parse_samplers("all") == tuple(SAMPLERS)
    with pytest.raises(InputError, match="NFE must be >= 1"):
        parse_nfes("5,0")
    with pytest.raises(InputError, match="not an integer"):
        parse_nfes("5,x")
    with pytest.raises(InputError, match="must exceed"):
        SamplerBenchConfig(nfes=(5, 50), reference_nfe=50)
    with pytest.raises(InputError, match="leading"):
        SamplerBenchConfig(spacing="leading")
    with pytest.raises(InputError, match="reference sampler"):
        SamplerBenchConfig(reference_sampler="ddpm")
    with pytest.raises(InputError, match="rho must be > 0"):
        SamplerBenchConfig(spacing="karras", rho=0.0)
    with pytest.raises(InputError, match="karras spacing only"):
        SamplerBenchConfig(t_min=10)
    with pytest.raises(InputError, match="below the cost"):
        steps_for_nfe("ddim", 1, 2.0, 1000)
    with pytest.raises(InputError, match="more than the 1000 timesteps from t_max"):
        steps_for_nfe("ddim", 1001, 1.0, 1000)
    assert set(_BENCH_REFERENCE_SAMPLERS) == set(REFERENCE_SAMPLERS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samplers", "heun,rk4"], "unknown sampler 'rk4'; choose one of"),
        (["--nfe", "0,5"], "NFE must be >= 1"),
        (["--nfe", "5,ten"], "'ten' is not an integer"),
        (["--nfe", "5,600"], "must exceed the largest"),
        (["--rho", "0"], "--rho"),
        (["--t-min", "10"], "t_min applies to karras spacing only"),
    ],
)
def test_cli_bad_input(tmp_path, args, message):
    result = CliRunner().invoke(main, ["bench", "samplers", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_cli_choice_errors(tmp_path):
    out = ["--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, ["bench", "samplers", "--spacing", "leading", *out])
    assert result.exit_code == 2 and "leading" in result.output
    result = CliRunner().invoke(main, ["bench", "samplers", "--model", str(tmp_path), *out])
    assert result.exit_code == 2 and "config.json" in result.output
    result = CliRunner().invoke(main, ["bench", "samplers", "--device", "gpu0", *out])
    assert result.exit_code == 2 and "is not a device" in result.output
    (tmp_path / "file").write_text("x")
    args = ["bench", "samplers", "--out", str(tmp_path / "file")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--out" in result.output and "is a file" in result.output


def test_cli_runs_on_micro_model(tmp_path):
    save_model(_micro(64), tmp_path / "model")
    out = tmp_path / "bench"
    args = ["bench", "samplers", "--model", str(tmp_path / "model"), "--n", "2"]
    args += ["--samplers", "ddim,heun", "--nfe", "2", "--reference-nfe", "6"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Verdict:" in result.output and "| heun | " in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES.values())
    data = json.loads((out / FILES["json"]).read_text())
    assert [(r["sampler"], r["nfe"]) for r in data["rows"]] == [("ddim", 2), ("heun", 1)]


def test_cli_karras_t_min_reaches_the_runs_not_the_reference(tmp_path):
    save_model(_micro(64), tmp_path / "model")
    args = ["bench", "samplers", "--model", str(tmp_path / "model"), "--n", "1"]
    args += ["--samplers", "ddim", "--nfe", "3", "--reference-nfe", "6", "--spacing", "karras"]
    rmse = {}
    for t_min in ("0", "40"):
        out = tmp_path / f"bench{t_min}"
        result = CliRunner().invoke(main, [*args, "--t-min", t_min, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert f"karras (rho 7, down to t = {t_min})" in result.output
        data = json.loads((out / FILES["json"]).read_text())
        assert data["config"]["t_min"] == int(t_min)
        rmse[t_min] = (data["reference"]["error_estimate"], data["rows"][0]["rel_rmse"])
    assert rmse["0"][0] == rmse["40"][0]  # the same trailing reference
    assert rmse["0"][1] != rmse["40"][1]  # another grid for the benchmarked run
