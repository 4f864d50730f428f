"""int8 and fp16 engines of a micro denoiser ONNX, each run against the fp32 ONNX on ONNX
Runtime (the reference): the QDQ graph quantizes the convolutions and matrix products only
(the MaskR² integer path, the int64 timestep and the ignored layers stay as they were), its eps
error is finite and bounded, the fp16 graph keeps float32 I/O and an fp32 time embedding; the
``tte2tee export quantize`` command and its refusals. OpenVINO + NNCF int8 is a slow test."""

from __future__ import annotations

import onnx
import pytest
from click.testing import CliRunner
from helpers import error_line, random_micro
from onnx import TensorProto
from test_adapter import micro_base
from test_export_tensorrt import engine_onnx
from tte2tee_fast.export.calibrate import CalibConfig, record_calibration, save_calibration
from tte2tee_fast.export.quantize import (
    PRECISION_KEY,
    conv_ends,
    convert_fp16,
    eps_error,
    frame_error,
    onnx_excluded,
    ort_runner,
    quantize_ort_int8,
    timestep_only_nodes,
)

from tte2tee_fast.cli import main
from tte2tee_fast.condition.maskr2 import builtin_spec
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import save_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    base = micro_base()
    onnx_path = engine_onnx(base, root / "base.onnx")
    calib = record_calibration(base, builtin_spec("tee->tte"), CalibConfig(n=16, steps=4))
    held = record_calibration(base, builtin_spec("tee->tte"), CalibConfig(n=8, steps=4, seed=9))
    return {"root": root, "base": base, "onnx": onnx_path, "calib": calib, "held": held}


@pytest.fixture(scope="module")
def int8(setup):
    return quantize_ort_int8(setup["onnx"], setup["root"] / "q.onnx", setup["calib"])


def _consumers(proto, tensor):
    return [n for n in proto.graph.node if tensor in n.input]


def test_scopes_of_the_graph(setup):
    proto = onnx.load(str(setup["onnx"]))
    first, last = conv_ends(proto)
    assert "conv_in" in first and "/out/" in last
    time_nodes = timestep_only_nodes(proto)
    ops = {n.name: n.op_type for n in proto.graph.node}
    assert {"Sin", "Cos"} <= {ops[n] for n in time_nodes}
    gemms = [n for n in onnx_excluded(proto, "first_last_time") if ops[n] == "Gemm"]
    assert any("time_embed" in n for n in gemms) and any("emb_layers" in n for n in gemms)
    assert not any("attn" in n or "spade" in n.lower() for n in time_nodes)
    with pytest.raises(InputError, match="unknown --ignore 'all'"):
        onnx_excluded(proto, "all")


def test_int8_graph_quantizes_only_float_compute(setup, int8):
    proto = onnx.load(str(int8))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    int8_weights = [i for i in proto.graph.initializer if i.data_type == TensorProto.INT8]
    assert len(int8_weights) > 10
    # S8S8: every activation zero point is int8
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear":
            zp = next(i for i in proto.graph.initializer if i.name == n.input[2])
            assert zp.data_type == TensorProto.INT8
    # the ignored first / last convolutions read float weights and float inputs
    fp = onnx.load(str(setup["onnx"]))
    for name in conv_ends(fp):
        node = next(n for n in proto.graph.node if n.name == name)
        producers = {o: p.op_type for p in proto.graph.node for o in p.output}
        assert producers.get(node.input[0]) != "DequantizeLinear", name
        assert producers.get(node.input[1]) != "DequantizeLinear", name
    # the MaskR² lookup and the timestep stay integer
    for i in proto.graph.input:
        if i.name in ("timestep", "labels"):
            assert i.type.tensor_type.elem_type == TensorProto.INT64
    remap = [n for n in fp.graph.node if n.name.startswith("/remap/")]
    assert len(remap) > 5
    same = {n.name: n for n in proto.graph.node}
    for n in remap:  # the whole lookup + one-hot, node for node (constants included)
        assert same[n.name] == n, n.name
    props = {p.key: p.value for p in proto.metadata_props}
    assert props[PRECISION_KEY] == "int8" and props["tte2tee.schema"] == "tee"


def test_int8_error_is_finite_and_bounded(setup, int8):
    ref, q = ort_runner(setup["onnx"]), ort_runner(int8)
    err = eps_error(ref, q, setup["held"])
    assert 1e-4 < err < 0.5  # it is quantized, and still the same network
    labels = setup["held"]["labels"][:2]
    assert frame_error(ref, q, labels, steps=4) < 0.6
    assert frame_error(ref, ref, labels, steps=4) == 0.0


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_fp16_graph(setup, prediction):
    src = setup["onnx"]
    if prediction == "v":  # the v -> eps conversion reads the sample input directly
        src = engine_onnx(random_micro(0, prediction_type="v").eval(), setup["root"] / "v.onnx")
    path = convert_fp16(src, setup["root"] / f"h-{prediction}.onnx")
    proto = onnx.load(str(path))
    kinds = {
        i.type.tensor_type.elem_type for i in list(proto.graph.input) + list(proto.graph.output)
    }
    assert kinds == {TensorProto.FLOAT, TensorProto.INT64}
    floats = [i for i in proto.graph.initializer if i.data_type in (1, 10)]
    half = [i for i in floats if i.data_type == TensorProto.FLOAT16]
    assert len(half) > 0.8 * len(floats)
    # the time embedding's sinusoid runs in fp32
    time_nodes = set(timestep_only_nodes(onnx.load(str(src))))
    types = {v.name: v.type.tensor_type.elem_type for v in proto.graph.value_info}
    sins = [n for n in proto.graph.node if n.op_type == "Sin" and n.name in time_nodes]
    assert sins and all(types.get(n.output[0], 1) == TensorProto.FLOAT for n in sins)
    err = eps_error(ort_runner(src), ort_runner(path), setup["held"])
    assert 1e-5 < err < 2e-2


@pytest.mark.slow
def test_openvino_int8(setup):
    import openvino as ov
    from tte2tee_fast.export.metadata import read_metadata
    from tte2tee_fast.export.quantize import (
        openvino_excluded,
        openvino_runner,
        quantize_openvino_int8,
    )

    xml = quantize_openvino_int8(setup["onnx"], setup["root"] / "q.xml", setup["calib"])
    model = ov.Core().read_model(str(xml))
    fq = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(fq) > 10
    ignored = set(openvino_excluded(ov.Core().read_model(str(setup["onnx"])), "first_last"))
    for op in model.get_ordered_ops():
        if op.get_friendly_name() in ignored:
            assert all(v.get_node().get_type_name() != "FakeQuantize" for v in op.input_values())
    assert read_metadata(xml)["schema"] == "tee"
    err = eps_error(ort_runner(setup["onnx"]), openvino_runner(xml), setup["held"])
    assert 1e-4 < err < 0.5


def test_cli_quantize_ort(setup, tmp_path):
    model_dir = save_model(setup["base"], tmp_path / "model")
    builtin_spec("tee->tte").save(model_dir / "maskr2.json")  # what a merged folder carries
    calib = save_calibration(tmp_path / "c.npz", setup["calib"])
    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(
        main,
        ["export", "quantize", "--onnx", str(setup["onnx"]), "--model", str(model_dir),
         "--calib-file", str(calib), "--steps", "4", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "max relative eps error vs fp32" in result.output
    assert out.is_file()


def test_cli_quantize_refuses_another_model(setup, tmp_path):
    other = save_model(micro_base(seed=3), tmp_path / "other")
    builtin_spec("tee->tte").save(other / "maskr2.json")
    result = CliRunner().invoke(
        main,
        ["export", "quantize", "--onnx", str(setup["onnx"]), "--model", str(other),
         "--calib", "4", "--out", str(tmp_path / "q.onnx")],
    )  # fmt: skip
    error_line(result, "holds weights", "pass the model and adapter it was exported from")
    assert not (tmp_path / "q.onnx").exists()


def test_cli_fp16_is_an_onnx_only(setup, tmp_path):
    result = CliRunner().invoke(
        main,
        ["export", "quantize", "--onnx", str(setup["onnx"]), "--backend", "openvino",
         "--precision", "fp16", "--out", str(tmp_path / "h.xml")],
    )  # fmt: skip
    error_line(result, "--precision fp16 writes an ONNX", "--backend ort")
