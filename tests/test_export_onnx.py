"""ONNX export of the merged denoiser: ONNX Runtime against an unmerged peft reference in torch
(random and phantom labels, dynamic and fixed batch, guided variant against cfg_eps_fn, the
null label), metadata round trip, atomic write."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_helpers import engines, rel, tee_inputs, torch_eps, unmerged_reference
from tte2tee_fast.export.metadata import file_sha256, read_metadata
from tte2tee_fast.export.onnx_export import export_onnx, load_merged

from tte2tee_fast.adapt.adapter import WEIGHTS_NAME
from tte2tee_fast.condition.maskr2 import builtin_spec, remap_one_hot
from tte2tee_fast.diffusion.guidance import cfg_eps_fn
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import load_model, model_hash

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    return engines(tmp_path_factory)


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run(path, x, t, labels, **extra):
    feed = {"sample": x, "timestep": t, "labels": labels, **extra}
    return session(path).run(["eps"], feed)[0]


@pytest.mark.parametrize("phantom", [False, True])
def test_dynamic_engine_matches_unmerged_torch(eng, phantom):
    ref_model = unmerged_reference(eng)
    for b in (1, 3):
        x, t, labels = tee_inputs(b, seed=b, phantom=phantom)
        ref = torch_eps(ref_model, x, t, labels)
        assert np.abs(ref).max() > 1e-3  # random non-zero weights: a real output
        assert rel(run(eng.dynamic, x, t, labels), ref) <= 1e-4


def test_graph_signature_opset_and_fixed_batch(eng):
    for path, batch in ((eng.dynamic, "batch"), (eng.fixed, 3)):
        model = onnx.load(str(path))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
        ins = {i.name: i.type.tensor_type for i in model.graph.input}
        assert list(ins) == ["sample", "timestep", "labels"]
        dims = [d.dim_param or d.dim_value for d in ins["sample"].shape.dim]
        assert dims == [batch, 1, 32, 32]
        assert ins["labels"].elem_type == onnx.TensorProto.INT64
        assert ins["timestep"].elem_type == onnx.TensorProto.INT64
    x, t, labels = tee_inputs(3, seed=5, phantom=True)
    ref = torch_eps(unmerged_reference(eng), x, t, labels)
    assert rel(run(eng.fixed, x, t, labels), ref) <= 1e-4
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):  # static: batch 2 refused
        run(eng.fixed, x[:2], t[:2], labels[:2])


def test_guided_variant_matches_cfg(eng):
    model = unmerged_reference(eng)
    x, t, labels = tee_inputs(2, seed=7)
    cond = remap_one_hot(torch.from_numpy(labels), builtin_spec("tee->tte"))
    for g in (0.0, 1.0, 3.5):
        with torch.no_grad():
            ref = cfg_eps_fn(model, cond, g)(torch.from_numpy(x), torch.from_numpy(t)).numpy()
        y = run(eng.guided, x, t, labels, guidance=np.array([g], np.float32))
        assert rel(y, ref) <= 1e-4


def test_null_label_is_all_zero_channels(eng):
    model = unmerged_reference(eng)
    x, t, labels = tee_inputs(2, seed=3)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(t), torch.zeros(2, 5, 32, 32)).numpy()
    y = run(eng.dynamic, x, t, np.full_like(labels, -1))
    assert rel(y, ref) <= 1e-4


def test_metadata_round_trip(eng):
    meta = read_metadata(eng.dynamic)
    merged, spec, base_hash, _ = load_merged(eng.base_dir, eng.adapter_dir)
    assert meta["model_hash"] == model_hash(load_model(eng.base_dir)) == base_hash
    assert meta["adapter_hash"] == file_sha256(eng.adapter_dir / WEIGHTS_NAME)
    assert meta["merged_hash"] == model_hash(merged) != meta["model_hash"]
    assert meta["maskr2"] == builtin_spec("tee->tte").to_json() == spec.to_json()
    assert (meta["schema"], meta["preset"], meta["sample_size"]) == ("tee", "micro", 32)
    assert (meta["label_channels"], meta["prediction_type"]) == (5, "eps")
    assert (meta["schedule"], meta["batch"], meta["variant"]) == ("cosine:1000", None, "eps")
    assert read_metadata(eng.fixed)["batch"] == 3
    assert read_metadata(eng.guided)["variant"] == "guided"
    raw = {p.key: p.value for p in onnx.load(str(eng.dynamic)).metadata_props}
    assert raw["tte2tee.batch"] == "dynamic" and raw["tte2tee.schema"] == "tee"


def test_no_adapter_uses_the_model_spec(eng, tmp_path):
    path = export_onnx(eng.base_dir, None, tmp_path / "base.onnx", batch=2)
    meta = read_metadata(path)
    assert meta["schema"] == "tte" and meta["adapter_hash"] == ""
    assert meta["merged_hash"] == meta["model_hash"]
    x, t, _ = tee_inputs(2, seed=1)
    labels = np.random.default_rng(0).integers(0, 5, (2, 32, 32)).astype(np.int64)
    cond = torch.nn.functional.one_hot(torch.from_numpy(labels), 5).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        ref = load_model(eng.base_dir)(torch.from_numpy(x), torch.from_numpy(t), cond).numpy()
    assert rel(run(path, x, t, labels), ref) <= 1e-4


def test_atomic_write_and_bad_outputs(eng, tmp_path, monkeypatch):
    out = tmp_path / "e.onnx"
    out.write_bytes(b"old")

    def boom(*a, **k):
        raise RuntimeError("checker failed")

    monkeypatch.setattr(onnx.checker, "check_model", boom)
    with pytest.raises(RuntimeError, match="checker failed"):
        export_onnx(eng.base_dir, eng.adapter_dir, out)
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["e.onnx"]
    monkeypatch.undo()
    with pytest.raises(InputError, match="is a folder"):
        export_onnx(eng.base_dir, None, tmp_path)
    with pytest.raises(InputError, match="opset"):
        export_onnx(eng.base_dir, None, tmp_path / "x.onnx", opset=17)
    with pytest.raises(InputError, match="trained on base"):  # adapter of another base
        from helpers import random_micro

        from tte2tee_fast.models import save_model

        save_model(random_micro(seed=9), tmp_path / "other")
        export_onnx(tmp_path / "other", eng.adapter_dir, tmp_path / "y.onnx")
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()
