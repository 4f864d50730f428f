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
