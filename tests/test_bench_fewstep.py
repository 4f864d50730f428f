"""``tte2tee bench fewstep`` on a micro model: every method runs on the same held-out masks and
noise, the ODE error is measured against the teacher's converged solution, and the files are
written (a smoke run: no timing assertions)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import error_line
from test_adapter import make_adapter, micro_base

from tte2tee_fast.adapt.distill import DistillConfig
from tte2tee_fast.bench.fewstep import (
    FewStepConfig,
    bench_fewstep,
    default_methods,
    method_nfe,
    write_outputs,
)
from tte2tee_fast.cli import main
from tte2tee_fast.diffusion.dense import sampler_plan
from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.distill_fit import distill_adapter
from tte2tee_fast.models import save_model

pytest.importorskip("monai")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_fewstep_on_a_micro_model(tmp_path) -> None:
    base = micro_base(2, prediction_type="v")  # as the packaged base: the start t = 999 suits it
    save_model(base, tmp_path / "base")
    make_adapter(base, tmp_path / "lora", preset="mlp", rank=1)
    plan = tmp_path / "p.json"
    sampler_plan("unipc", 3, "trailing", t_max=999).save(plan)  # generate's grid, as unipc:3
    # a student of this teacher for that plan, trained at a vanishing learning rate: it is the
    # teacher, so its row must be the plan's (same masks, noise, ODE reference)
    student, plan2 = tmp_path / "student", tmp_path / "p2.json"
    sampler_plan("unipc", 2, "trailing", t_max=999).save(plan2)  # 999, 499: on the 16-step grid
    distill_adapter(
        student,
        2,
        str(plan2),
        str(tmp_path / "base"),
        str(tmp_path / "lora"),
        "phantom:tee",
        pairs=2,
        val_pairs=2,
        teacher_steps=16,
        backend="torch",
        precision="fp32",
        batch_size=2,
        config=DistillConfig(steps=1, batch_size=2, lr=1e-12),
        progress=False,
    )
    config = FewStepConfig(
        methods=(
            "ddpm:4",
            "unipc:3",
            f"plan:{plan}",
            "unipc:8",
            f"plan:{plan2}",
            f"student:{student}",
        ),
        n=4,
        n_ddpm=2,
        n_real=4,
        model=str(tmp_path / "base"),
        adapter=str(tmp_path / "lora"),
        teacher_steps=16,
        backend="torch",
        precision="fp32",
        batch_size=2,
        teacher_dir=str(tmp_path / "teacher"),
    )
    result = bench_fewstep(config, progress=False)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["phantom", *config.methods]
    assert rows["ddpm:4"]["frames"] == 2 and rows["ddpm:4"]["stochastic"]
    assert [rows[m]["nfe"] for m in config.methods] == [4, 3, 3, 8, 2, 2]
    learned = rows[f"student:{student}"]
    assert learned["family"] == "distilled student"
    assert learned["rel_rmse"] == pytest.approx(rows[f"plan:{plan2}"]["rel_rmse"], rel=1e-4)
    other = dataclasses.replace(config, adapter=None, methods=(f"student:{student}",))
    with pytest.raises(InputError, match="another teacher"):
        bench_fewstep(other, progress=False)
    # the plan file is unipc's own plan: the same frames, the same error
    assert rows[f"plan:{plan}"]["rel_rmse"] == pytest.approx(rows["unipc:3"]["rel_rmse"], rel=1e-5)
    # more steps of a convergent solver land closer to the 16-step solution
    assert rows["unipc:8"]["rel_rmse"] < rows["unipc:3"]["rel_rmse"]
    # DDPM's frames are the first n_ddpm: its own score on them is its full score
    assert rows["ddpm:4"]["fidelity_ddpm_frames"] == rows["ddpm:4"]["fidelity"]["mean_dice"]
    with pytest.raises(InputError, match="n_ddpm <= n"):
        FewStepConfig(n=4, n_ddpm=5)
    for r in result["rows"]:
        assert 0.0 <= r["fidelity"]["mean_dice"]["mean"] <= 1.0 and np.isfinite(r["kid"]["mean"])
    files = write_outputs(result, tmp_path / "out")
    assert json.loads(open(files["json"]).read())["rows"][1]["method"] == "ddpm:4"
    assert "| unipc:8 | 8 |" in open(files["md"]).read()
    assert (tmp_path / "out" / "fidelity_vs_nfe.png").stat().st_size > 0


def test_methods_are_checked_and_defaults_name_packaged_plans() -> None:
    with pytest.raises(InputError, match="SAMPLER:STEPS"):
        FewStepConfig(methods=("unipc",))
    with pytest.raises(InputError, match="SAMPLER:STEPS"):
        FewStepConfig(methods=("magic:4",))
    assert method_nfe("heun:3") == 5 and method_nfe("ddpm:1000") == 1000
    methods = default_methods("phantom-tee")
    assert methods[:2] == ("ddpm:1000", "unipc:10")
    for m in methods:
        assert not m.startswith("plan:") or "phantom-tee-nfe" in m
        if m.startswith("student:"):  # a packaged student of the packaged TEE teacher
            assert "phantom-tee-distill" in m and method_nfe(m) == int(m.rsplit("distill", 1)[1])
    res = CliRunner().invoke(main, ["bench", "fewstep", "--methods", "x:1", "--out", "unused"])
    error_line(res, "x:1")
