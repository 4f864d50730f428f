"""Distilled few-step students (adapt/distill.py, generate/distill_fit.py, ``tte2tee distill``):
the widened LoRA starts as the teacher (against peft's own adapter), the landing points are the
dense loop's, training lowers the held-out error below the teacher's with the same plan and the
written adapter reproduces it when reloaded, an interrupted run resumes to the same weights, the
refusals, and the CLI through generate on two backends with ``--sampler auto``."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import error_line, generate_on, random_micro
from safetensors.torch import load_file
from test_adapter import make_adapter

from tte2tee_fast.adapt.adapter import WEIGHTS_NAME, attach_adapter, read_adapter
from tte2tee_fast.adapt.distill import (
    DistillConfig,
    distill,
    grid_indices,
    plan_rel_rmse,
    student_frames,
    student_lora,
)
from tte2tee_fast.cli import main
from tte2tee_fast.condition.maskr2 import MaskR2Remap, builtin_spec
from tte2tee_fast.diffusion.dense import run_dense_plan, sampler_plan
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import model_hash
from tte2tee_fast.training.plan_tune import TeacherConfig, plan_error, teacher_trajectories

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = builtin_spec("tee->tte")
S = 32  # micro sample size


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A v-prediction micro base, a random all-targets rank-1 adapter, and that teacher's
    trajectories (unipc 16 from 999) on 6 training and 3 held-out (noise, mask) pairs; built
    once for the module (the tests copy the base and only read the rest)."""
    tmp_path = tmp_path_factory.mktemp("teacher")
    base = random_micro(0, prediction_type="v").eval()
    adapter_dir = tmp_path / "teacher-adapter"
    make_adapter(base, adapter_dir, preset="all", rank=1)
    net = attach_adapter(copy.deepcopy(base), adapter_dir)
    remap = MaskR2Remap(SPEC)

    def eps_fn(x, t, lab):
        return net(x, t, remap(lab))

    rng = np.random.default_rng(0)
    trajs = []
    for name, n, seed in (("train", 6, 1), ("val", 3, 2)):
        labels = rng.integers(0, 6, size=(n, S, S)).astype(np.int64)
        cfg = TeacherConfig(steps=16, batch_size=3, seed=seed)
        trajs.append(teacher_trajectories(eps_fn, labels, cfg, tmp_path / name, {"t": 1}, False))
    plan = sampler_plan("unipc", 2, "trailing", t_max=999)
    return base, read_adapter(adapter_dir), net, eps_fn, trajs[0], trajs[1], plan


def test_widened_student_starts_as_the_teacher(teacher) -> None:
    base, adapter, net, _, *_ = teacher
    student, preset, rank = student_lora(copy.deepcopy(base), adapter, "mlp", 3, seed=0)
    assert (preset, rank) == ("all", 4)
    x = torch.randn(2, 1, S, S, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 400])
    cond = MaskR2Remap(SPEC)(torch.randint(0, 6, (2, S, S)))
    with torch.no_grad():
        np.testing.assert_allclose(
            student.module(x, t, cond).numpy(), net(x, t, cond).numpy(), atol=1e-6
        )
    # the added components train: A random (peft's init), B zero
    a = next(p for n, p in student.named_parameters() if "lora_A" in n)
    assert a.shape[0] == 4 and a[1:].abs().sum() > 0 and a.requires_grad
    fresh, preset, rank = student_lora(copy.deepcopy(base), None, "mlp", 2, seed=0)
    assert (preset, rank) == ("mlp", 2)
    with torch.no_grad():
        np.testing.assert_allclose(
            fresh.module(x, t, cond).numpy(), base(x, t, cond).numpy(), atol=1e-6
        )


def test_landing_points_are_the_dense_loop(teacher) -> None:
    _, _, net, _, train, _, plan = teacher
    x_T = torch.from_numpy(np.array(train.states[0, :3]))[:, None]
    cond = MaskR2Remap(SPEC)(torch.from_numpy(train.labels[:3]))
    seen = []
    ts = [torch.full((3,), s) for s in plan.timesteps]

    def eps(x, k):
        seen.append(x.clone())
        return net(x, ts[k], cond)

    with torch.no_grad():
        frame = run_dense_plan(eps, x_T, plan)
        outs = student_frames(net, plan, x_T, cond)
    assert len(outs) == plan.nfe
    torch.testing.assert_close(outs[0], seen[1])
    torch.testing.assert_close(outs[-1], frame)
    assert grid_indices(plan, train) == [list(train.timesteps).index(plan.timesteps[1]), 16]


def _run(teacher, out, steps, **kw):
    """Distil ``steps`` steps into ``out``, resuming the run already there."""
    base, adapter, _, _, train, val, plan = teacher
    opts = {"batch_size": 3, "lr": 3e-3, "val_every": 2, "checkpoint_every": 2} | kw
    cfg = DistillConfig(steps=steps, **opts)
    resume = (out / "checkpoint").is_dir()
    ident = {"t": 1}
    b = copy.deepcopy(base)
    return distill(
        cfg, b, model_hash(base), adapter, SPEC, plan, train, val, out, ident, resume, False
    )


def test_training_lowers_the_held_out_error_and_the_adapter_reproduces_it(teacher, tmp_path):
    base, _, _, eps_fn, _, val, plan = teacher
    res = _run(teacher, tmp_path / "s", 8)
    assert res.step == 8 and res.best_step > 0
    assert res.val_rel_rmse < 0.9 * res.val_rel_rmse_teacher
    # independent: the teacher's error with this plan, and the written adapter reloaded by peft
    assert res.val_rel_rmse_teacher == pytest.approx(plan_error(eps_fn, val, slice(0, 3), plan, 3))
    student = attach_adapter(copy.deepcopy(base), tmp_path / "s")
    remap = MaskR2Remap(SPEC)
    err = plan_error(lambda x, t, lab: student(x, t, remap(lab)), val, slice(0, 3), plan, 3)
    assert err == pytest.approx(res.val_rel_rmse, rel=1e-5)
    assert plan_rel_rmse(student, remap, plan, val) == pytest.approx(err, rel=1e-5)
    log = [json.loads(ln) for ln in (tmp_path / "s" / "distill_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(9))
    meta = json.loads((tmp_path / "s" / "tte2tee.json").read_text())
    assert meta["rank"] == 5 and meta["maskr2"]["name"] == "tee->tte"
    assert meta["base_model_hash"] == model_hash(base)


def test_a_resumed_run_ends_where_a_straight_run_ends(teacher, tmp_path) -> None:
    straight = _run(teacher, tmp_path / "a", 6)
    _run(teacher, tmp_path / "b", 4)
    resumed = _run(teacher, tmp_path / "b", 6)
    assert resumed.step == 6 and resumed.best_step == straight.best_step
    wa = load_file(str(tmp_path / "a" / WEIGHTS_NAME))
    wb = load_file(str(tmp_path / "b" / WEIGHTS_NAME))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
    la = (tmp_path / "a" / "distill_log.jsonl").read_text().splitlines()
    lb = (tmp_path / "b" / "distill_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lb] == list(range(7))
    assert [json.loads(x)["loss"] for x in la[1:]] == [json.loads(x)["loss"] for x in lb[1:]]


def test_refusals(teacher, tmp_path) -> None:
    base, adapter, _, _, train, val, plan = teacher
    _run(teacher, tmp_path / "r", 2)
    with pytest.raises(InputError, match="other config"):
        _run(teacher, tmp_path / "r", 4, lr=1e-3)
    with pytest.raises(InputError, match="already holds"):
        distill(
            DistillConfig(steps=2),
            copy.deepcopy(base),
            model_hash(base),
            adapter,
            SPEC,
            plan,
            train,
            val,
            tmp_path / "r",
            {"t": 1},
            resume=False,
            progress=False,
        )
    off = sampler_plan("unipc", 3, "trailing", t_max=999)  # 666, 333: not on the 16-step grid
    with pytest.raises(InputError, match="lie on its grid"):
        grid_indices(off, train)
    with pytest.raises(InputError, match="positive integer"):
        DistillConfig(extra_rank=0)


def test_cli_distils_a_student_that_generate_runs_with_auto_on_two_backends(tmp_path) -> None:
    from tte2tee_fast.models import save_model

    model = str(tmp_path / "micro")
    save_model(random_micro(0, prediction_type="v").eval(), model)
    common = ["--model", model, "--masks", "phantom:tte"]
    out = tmp_path / "student"
    args = [
        "distill",
        *common,
        "--adapter",
        "none",
        "--nfe",
        "2",
        "--pairs",
        "4",
        "--val-pairs",
        "2",
        "--teacher-steps",
        "16",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--extra-rank",
        "2",
        "--targets",
        "mlp",
        "--backend",
        "torch",
        "--precision",
        "fp32",
        "--no-progress",
        "--out",
        str(out),
    ]
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 0, run.output
    assert "2 NFE" in run.output and "held-out pairs" in run.output
    plan = json.loads((out / "plan.json").read_text())
    assert plan["source"]["val_rel_rmse"] > 0 and plan["source"]["steps_run"] == 3
    outs = generate_on(("torch", "ort"), [*common, "--adapter", str(out), "--n", "2"], tmp_path)
    for _, conf in outs.values():  # auto took the student's own plan
        assert f"plan:{out / 'plan.json'}" in json.dumps(json.loads(conf))
    assert np.abs(outs["torch"][0] - outs["ort"][0]).max() <= 1
    again = CliRunner().invoke(main, args)
    error_line(again, "already holds")
    same_seed = CliRunner().invoke(
        main, [*args[:-2], "--val-seed", "2000", "--out", str(tmp_path / "x")]
    )
    error_line(same_seed, "--val-seed")


@pytest.mark.slow
@pytest.mark.parametrize("nfe", [2, 4])
def test_packaged_student_lands_closer_to_the_teachers_ode_on_fresh_pairs(nfe, tmp_path) -> None:
    """The packaged TEE students against their teacher (base + phantom-tee) on masks and noise
    neither was trained or selected on, torch fp32 (they were trained on OpenVINO bf16 pairs)."""
    from tte2tee_fast.diffusion.dense import load_plan
    from tte2tee_fast.generate.auto_sampler import auto_sampler
    from tte2tee_fast.generate.backends import build_denoiser
    from tte2tee_fast.generate.sources import open_mask_source
    from tte2tee_fast.packaged import resolve_asset

    folder = resolve_asset(f"phantom-tee-distill{nfe}")
    teacher = build_denoiser(None, "phantom-tee", "torch", "fp32")
    student = build_denoiser(None, str(folder), "torch", "fp32")
    plan = load_plan(folder / "plan.json")
    assert plan.nfe == nfe and plan.source["model"]["merged_hash"] == student.info["merged_hash"]
    assert plan.source["teacher"]["model"]["merged_hash"] == teacher.info["merged_hash"]
    assert auto_sampler(student.info["merged_hash"], 1.0, folder) == f"plan:{folder / 'plan.json'}"
    source = open_mask_source("phantom:tee", 128, seed=11)
    labels = np.stack([source.mask(i)[0] for i in range(3)]).astype(np.int64)
    cfg = TeacherConfig(steps=100, batch_size=3, seed=11)
    traj = teacher_trajectories(teacher, labels, cfg, tmp_path / "t", {"t": 1}, progress=False)
    err_teacher = plan_error(teacher, traj, slice(0, 3), plan, 3)
    err_student = plan_error(student, traj, slice(0, 3), plan, 3)
    assert err_student < 0.8 * err_teacher, (err_student, err_teacher)
