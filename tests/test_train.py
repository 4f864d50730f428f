"""Training loop: a micro run reloads bit-exactly, resume continues the loss curve bitwise,
the data order and LR schedule are pure functions of (seed, step), checkpoints are pickle-free,
and the CLI refuses ambiguous output folders."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from tte2tee_fast.cli import main
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import load_model
from tte2tee_fast.training.checkpoint import optimizer_from_flat, optimizer_to_flat
from tte2tee_fast.training.loop import batch_indices, build_pool, lr_at
from tte2tee_fast.training.train import TrainConfig, train

# 64 px is the phantom's smallest size; batch 2 keeps a step well under a second on 2 cores
FAST = dict(
    preset="micro",
    size=64,
    num_cases=8,
    batch_size=2,
    warmup=3,
    lr=1e-3,
    bf16=False,
    checkpoint_every=5,
    log_every=3,
    ema_decay=0.9,
    seed=3,
)


@pytest.fixture(scope="module")
def run20(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run20"
    return train(TrainConfig(steps=20, **FAST), out, progress=False)


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _equal_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_micro_run_writes_models_that_reload_bit_exactly(run20):
    out = run20.out_dir
    assert run20.step == 20 and len(run20.losses) == 20
    assert all(math.isfinite(v) for v in run20.losses)
    assert _equal_state(load_model(out / "model"), run20.model)
    assert _equal_state(load_model(out / "ema"), run20.ema_model)
    assert not _equal_state(run20.model, run20.ema_model)  # the EMA is really an average
    assert load_model(out / "model").config.sample_size == 64
    # the saved config reproduces the run's options; the log has one line per step
    assert TrainConfig.from_json(
        json.loads((out / "train_config.json").read_text())
    ) == TrainConfig(steps=20, **FAST)
    # a log line every 3 steps and at every checkpoint (5), with the mean loss since the last
    log = _log(out)
    steps = [3, 5, 6, 9, 10, 12, 15, 18, 20]
    assert [e["step"] for e in log] == steps
    means = [sum(run20.losses[a:b]) / (b - a) for a, b in zip([0, *steps], steps, strict=False)]
    assert [e["loss"] for e in log] == pytest.approx(means, rel=1e-12)
    assert log[0]["lr"] == pytest.approx(1e-3) and log[0]["steps_per_s"] > 0
    # checkpoint: safetensors + JSON only
    ckpt = sorted(p.name for p in (out / "checkpoint").iterdir())
    assert ckpt == [
        "ema.safetensors",
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "state.json",
    ]
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 20


def test_resume_continues_the_loss_curve_bitwise(run20, tmp_path):
    out = tmp_path / "split"
    first = train(TrainConfig(steps=10, **FAST), out, progress=False)
    second = train(TrainConfig(steps=20, **FAST), out, resume=True, progress=False)
    assert second.start_step == 10
    assert first.losses + second.losses == run20.losses  # exact float equality
    assert _equal_state(second.model, run20.model)
    assert _equal_state(second.ema_model, run20.ema_model)
    assert [(e["step"], e["loss"]) for e in _log(out)] == [
        (e["step"], e["loss"]) for e in _log(run20.out_dir)
    ]


def test_output_folder_guards(run20, tmp_path):
    with pytest.raises(InputError, match="pass --resume"):
        train(TrainConfig(steps=20, **FAST), run20.out_dir, progress=False)
    with pytest.raises(InputError, match="no checkpoint"):
        train(TrainConfig(steps=20, **FAST), tmp_path / "empty", resume=True, progress=False)
    changed = TrainConfig(steps=30, **{**FAST, "lr": 5e-4})
    with pytest.raises(InputError, match=re.escape("lr: checkpoint 0.001, now 0.0005")):
        train(changed, run20.out_dir, resume=True, progress=False)


def test_bf16_autocast_step_keeps_fp32_parameters(tmp_path):
    res = train(TrainConfig(steps=2, **{**FAST, "bf16": True}), tmp_path / "bf16", progress=False)
    assert all(math.isfinite(v) for v in res.losses)
    assert all(p.dtype == torch.float32 for p in res.model.parameters())


def test_batch_order_is_a_pure_function_of_seed_and_step():
    n, b = 10, 4
    stream = torch.cat([batch_indices(7, s, b, n) for s in range(10)])  # 40 draws = 4 epochs
    for e in range(4):
        assert sorted(stream[e * n : (e + 1) * n].tolist()) == list(range(n))  # a permutation
    assert not torch.equal(stream[:n], stream[n : 2 * n])  # a new order each epoch
    assert torch.equal(batch_indices(7, 6, b, n), stream[24:28])  # no hidden state
    assert not torch.equal(batch_indices(8, 0, b, n), batch_indices(7, 0, b, n))


def test_lr_schedule_formula():
    c = TrainConfig(lr=1e-3, warmup=10, steps=110, lr_schedule="cosine")
    assert lr_at(0, c) == pytest.approx(1e-4) and lr_at(9, c) == pytest.approx(1e-3)
    assert lr_at(60, c) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, c) == pytest.approx(0.0, abs=1e-15)
    const = TrainConfig(lr=1e-3, warmup=0)
    assert lr_at(0, const) == lr_at(10**6, const) == 1e-3


def test_optimizer_state_roundtrips_through_safetensors(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        net(torch.randn(4, 3)).square().sum().backward()
        opt.step()
    tensors, index = optimizer_to_flat(opt.state_dict())
    save_file(tensors, tmp_path / "opt.safetensors")
    (tmp_path / "opt.json").write_text(json.dumps(index))
    net2 = torch.nn.Linear(3, 2)
    net2.load_state_dict(net.state_dict())
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1.0)
    opt2.load_state_dict(
        optimizer_from_flat(
            load_file(tmp_path / "opt.safetensors"), json.loads((tmp_path / "opt.json").read_text())
        )
    )
    assert opt2.param_groups[0]["lr"] == 1e-2 and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    x = torch.randn(4, 3)
    for o, n in ((opt, net), (opt2, net2)):
        o.zero_grad()
        n(x).square().sum().backward()
        o.step()
    assert torch.equal(net.weight, net2.weight) and torch.equal(net.bias, net2.bias)


def test_config_validation():
    with pytest.raises(InputError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(InputError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(InputError, match="unknown training options"):
        TrainConfig.from_json({"stepz": 3})


def test_cli_train_and_resume(tmp_path):
    out = str(tmp_path / "cli")
    args = ["train", "--data", "phantom-tte", "--preset", "micro", "--size", "64"]
    args += ["--batch-size", "2", "--num-cases", "4", "--no-bf16", "--out", out]
    runner = CliRunner()
    res = runner.invoke(main, [*args, "--steps", "2"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli" / "ema" / "config.json").is_file()
    again = runner.invoke(main, [*args, "--steps", "3"])
    assert again.exit_code == 2 and "pass --resume" in again.output
    # --resume takes the saved options; only the ones given on the command line change
    res = runner.invoke(main, ["train", "--out", out, "--resume", "--steps", "3"])
    assert res.exit_code == 0, res.output
    state = json.loads((tmp_path / "cli" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["config"]["batch_size"] == 2
    bad = runner.invoke(main, ["train", "--out", str(tmp_path / "none"), "--resume"])
    assert bad.exit_code == 2 and "no checkpoint" in bad.output


def test_cli_defaults_match_train_config():
    """The CLI keeps its defaults literal (no torch import for --help): they must agree."""
    cmd = main.commands["train"]
    defaults = TrainConfig()
    for param in cmd.params:
        field = param.name
        if hasattr(defaults, field):
            assert param.default == getattr(defaults, field), field


def test_pool_with_augmented_copies():
    base = build_pool(TrainConfig(preset="micro", size=64, num_cases=3), progress=False)
    aug = build_pool(TrainConfig(preset="micro", size=64, num_cases=3, augment=2), progress=False)
    assert aug.images.shape == (9, 1, 64, 64) and aug.labels.shape == (9, 64, 64)
    assert torch.equal(aug.images[:3], base.images) and torch.equal(aug.labels[:3], base.labels)
    assert not torch.equal(aug.labels[3:6], base.labels)  # warped copies
    assert not torch.equal(aug.labels[3:6], aug.labels[6:9])  # each copy its own draw
    assert set(aug.labels.unique().tolist()) <= set(base.schema.values)
    assert float(aug.images.min()) >= -1.0 and float(aug.images.max()) <= 1.0


def test_init_starts_a_v_run_from_an_eps_model(run20, tmp_path):
    """--init copies the weights (the first step starts from them); v is saved in the config."""
    out = tmp_path / "v"
    cfg = TrainConfig(**{**FAST, "steps": 1, "prediction": "v", "init": str(run20.out_dir / "ema")})
    result = train(cfg, out, progress=False)
    src = load_model(run20.out_dir / "ema")
    assert result.model.config.prediction_type == "v"
    assert load_model(out / "ema").config.prediction_type == "v"
    # one small step from the init: every tensor moved by less than the lr allows, not re-drawn
    moved = max(
        float((p - src.state_dict()[k]).abs().max()) for k, p in result.model.state_dict().items()
    )
    assert 0 < moved < 3 * FAST["lr"]


def test_init_refuses_another_architecture(run20, tmp_path):
    cfg = TrainConfig(**{**FAST, "preset": "tiny", "steps": 1, "init": str(run20.out_dir / "ema")})
    with pytest.raises(InputError, match=r"--init .*channel_mult \(\[1, 2\] vs \[1, 2, 4, 8\]\)"):
        train(cfg, tmp_path / "t", progress=False)
    assert not (tmp_path / "t" / "ema").exists()
