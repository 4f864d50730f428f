"""``--sampler auto``: the packaged plan of exactly the network it was tuned on, else unipc."""

from __future__ import annotations

import pytest
from helpers import random_micro

from tte2tee_fast.diffusion.dense import load_plan
from tte2tee_fast.generate.auto_sampler import AUTO_NFE, FALLBACK, auto_sampler
from tte2tee_fast.generate.backends import FrameConfig, build_denoiser, build_frame_fn
from tte2tee_fast.models import save_model
from tte2tee_fast.packaged import plan_file

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("adapter", "plan"), [("phantom-tee", "phantom-tee"), (None, "phantom-tte")]
)
def test_packaged_model_gets_its_plan(adapter, plan) -> None:
    # the hash of the weights loaded now, against the one the plan recorded when it was tuned
    den = build_denoiser(None, adapter, "torch", "fp32", batch=1)
    name = f"{plan}-nfe{AUTO_NFE}"
    assert auto_sampler(den.info["merged_hash"]) == f"plan:{name}"
    recorded = load_plan(plan_file(name)).source["model"]["merged_hash"]
    assert recorded == den.info["merged_hash"]
    # another guidance scale than the plan's: its coefficients do not apply
    assert auto_sampler(den.info["merged_hash"], guidance=2.0) == FALLBACK


def test_other_models_get_unipc(tmp_path) -> None:
    save_model(random_micro(0).eval(), tmp_path / "micro")
    cfg = FrameConfig(model=str(tmp_path / "micro"), adapter=None, backend="torch", steps=3)
    fn = build_frame_fn(cfg)
    assert cfg.sampler == "auto" and fn.config.sampler == FALLBACK
    assert fn.info["sampler"] == FALLBACK and fn.info["steps"] == 3
    assert auto_sampler(None) == FALLBACK


def test_frame_fn_records_the_resolved_plan() -> None:
    fn = build_frame_fn(FrameConfig(backend="torch", precision="fp32", batch_size=1))
    assert fn.info["sampler"] == f"plan:phantom-tee-nfe{AUTO_NFE}"
    assert "plan_sha256" in fn.info and fn.info["nfe"] == AUTO_NFE


def test_an_adapter_folder_plan_comes_first_only_for_its_own_network(tmp_path) -> None:
    import dataclasses

    den = build_denoiser(None, "phantom-tee", "torch", "fp32", batch=1)
    merged = den.info["merged_hash"]
    plan = load_plan(plan_file("phantom-tee-nfe4"))  # any plan made for this network
    folder = tmp_path / "student"
    folder.mkdir()
    plan.save(folder / "plan.json")
    assert auto_sampler(merged, 1.0, folder) == f"plan:{folder / 'plan.json'}"
    # recorded for another network: the packaged plan of this one wins
    model = dict(plan.source["model"], merged_hash="0" * 64)
    dataclasses.replace(plan, source=dict(plan.source, model=model)).save(folder / "plan.json")
    assert auto_sampler(merged, 1.0, folder) == f"plan:phantom-tee-nfe{AUTO_NFE}"
    assert auto_sampler(merged, 1.0, tmp_path / "no-plan-here") == f"plan:phantom-tee-nfe{AUTO_NFE}"
