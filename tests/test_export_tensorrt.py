"""TensorRT engines without a GPU: batch profiles from real ONNX input shapes, the sidecar checks
(another GPU / compute capability / TensorRT version / model hash -> the exact line), the refit
weight map against real exported ONNX files of a micro model (every initializer that stems from
a parameter is mapped, bit for bit; the arrays for an adapter equal the initializers of an ONNX
exported from the merged model), the refit refusals, and the CLI's one line when ``tensorrt``
is missing. The build / run / refit on hardware are ``gpu`` tests, skipped here."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from helpers import error_line
from onnx import numpy_helper
from test_adapter import make_adapter, micro_base
from tte2tee_fast.export.metadata import onnx_props
from tte2tee_fast.export.onnx_export import (
    DenoiserGraph,
    engine_metadata,
    example_inputs,
    export_denoiser,
    export_module,
)
from tte2tee_fast.export.tensorrt import (
    GraphInput,
    TrtEnvironment,
    check_sidecar,
    make_sidecar,
    onnx_inputs,
    parse_batch,
    profile_shapes,
    read_sidecar,
    sidecar_path,
)
from tte2tee_fast.export.trt_refit import (
    WeightMap,
    WeightSource,
    apply_transform,
    build_weight_map,
    check_refit_inputs,
    reference_model,
    refit_weights,
)

from tte2tee_fast.adapt.adapter import load_adapter_meta
from tte2tee_fast.adapt.merge import merge_adapter
from tte2tee_fast.cli import main
from tte2tee_fast.condition.maskr2 import MaskR2Spec, builtin_spec
from tte2tee_fast.data.schemas import TEE
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import model_hash

pytestmark = pytest.mark.usefixtures("one_thread")
NAMES = ["sample", "timestep", "labels"]
SPEC = builtin_spec("tee->tte")


def engine_onnx(
    model: torch.nn.Module, path: Path, batch: int | None = None, dynamo: bool = False
) -> Path:
    """The denoiser engine of ``model`` as ``tte2tee export onnx`` writes it (its exporter,
    TorchScript-based: it renames, folds and deduplicates initializers, the hard case for the
    weight map), or through torch's dynamo exporter."""
    meta = engine_metadata(model_hash(model), model, SPEC, None, batch, False)
    if not dynamo:
        return export_denoiser(model, SPEC, path, meta, batch)
    inputs = example_inputs(32, batch or 2, False)
    dynamic = () if batch else NAMES
    graph = DenoiserGraph(model, SPEC)
    return export_module(graph, inputs, NAMES, ["eps"], path, dynamic, meta, dynamo=True)


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Base, merged (base + an mlp adapter) and perturbed (every parameter changed by one
    affine map) exports, and a fixed-batch one."""
    root = tmp_path_factory.mktemp("trt")
    base = micro_base()
    make_adapter(base, root / "adapter", "mlp", 2)
    merged = merge_adapter(copy.deepcopy(base), root / "adapter")
    other = copy.deepcopy(base)
    with torch.no_grad():  # one map for all: equal tensors stay equal (the exporter dedups them)
        for p in other.parameters():
            p.mul_(1.5).add_(0.01)
    return {
        "base": base,
        "merged": merged,
        "adapter": root / "adapter",
        "base_onnx": engine_onnx(base, root / "base.onnx"),
        "merged_onnx": engine_onnx(merged, root / "merged.onnx"),
        "other_onnx": engine_onnx(other, root / "other.onnx"),
        "fixed_onnx": engine_onnx(base, root / "fixed.onnx", batch=4),
        "root": root,
    }


# ----------------------------------------------------------------------------- profiles


@pytest.mark.parametrize(
    ("text", "want"), [("8", (8, 8, 8)), ("1:8:32", (1, 8, 32)), ("4:4:4", (4, 4, 4))]
)
def test_parse_batch(text, want):
    assert parse_batch(text) == want


@pytest.mark.parametrize("text", ["0", "8:4:16", "1:2", "a:b:c", "1:2:3:4"])
def test_parse_batch_refuses(text):
    with pytest.raises(InputError, match="--batch"):
        parse_batch(text)


def test_profile_shapes_follow_the_onnx_inputs(exported):
    inputs = onnx_inputs(exported["base_onnx"])
    assert [i.name for i in inputs] == NAMES
    assert [i.dtype for i in inputs] == ["float32", "int64", "int64"]
    shapes = profile_shapes(inputs, (1, 8, 32))
    assert shapes == {
        "sample": ((1, 1, 32, 32), (8, 1, 32, 32), (32, 1, 32, 32)),
        "timestep": ((1,), (8,), (32,)),
        "labels": ((1, 32, 32), (8, 32, 32), (32, 32, 32)),
    }


def test_guidance_input_keeps_its_shape():
    inputs = [
        GraphInput("sample", "float32", (None, 1, 8, 8)),
        GraphInput("guidance", "float32", (1,)),
    ]
    shapes = profile_shapes(inputs, (2, 4, 6))
    assert shapes["guidance"] == ((1,), (1,), (1,))
    assert shapes["sample"] == ((2, 1, 8, 8), (4, 1, 8, 8), (6, 1, 8, 8))
    with pytest.raises(InputError, match="symbolic dimension other than the batch"):
        profile_shapes([GraphInput("sample", "float32", (None, 1, None, 8))], (1, 1, 1))


def test_fixed_batch_onnx_accepts_only_its_batch(exported):
    inputs = onnx_inputs(exported["fixed_onnx"])
    assert profile_shapes(inputs, (4, 4, 4))["sample"] == ((4, 1, 32, 32),) * 3
    with pytest.raises(InputError) as err:
        profile_shapes(inputs, (1, 8, 32), "f.onnx")
    assert str(err.value) == (
        "f.onnx has a fixed batch of 4 (input 'sample' [4, 1, 32, 32]): --batch 1:8:32 is not "
        "possible; use --batch 4 or export with a dynamic batch"
    )


# ----------------------------------------------------------------------------- sidecar

H200 = TrtEnvironment("10.13.0.35", "NVIDIA H200", "9.0")


def _sidecar(exported, env=H200, refittable=True):
    meta = onnx_props(onnx.load(str(exported["base_onnx"])))
    shapes = profile_shapes(onnx_inputs(exported["base_onnx"]), (1, 8, 32))
    return make_sidecar(env, "ab" * 32, meta, shapes, "fp16", refittable, "base.onnx")


def test_sidecar_accepts_its_own_machine(exported):
    side = _sidecar(exported)
    check_sidecar(side, H200, "engine e.plan", model_hash(exported["base"]))
    # JSON round trip: what read_sidecar gives back is checked the same way
    json.loads(json.dumps(side))


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            TrtEnvironment("10.13.0.35", "NVIDIA A100-SXM4-80GB", "8.0"),
            "engine e.plan was built for compute capability 9.0 (NVIDIA H200), this GPU "
            "(NVIDIA A100-SXM4-80GB) is 8.0: rebuild it here with `tte2tee export trt`",
        ),
        (
            TrtEnvironment("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0"),
            "engine e.plan was built on GPU 'NVIDIA H200', this GPU is 'NVIDIA H100 80GB "
            "HBM3': rebuild it here with `tte2tee export trt`",
        ),
        (
            TrtEnvironment("11.4.0.106", "NVIDIA H200", "9.0"),
            "engine e.plan was built with TensorRT 10.13.0.35, this is TensorRT 11.4.0.106: "
            "rebuild it with `tte2tee export trt`",
        ),
    ],
)
def test_sidecar_refuses_another_machine(exported, env, line):
    with pytest.raises(InputError) as err:
        check_sidecar(_sidecar(exported), env, "engine e.plan")
    assert str(err.value) == line


def test_sidecar_refuses_another_model(exported):
    want = model_hash(exported["base"])
    with pytest.raises(InputError) as err:
        check_sidecar(_sidecar(exported), H200, "engine e.plan", "f" * 64)
    assert str(err.value) == (
        f"engine e.plan was built from base model {want}, but the given model hashes to {'f' * 64}"
    )


def test_read_sidecar_needs_one(tmp_path, exported):
    plan = tmp_path / "e.plan"
    plan.write_bytes(b"plan")
    with pytest.raises(InputError, match=r"has no sidecar e\.plan\.json"):
        read_sidecar(plan)
    sidecar_path(plan).write_text(json.dumps(_sidecar(exported)))
    assert read_sidecar(plan)["precision"] == "fp16"


# ----------------------------------------------------------------------------- weight map


def test_weight_map_covers_every_parameter_initializer(exported):
    wmap = build_weight_map(exported["base_onnx"], exported["base"])
    base, other = initializers(exported["base_onnx"]), initializers(exported["other_onnx"])
    assert set(base) == set(other)
    # independent reference: initializers that change when every parameter changes
    from_params = {k for k in base if base[k].tobytes() != other[k].tobytes()}
    assert from_params and from_params <= set(wmap.entries)
    assert not from_params & set(wmap.constants)
    for name in wmap.constants:  # constants do not depend on the weights
        assert base[name].tobytes() == other[name].tobytes(), name
    # each mapped array, after its recorded transform, is the initializer bit for bit
    state = {k: v.numpy() for k, v in exported["base"].state_dict().items()}
    kinds = set()
    for name, src in wmap.entries.items():
        arr = apply_transform(state[src.params[0]], src)
        assert arr.dtype == base[name].dtype and arr.tobytes() == base[name].tobytes(), name
        kinds.add(src.transform)
    assert "reshape" in kinds  # folded GroupNorm affines [C] -> [C, 1, 1]


def test_merged_weights_equal_the_merged_export(exported):
    wmap = build_weight_map(exported["base_onnx"], exported["base"])
    arrays = refit_weights(wmap, exported["merged"])
    want = initializers(exported["merged_onnx"])
    base = initializers(exported["base_onnx"])
    changed = {k for k in base if base[k].tobytes() != want[k].tobytes()}
    assert changed and changed <= set(arrays)  # the adapter's layers are refitted
    for name, arr in arrays.items():
        assert arr.shape == want[name].shape and arr.tobytes() == want[name].tobytes(), name


def test_transposed_and_half_initializers_are_matched():
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4)
    w = lin.weight.detach().numpy().copy()
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(
            [], "g", [], [],
            initializer=[
                numpy_helper.from_array(np.ascontiguousarray(w.T), "val_7"),
                numpy_helper.from_array(w.astype(np.float16), "w16"),
                numpy_helper.from_array(lin.bias.detach().numpy().reshape(1, 4), "b"),
                numpy_helper.from_array(np.arange(5, dtype=np.float32), "freqs"),
            ],
        )
    )  # fmt: skip
    wmap = build_weight_map(proto, lin)
    assert wmap.entries["val_7"] == WeightSource(("weight",), "transpose", (6, 4), "float32")
    assert wmap.entries["w16"] == WeightSource(("weight",), "identity", (4, 6), "float16")
    assert wmap.entries["b"] == WeightSource(("bias",), "reshape", (1, 4), "float32")
    assert wmap.constants == ("freqs",)
    with torch.no_grad():
        lin.weight.mul_(2.0)
    arrays = refit_weights(wmap, lin)
    np.testing.assert_array_equal(arrays["val_7"], (2.0 * w).T)
    np.testing.assert_array_equal(arrays["w16"], (2.0 * w).astype(np.float16))


def test_tied_initializer_whose_parameters_diverge_is_refused():
    model = torch.nn.Sequential(torch.nn.GroupNorm(2, 4), torch.nn.GroupNorm(2, 4))
    wmap = WeightMap({"ones": WeightSource(("0.weight", "1.weight"), "identity", (4,), "float32")})
    refit_weights(wmap, model)  # equal: fine
    with torch.no_grad():
        model[1].weight.add_(1.0)
    with pytest.raises(InputError, match=r"matched parameters 0\.weight and 1\.weight"):
        refit_weights(wmap, model)


@pytest.mark.slow
def test_weight_map_on_the_dynamo_export(exported):
    """The same bit-for-bit checks on torch's dynamo exporter (other names: ``val_61``)."""
    root, base, merged = exported["root"], exported["base"], exported["merged"]
    base_onnx = engine_onnx(base, root / "d_base.onnx", dynamo=True)
    merged_onnx = engine_onnx(merged, root / "d_merged.onnx", dynamo=True)
    wmap = build_weight_map(base_onnx, base)
    want, have = initializers(merged_onnx), initializers(base_onnx)
    changed = {k for k in have if have[k].tobytes() != want[k].tobytes()}
    arrays = refit_weights(wmap, merged)
    assert changed and changed <= set(arrays)
    for name, arr in arrays.items():
        assert arr.tobytes() == want[name].tobytes(), name


# ----------------------------------------------------------------------------- refit checks


def test_refit_refuses_a_plan_without_refit(exported):
    meta = load_adapter_meta(exported["adapter"])
    with pytest.raises(InputError) as err:
        check_refit_inputs(_sidecar(exported, refittable=False), meta, "engine e.plan")
    assert str(err.value) == (
        "engine e.plan is not refittable: rebuild it with `tte2tee export trt --refittable`"
    )


def test_refit_refuses_an_adapter_of_another_base(exported):
    meta = load_adapter_meta(exported["adapter"])
    side = _sidecar(exported)
    side["onnx_metadata"]["model_hash"] = "0" * 64
    with pytest.raises(InputError) as err:
        check_refit_inputs(side, meta, "engine e.plan")
    assert str(err.value) == (
        f"adapter was trained on base {meta.base_model_hash}, but engine e.plan was built from "
        f"base {'0' * 64}"
    )


def test_refit_refuses_another_maskr2_spec(exported):
    meta = load_adapter_meta(exported["adapter"])
    side = _sidecar(exported)
    side["onnx_metadata"]["maskr2"] = json.dumps(MaskR2Spec.identity(TEE).to_json())
    with pytest.raises(InputError, match="MaskR² spec 'tee->tte' differs"):
        check_refit_inputs(side, meta, "engine e.plan")
    assert check_refit_inputs(_sidecar(exported), meta)["model_hash"] == model_hash(
        exported["base"]
    )


def test_reference_model_needs_the_onnx_adapter(exported):
    meta = {"adapter_hash": "1" * 64}
    with pytest.raises(InputError, match="pass that adapter as --onnx-adapter"):
        reference_model(exported["base"], meta, None)
    with pytest.raises(InputError, match="but the engine's ONNX was exported with adapter 1111"):
        reference_model(exported["base"], meta, exported["adapter"])
    assert reference_model(exported["base"], {"adapter_hash": ""}, None) is exported["base"]


# ----------------------------------------------------------------------------- CLI


def test_cli_trt_without_tensorrt_says_what_to_install(exported, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)  # import fails
    out = tmp_path / "e.plan"
    result = CliRunner().invoke(
        main, ["export", "trt", "--onnx", str(exported["base_onnx"]), "--out", str(out)]
    )
    error_line(result, "pip install tensorrt", "NVIDIA GPU")
    assert list(tmp_path.iterdir()) == []


def test_cli_trt_checks_the_batch_before_tensorrt(exported, tmp_path):
    result = CliRunner().invoke(
        main,
        ["export", "trt", "--onnx", str(exported["fixed_onnx"]), "--out", str(tmp_path / "e"),
         "--batch", "1:8:32"],
    )  # fmt: skip
    error_line(result, "fixed batch of 4", "--batch 4")


def test_cli_refit_refuses_a_plan_without_refit(exported, tmp_path):
    plan = tmp_path / "e.plan"
    plan.write_bytes(b"plan")
    sidecar_path(plan).write_text(json.dumps(_sidecar(exported, refittable=False)))
    result = CliRunner().invoke(
        main, ["export", "refit", "--engine", str(plan), "--adapter", str(exported["adapter"])]
    )
    error_line(result, "is not refittable", "--refittable")
    assert plan.read_bytes() == b"plan"


# ----------------------------------------------------------------------------- GPU


def _gpu_ready() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed"
    return None if torch.cuda.is_available() else "no CUDA GPU"


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_ready() is not None, reason=f"needs TensorRT + a GPU: {_gpu_ready()}")
def test_build_run_and_refit_on_a_gpu(exported, tmp_path):
    from tte2tee_fast.export.tensorrt import TrtDenoiser, build_engine
    from tte2tee_fast.export.trt_refit import check_against_torch, refit_engine

    plan = build_engine(
        exported["base_onnx"], tmp_path / "e.plan", "fp32", "1:2:4",
        tmp_path / "cache", refittable=True,
    )  # fmt: skip
    assert (tmp_path / "cache").stat().st_size > 0
    meta = read_sidecar(plan)["onnx_metadata"]
    assert check_against_torch(TrtDenoiser(plan), exported["base"], meta, 2) < 1e-3
    base_dir = tmp_path / "base"
    exported["base"].save_pretrained(str(base_dir))
    report = refit_engine(plan, exported["adapter"], base_dir)
    assert report.weights_set > 0 and report.max_rel_error < 1e-3
