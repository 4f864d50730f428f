"""Mixed-adapter sampling: frame i of an unmerged mixed run equals frame i of the merged model of
adapter i % K (same seed, each adapter with its own MaskR² spec), guided and unguided; the
refusals; and ``tte2tee sample --unmerged --adapters``."""

import copy
import json

import pytest
import torch
from click.testing import CliRunner
from test_adapter import lora_model, micro_base
from tte2tee_fast.kernels.fused_lora import FusedLoRALinear

from tte2tee_fast.adapt.adapter import save_adapter
from tte2tee_fast.adapt.merge import merge_adapter
from tte2tee_fast.cli import main
from tte2tee_fast.condition.maskr2 import MaskR2Spec, builtin_spec, remap_one_hot
from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.multi_adapter import (
    MixedAdapters,
    fuse_mixed_adapters,
    parse_adapter_list,
)
from tte2tee_fast.generate.sample import SampleConfig, sample_batch, sample_labels
from tte2tee_fast.models import from_preset, load_model, model_hash, save_model

pytestmark = pytest.mark.usefixtures("one_thread")

# a second TEE spec that differs from the built-in tee->tte: LV on the myocardium channel and
# the right heart on the LV-cavity channel
SWAPPED = MaskR2Spec.from_json(
    {
        "name": "tee->tte-swapped",
        "source_schema": "tee",
        "rules": [
            {"op": "identity", "labels": ["outside"], "channel": "outside"},
            {"op": "identity", "labels": ["background"], "channel": "background"},
            {"op": "identity", "labels": ["la"], "channel": "la"},
            {"op": "identity", "labels": ["lv"], "channel": "lv_myocardium"},
            {"op": "repurpose", "labels": ["ra", "rv"], "channel": "lv_cavity"},
        ],
    }
)


def _save(base, folder, spec, rank, alpha, seed):
    """A random ``mlp`` adapter (peft add_adapter, non-zero lora_B) saved with ``spec``."""
    model = lora_model(base, "mlp", rank, alpha, seed=seed)
    save_adapter(model, model_hash(base), spec, "mlp", folder)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = micro_base()
    root = tmp_path_factory.mktemp("adapters")
    dirs = [
        _save(base, root / "a0", builtin_spec("tee->tte"), 1, 4.0, seed=1),
        _save(base, root / "a1", SWAPPED, 3, 3.0, seed=2),
    ]
    gen = torch.Generator().manual_seed(5)
    # TEE label maps: blocks of random labels (values 0..5), so every label occurs
    labels = torch.randint(0, 6, (5, 8, 8), generator=gen).repeat_interleave(4, 1)
    labels = labels.repeat_interleave(4, 2)  # [5, 32, 32]
    return base, dirs, labels


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
@pytest.mark.parametrize(
    ("guidance", "batch_size"), [(1.0, 4), (2.5, 3)], ids=["unguided-b4", "cfg-b3"]
)
def test_mixed_frames_equal_merged_models(setup, guidance, batch_size):
    base, dirs, labels = setup
    config = SampleConfig(sampler="ddim", steps=3, guidance=guidance, batch_size=batch_size)
    model = copy.deepcopy(base)
    mixed = fuse_mixed_adapters(model, dirs)
    assert mixed.specs == (builtin_spec("tee->tte"), SWAPPED)
    assert sum(isinstance(m, FusedLoRALinear) for m in model.modules()) == 12  # micro's Linears
    merged = [merge_adapter(copy.deepcopy(base), d) for d in dirs]
    # the sampling path (clamped frames)
    got = sample_labels(model, labels, mixed.specs[0], config, progress=False, adapters=mixed)
    want = [
        sample_labels(m, labels, spec, config, progress=False)
        for m, spec in zip(merged, mixed.specs, strict=True)
    ]
    for i in range(labels.shape[0]):
        assert _rel(got[i], want[i % 2][i]) <= 1e-4, i
    # a random micro model saturates clamped frames: compare the raw sampler output too, through
    # the pieces sample_labels uses (per-row remap + adapter rows), one batch of all frames
    idx = torch.arange(labels.shape[0])
    with mixed.rows(model, idx):
        raw = sample_batch(model, mixed.remap(labels, idx), idx, config, clamp=False)

    def raw_merged(k: int, spec: MaskR2Spec) -> torch.Tensor:
        return sample_batch(merged[k], remap_one_hot(labels, spec), idx, config, clamp=False)

    raw_want = [raw_merged(k, spec) for k, spec in enumerate(mixed.specs)]
    for i in range(labels.shape[0]):
        assert _rel(raw[i], raw_want[i % 2][i]) <= 1e-4, i
        assert _rel(raw_want[0][i], raw_want[1][i]) > 1e-2  # the adapters draw different frames
    # the per-row spec matters: adapter 1 fed through adapter 0's spec draws other frames
    assert _rel(raw_merged(1, mixed.specs[0])[1], raw_want[1][1]) > 1e-3
    # the index is restored after the run
    assert all(m.adapter_index is None for m in model.modules() if isinstance(m, FusedLoRALinear))


def test_remap_uses_each_rows_spec(setup):
    _, dirs, labels = setup
    mixed = MixedAdapters(tuple(dirs), (builtin_spec("tee->tte"), SWAPPED))
    frames = torch.arange(7, 12)  # adapters 1 0 1 0 1
    cond = mixed.remap(labels, frames)
    for row, frame in enumerate(frames.tolist()):
        spec = mixed.specs[frame % 2]
        lut = spec.lookup_table()
        want = torch.nn.functional.one_hot(lut[labels[row]], 5).permute(2, 0, 1).float()
        assert torch.equal(cond[row], want), row


def test_refusals(setup, tmp_path):
    base, dirs, _ = setup
    tte = _save(base, tmp_path / "tte", builtin_spec("tte->tte"), 2, 2.0, seed=3)
    with pytest.raises(InputError, match="different schemas") as err:
        fuse_mixed_adapters(copy.deepcopy(base), [dirs[0], tte])
    assert "tee" in str(err.value) and "tte" in str(err.value)
    with pytest.raises(InputError, match="does not exist"):
        fuse_mixed_adapters(copy.deepcopy(base), [dirs[0], tmp_path / "nope"])
    with pytest.raises(InputError, match="trained on base"):
        fuse_mixed_adapters(micro_base(seed=7), dirs)
    conv = tmp_path / "conv"
    save_adapter(lora_model(base, "conv", 1), model_hash(base), SWAPPED, "conv", conv)
    with pytest.raises(InputError, match=r"nn\.Linear targets only"):
        fuse_mixed_adapters(copy.deepcopy(base), [dirs[0], conv])
    assert parse_adapter_list(" a, b ,") == ("a", "b")
    with pytest.raises(InputError, match="names no adapter"):
        parse_adapter_list(" , ")


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    save_model(from_preset("micro", sample_size=64), root / "base")
    base = load_model(root / "base")
    a0 = _save(base, root / "a0", builtin_spec("tee->tte"), 1, 1.0, seed=1)
    a1 = _save(base, root / "a1", SWAPPED, 2, 2.0, seed=2)
    other = from_preset("micro", sample_size=64)
    foreign = _save(other, root / "foreign", SWAPPED, 1, 1.0, seed=3)
    return root / "base", a0, a1, foreign


def _one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


def test_cli_sample_unmerged(cli_setup, tmp_path):
    base, a0, a1, foreign = cli_setup
    common = ["sample", "--model", str(base), "--masks", "phantom-tee", "--steps", "2"]
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main, [*common, "--n", "3", "--unmerged", "--adapters", f"{a0},{a1}", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["adapters"] == [str(a0), str(a1)] and report["adapter_of_frame"] == "i % 2"
    assert report["remap"] == "tee->tte,tee->tte-swapped"
    assert len(list((out / "images").iterdir())) == 3

    runner = CliRunner()
    one = [*common, "--n", "1", "--out", str(tmp_path / "x")]
    line = _one_error_line(runner.invoke(main, [*one, "--unmerged", "--adapters", f"{a0},nope"]))
    assert "nope" in line and "does not exist" in line
    line = _one_error_line(runner.invoke(main, [*one, "--unmerged", "--adapters", f"{foreign}"]))
    assert "trained on base" in line and "foreign" in line
    line = _one_error_line(runner.invoke(main, [*one, "--unmerged"]))
    assert "--adapters" in line
    line = _one_error_line(
        runner.invoke(main, [*one, "--unmerged", "--adapters", str(a0), "--remap", "tee->tte"])
    )
    assert "--remap" in line
    assert not (tmp_path / "x").exists()
