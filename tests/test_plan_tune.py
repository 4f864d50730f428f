"""Learned step plans (training/plan_tune.py, generate/plan_fit.py, ``tte2tee tune-plan``): the
teacher trajectories against the dense loop run directly, their resume, the greedy least-squares
rows against a teacher they can reproduce exactly, the packed plan against its own fit, and the
CLI with a micro model through generate and the torch-free runtime."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import error_line, generate_on, random_micro

from tte2tee_fast.cli import main
from tte2tee_fast.diffusion.dense import load_plan, run_dense_plan
from tte2tee_fast.diffusion.noise import frame_noise
from tte2tee_fast.errors import InputError
from tte2tee_fast.training.plan_tune import (
    TeacherConfig,
    TuneConfig,
    fitted_plan,
    plan_error,
    rel_rmse,
    teacher_trajectories,
    tune_plan,
)

pytestmark = pytest.mark.usefixtures("one_thread")
H = W = 8


def toy_eps(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A smooth nonlinear per-pixel eps 'network' that depends on t and the label map."""
    tt = t.view(-1, 1, 1, 1).to(x.dtype) / 1000
    lab = labels[:, None].to(x.dtype)
    return torch.tanh(1.2 * x + 0.4 * tt - 0.3 * lab) * (1.1 - 0.3 * tt) + 0.1 * torch.sin(2 * x)


def toy_labels(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 3, size=(n, H, W)).astype(np.int64)


def test_teacher_states_are_the_dense_loop_and_resume(tmp_path) -> None:
    labels, cfg = toy_labels(5), TeacherConfig(steps=12, batch_size=2, seed=3)
    calls = []

    def counting(x, t, lab):
        calls.append(x.shape[0])
        return toy_eps(x, t, lab)

    def dying(x, t, lab):  # the teacher is killed inside its second batch
        if len(calls) >= 12 + 5:
            raise KeyboardInterrupt
        return counting(x, t, lab)

    with pytest.raises(KeyboardInterrupt):
        teacher_trajectories(dying, labels, cfg, tmp_path / "t", {"net": "toy"}, progress=False)
    assert json.loads((tmp_path / "t" / "teacher.json").read_text())["done"] == [0]
    calls.clear()
    traj = teacher_trajectories(counting, labels, cfg, tmp_path / "t", {"net": "toy"}, False)
    assert calls == [2] * 12 + [1] * 12  # batches 1 and 2 only: batch 0 was kept
    # independent: the plan run directly on all pairs, recording its evaluation inputs
    plan, seen = cfg.plan(), []
    x_T = frame_noise(3, list(range(5)), (1, H, W))
    lab = torch.from_numpy(labels)

    def eps(x, k):
        seen.append(x[:, 0].numpy().copy())
        return toy_eps(x, torch.full((5,), plan.timesteps[k]), lab)

    sol = run_dense_plan(eps, x_T, plan, clip=True)
    assert traj.timesteps == plan.timesteps and traj.states.shape == (13, 5, H, W)
    np.testing.assert_allclose(traj.states[:12], np.stack(seen), atol=1e-6)
    np.testing.assert_allclose(traj.solution, sol[:, 0].numpy(), atol=1e-6)
    with pytest.raises(InputError, match="another configuration"):
        teacher_trajectories(counting, labels, cfg, tmp_path / "t", {"net": "other"}, False)


def test_greedy_rows_recover_a_teacher_of_the_same_nfe(tmp_path) -> None:
    # a 4-step teacher and a 4-NFE student on its whole grid: the teacher's own coefficients
    # fit with zero residual, so least squares must find them
    labels, cfg = toy_labels(6), TeacherConfig(steps=4, batch_size=3)
    traj = teacher_trajectories(toy_eps, labels, cfg, tmp_path / "t", {}, progress=False)
    plan = tune_plan(toy_eps, traj, TuneConfig(nfe=4, train=4, sweeps=0), 3, progress=False)
    assert plan.timesteps == cfg.plan().timesteps
    np.testing.assert_allclose(np.asarray(plan.coef), np.asarray(cfg.plan().coef), atol=1e-5)
    assert plan.source["train_rel_rmse"] < 1e-5
    assert plan.source["val_rel_rmse"] < 1e-5


def test_tuned_plan_runs_to_the_error_it_reports_and_beats_its_start(tmp_path) -> None:
    labels, cfg = toy_labels(10), TeacherConfig(steps=40, batch_size=5)
    traj = teacher_trajectories(toy_eps, labels, cfg, tmp_path / "t", {}, progress=False)
    plan = tune_plan(toy_eps, traj, TuneConfig(nfe=3, train=6, sweeps=2), 5, progress=False)
    src = plan.source
    assert plan.nfe == 3 and plan.timesteps[0] == traj.timesteps[0]
    assert list(plan.timesteps) == sorted(plan.timesteps, reverse=True)
    # the packed plan, run by the dense loop, reproduces the fit's own training error
    assert plan_error(toy_eps, traj, slice(0, 6), plan, 5) == pytest.approx(
        src["train_rel_rmse"], rel=1e-4
    )
    assert src["train_rel_rmse"] <= src["train_rel_rmse_initial_grid"]
    assert src["history"][0]["train_rel_rmse"] == src["train_rel_rmse_initial_grid"]
    # least squares on the frame can only lower the error of unipc's own last row
    assert src["val_rel_rmse"] < 1.0 and np.isfinite(src["val_rel_rmse_unipc"])
    # a search started from the found timesteps stays there and fits the same rows
    again = tune_plan(
        toy_eps, traj, TuneConfig(3, 6, init=plan.timesteps, sweeps=0), 5, None, False
    )
    assert again.timesteps == plan.timesteps
    np.testing.assert_allclose(np.asarray(again.coef), np.asarray(plan.coef), rtol=1e-9)
    with pytest.raises(InputError, match="not 3"):
        TuneConfig(3, 6, init=(979, 10))
    with pytest.raises(InputError, match="leave none to validate"):
        tune_plan(toy_eps, traj, TuneConfig(nfe=3, train=10), 5, progress=False)


def test_fitted_plan_packs_rows_lower_triangular() -> None:
    rng = np.random.default_rng(1)
    traj_ts = (979, 500, 100, 10)

    class T:
        timesteps = traj_ts

    rows = [np.ones(1), rng.normal(size=2), rng.normal(size=3)]
    from tte2tee_fast.diffusion.spacing import cosine_alphas_cumprod

    plan = fitted_plan(rows, [0, 2], T, cosine_alphas_cumprod(1000), "x", {})
    assert plan.timesteps == (979, 100)
    assert plan.coef[0] == (1.0, 0.0, 0.0) and plan.coef[1][2] == 0.0
    assert rel_rmse(np.ones(3), np.ones(3)) == 0.0


def _micro(tmp_path):
    from tte2tee_fast.models import save_model

    model_dir = tmp_path / "micro"
    # v-prediction, as the packaged base (the default start t = 999 is chosen for it)
    save_model(random_micro(0, prediction_type="v").eval(), model_dir)
    return str(model_dir)


def test_cli_tunes_a_plan_that_generate_and_the_runtime_run(tmp_path) -> None:
    model = _micro(tmp_path)
    common = ["--model", model, "--adapter", "none", "--masks", "phantom:tte"]
    run = CliRunner().invoke(
        main,
        [
            "tune-plan",
            *common,
            "--backend",
            "torch",
            "--nfe",
            "2,3",
            "--pairs",
            "6",
            "--train",
            "4",
            "--teacher-steps",
            "16",
            "--sweeps",
            "1",
            "--batch-size",
            "3",
            "--no-progress",
            "--out",
            str(tmp_path / "plans"),
        ],
    )
    assert run.exit_code == 0, run.output
    assert "NFE 2" in run.output and "NFE 3" in run.output
    plan = load_plan(tmp_path / "plans" / "nfe3.json")
    assert plan.nfe == 3 and plan.source["model"]["backend"] == "torch"
    sampler = f"plan:{tmp_path / 'plans' / 'nfe3.json'}"
    # the plan on two backends (torch, ONNX Runtime): the same frames up to float rounding
    outs = generate_on(("torch", "ort"), [*common, "--sampler", sampler, "--n", "3"], tmp_path)
    for _, conf in outs.values():
        assert "plan_sha256" in conf
    assert np.abs(outs["torch"][0] - outs["ort"][0]).max() <= 1


def test_cli_refusals(tmp_path) -> None:
    def invoke(*args):
        return CliRunner().invoke(main, ["tune-plan", "--no-progress", *args])

    error_line(invoke("--nfe", "3,4", "--out", str(tmp_path / "p.json")), "one file", "2 NFEs")
    error_line(invoke("--pairs", "8", "--train", "8", "--out", str(tmp_path / "p")), "--train 8")
    # TTE masks for the TEE adapter: their values are all valid TEE values, the schema is not
    wrong = invoke("--masks", "phantom:tte", "--backend", "torch", "--out", str(tmp_path / "p"))
    error_line(wrong, "'tte' schema", "'tee' masks")
    assert not (tmp_path / "p").exists()
    bad = invoke("--nfe", "x", "--out", str(tmp_path / "p"))
    assert bad.exit_code == 2 and "expected NFEs" in bad.output


def test_packaged_plan_names_resolve_and_unknown_names_list_them(tmp_path) -> None:
    from tte2tee_fast.packaged import packaged_plans

    with pytest.raises(InputError, match="packaged plans"):
        load_plan("no-such-plan")
    from tte2tee_fast.generate.backends import build_denoiser

    merged = {
        a: build_denoiser(None, a, "torch", "fp32").info["merged_hash"]
        for a in ("phantom-tee", None)
    }
    assert {n.rsplit("-nfe", 1)[0] for n in packaged_plans()} <= {"phantom-tee", "phantom-tte"}
    for name in packaged_plans():  # each made for the packaged model it is named after
        plan = load_plan(name)
        adapter = "phantom-tee" if name.startswith("phantom-tee") else None
        assert plan.nfe == int(name.rsplit("nfe", 1)[1])
        assert plan.source["model"]["merged_hash"] == merged[adapter], name


def test_a_plan_tuned_for_another_model_warns(tmp_path) -> None:
    from tte2tee_fast.generate.backends import FrameConfig, build_frame_fn

    cfg = FrameConfig(model=_micro(tmp_path), adapter=None, backend="torch", precision="fp32")
    with pytest.warns(UserWarning, match="tuned for another model"):
        build_frame_fn(dataclasses.replace(cfg, sampler="plan:phantom-tee-nfe4"))
