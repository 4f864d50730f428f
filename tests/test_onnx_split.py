"""The ONNX label split and ONNX Runtime's label cache: shape folding, the cut (labels only in
the label half, only the SPADE heads' outputs between the halves), the halves composed against
the whole graph and against torch (peft unmerged), and the runner: hits, new labels, guidance
(two engine batches per call), and where it does not split."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_helpers import engines, rel, tee_inputs, torch_eps, unmerged_reference
from tte2tee_fast.export.onnx_split import fold_static_shapes, split_onnx_at_input
from tte2tee_fast.export.ort import OrtDenoiser

from tte2tee_fast.models.blocks import SPADEGroupNorm

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    return engines(tmp_path_factory)


def _session(model: bytes | str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def test_static_shapes_fold_to_constants(eng):
    model = onnx.load(str(eng.fixed))
    folded = fold_static_shapes(model)
    before, after = (sum(n.op_type == "Shape" for n in m.graph.node) for m in (model, folded))
    assert before > 0 and after < before
    x, t, labels = tee_inputs(3, seed=8, phantom=True)
    feed = {"sample": x, "timestep": t, "labels": labels.astype(np.int64)}
    same = [_session(m.SerializeToString()).run(["eps"], feed)[0] for m in (model, folded)]
    np.testing.assert_array_equal(same[0], same[1])


def test_cut_is_at_the_spade_heads(eng):
    split = split_onnx_at_input(onnx.load(str(eng.fixed)))
    assert split is not None
    label, step = (onnx.load_from_string(m) for m in (split.label_model, split.step_model))
    assert [i.name for i in label.graph.input] == ["labels"]
    assert {i.name for i in step.graph.input} == {"sample", "timestep", *split.names}
    assert [o.name for o in label.graph.output] == list(split.names)
    spades = sum(isinstance(m, SPADEGroupNorm) for m in unmerged_reference(eng).modules())
    assert len(split.names) == 2 * spades  # gamma and beta of every SPADE norm
    assert sum(n.op_type == "Conv" for n in label.graph.node) == 3 * spades
    assert any(n.op_type == "Conv" for n in step.graph.node)  # the U-Net's own stay
    feats = _session(split.label_model).run(None, {"labels": tee_inputs(3, 0)[2].astype(np.int64)})
    assert split.elements == sum(f.size for f in feats) and all(f.shape[0] == 3 for f in feats)


def test_halves_compose_to_the_whole(eng):
    split = split_onnx_at_input(onnx.load(str(eng.fixed)))
    x, t, labels = tee_inputs(3, seed=4, phantom=True)
    y = labels.astype(np.int64)
    whole = _session(str(eng.fixed)).run(["eps"], {"sample": x, "timestep": t, "labels": y})[0]
    feats = dict(
        zip(split.names, _session(split.label_model).run(None, {"labels": y}), strict=True)
    )
    eps = _session(split.step_model).run(["eps"], {"sample": x, "timestep": t, **feats})[0]
    assert rel(eps, whole) <= 1e-6
    assert rel(eps, torch_eps(unmerged_reference(eng), x, t, labels)) <= 1e-4


def test_where_it_does_not_split(eng):
    # dynamic batch: the boundary has no static shape
    assert split_onnx_at_input(onnx.load(str(eng.dynamic))) is None
    assert split_onnx_at_input(onnx.load(str(eng.fixed)), "no_such_input") is None
    assert OrtDenoiser(eng.dynamic, threads=1).split is None
    assert OrtDenoiser(eng.fixed, threads=1, label_cache=0).split is None
    assert OrtDenoiser(eng.fixed, threads=1).split is not None


def test_label_cache_hits_misses_and_guidance(eng):
    whole = OrtDenoiser(eng.fixed, threads=1, label_cache=0)
    den = OrtDenoiser(eng.fixed, threads=1)
    assert den.label_cache_bytes == 4 * den.split.elements
    x, t, a = tee_inputs(3, seed=1, phantom=True)
    x2, t2, b = tee_inputs(3, seed=7, phantom=True)
    assert rel(den(x, t, a), whole(x, t, a)) <= 1e-6 and den.features.runs == 1
    assert rel(den(x2, t2, a), whole(x2, t2, a)) <= 1e-6 and den.features.runs == 1  # kept
    assert rel(den(x, t, b), whole(x, t, b)) <= 1e-6 and den.features.runs == 2  # new labels
    for step in range(3):  # guidance: the labels and the null labels, two batches per call
        tt = np.maximum(t - 100 * step, 0)
        assert rel(den(x, tt, a, guidance=2.0), whole(x, tt, a, guidance=2.0)) <= 1e-6
    assert den.features.runs == 4 and len(den.features.entries) == 2
    # an odd short call (2 rows: one padded batch) is still the whole graph's answer
    assert rel(den(x[:2], t[:2], b[:2]), whole(x[:2], t[:2], b[:2])) <= 1e-6


def _toy(step_reads_labels: bool = False, noise: bool = False, fp16: bool = False) -> bytes:
    """labels [1, 1, 4, 4] -> Conv -> (x Noise) -> Add(sample) -> eps; float16 throughout with
    ``fp16``; ``step_reads_labels``: eps also adds the labels themselves."""
    from onnx import TensorProto, helper, numpy_helper

    ft = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    dt = np.float16 if fp16 else np.float32
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), dt), "w")
    nodes = [
        helper.make_node("Cast", ["labels"], ["lf"], to=ft),
        helper.make_node("Conv", ["lf", "w"], ["feat"], pads=[1, 1, 1, 1]),
    ]
    last = "feat"
    if noise:
        nodes.append(helper.make_node("RandomNormalLike", ["feat"], ["r"]))
        nodes.append(helper.make_node("Mul", ["feat", "r"], ["noisy"]))
        last = "noisy"
    nodes.append(helper.make_node("Add", ["sample", last], ["eps0"]))
    if step_reads_labels:  # CastLike reads labels and a step tensor: labels itself crosses
        nodes.append(helper.make_node("CastLike", ["labels", "eps0"], ["lc"]))
        nodes.append(helper.make_node("Add", ["eps0", "lc"], ["eps"]))
    else:
        nodes.append(helper.make_node("Identity", ["eps0"], ["eps"]))
    graph = helper.make_graph(
        nodes,
        "toy",
        [
            helper.make_tensor_value_info("sample", ft, [1, 1, 4, 4]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 1, 4, 4]),
        ],
        [helper.make_tensor_value_info("eps", ft, [1, 1, 4, 4])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_refuses_what_the_step_needs_uncut():
    assert split_onnx_at_input(_toy()) is not None  # the toy itself splits
    assert split_onnx_at_input(_toy(step_reads_labels=True)) is None  # the step reads labels
    noisy = split_onnx_at_input(_toy(noise=True))  # the noise stays in the step: a fresh draw
    step = onnx.load_from_string(noisy.step_model)
    assert any(n.op_type == "RandomNormalLike" for n in step.graph.node)
    assert noisy.names == ("feat",)


def test_boundary_bytes_follow_its_type():
    f32, f16 = (split_onnx_at_input(_toy(fp16=h)) for h in (False, True))
    assert f32.elements == f16.elements == 16
    assert (f32.nbytes, f16.nbytes) == (64, 32)


def test_fp16_boundary_recycles(tmp_path, eng):
    """An fp16 engine (export quantize --fp16) splits and recycles into float16 arrays."""
    from tte2tee_fast.export.quantize import convert_fp16

    out = convert_fp16(eng.fixed, tmp_path / "fixed-fp16.onnx")
    whole = OrtDenoiser(out, threads=1, label_cache=0)
    den = OrtDenoiser(out, threads=1)
    assert den.split is not None and den.label_cache_bytes < 4 * den.split.elements
    ref = unmerged_reference(eng)
    first = None
    for seed in (1, 2, 3, 1):  # new labels from the second on recycle a dropped batch's arrays
        x, t, labels = tee_inputs(3, seed=seed, phantom=True)
        eps, want = den(x, t, labels), torch_eps(ref, x, t, labels)
        # fp16 fuses differently across the cut (1e-3 apart): as close to torch as the whole
        assert rel(eps, want) <= 2 * rel(whole(x, t, labels), want)
        first = eps if first is None else first
    np.testing.assert_array_equal(eps, first)  # seed 1 again, into recycled arrays: the same
    assert den.features.runs == 4
    kept = den.features.entries[0][1].values()
    assert any(a.dtype == np.float16 for a in kept)
    assert sum(a.nbytes for a in kept) == den.label_cache_bytes


def test_a_graph_the_tools_cannot_cut_runs_whole(eng, monkeypatch):
    from tte2tee_fast.export import ort as ort_module

    def broken(model):
        raise ValueError("no such op")

    monkeypatch.setattr(ort_module, "split_onnx_at_input", broken)
    with pytest.warns(UserWarning, match="no label cache .*no such op"):
        den = OrtDenoiser(eng.fixed, threads=1)
    assert den.split is None and den.features is None
    x, t, labels = tee_inputs(3, seed=5, phantom=True)
    assert rel(den(x, t, labels), torch_eps(unmerged_reference(eng), x, t, labels)) <= 1e-4
