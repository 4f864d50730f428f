"""The OpenVINO label split: the cut (labels only in the label half, only the SPADE heads'
outputs between the halves), the two halves composed against the whole graph and against torch
(peft unmerged), and the runner's label cache: hits, misses on new or mutated labels,
least-recently-used order, classifier-free guidance (two engine batches per call), the warning
past its limit, the memory limit, bf16."""

import numpy as np
import openvino as ov
import pytest
from export_helpers import engines, rel, tee_inputs, torch_eps, unmerged_reference
from tte2tee_fast.export.openvino import OpenVINODenoiser, cpu_has_bf16
from tte2tee_fast.export.ov_split import split_at_input

from tte2tee_fast.models.blocks import SPADEGroupNorm

pytestmark = pytest.mark.usefixtures("one_thread")

F32 = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    return engines(tmp_path_factory)


def _spade_count(eng) -> int:
    return sum(isinstance(m, SPADEGroupNorm) for m in unmerged_reference(eng).modules())


def _names(model) -> set[str]:
    return {p.get_output_tensor(0).get_any_name() for p in model.get_parameters()}


def test_cut_is_at_the_spade_heads(eng):
    split = split_at_input(ov.Core().read_model(str(eng.fixed)))
    assert split is not None
    assert _names(split.label_model) == {"labels"}
    assert _names(split.step_model) == {"sample", "timestep", *split.names}
    spades = _spade_count(eng)
    assert len(split.names) == 2 * spades  # gamma and beta of every SPADE norm
    convs = [o for o in split.label_model.get_ops() if o.get_type_name() == "Convolution"]
    assert len(convs) == 3 * spades  # shared, mlp_gamma, mlp_beta
    steps = [o for o in split.step_model.get_ops() if o.get_type_name() == "Convolution"]
    assert steps  # the U-Net's own convolutions stay in the step half
    shapes = [split.label_model.output(n).get_shape() for n in split.names]
    assert split.elements == sum(int(np.prod(s)) for s in shapes)
    assert all(s[0] == 3 for s in shapes)  # the engine's batch


def test_halves_compose_to_the_whole(eng):
    core = ov.Core()
    x, t, labels = tee_inputs(3, seed=4, phantom=True)
    whole = core.compile_model(str(eng.fixed), "CPU", F32)
    ref_ov = whole({"sample": x, "timestep": t, "labels": labels})[0]
    split = split_at_input(core.read_model(str(eng.fixed)))
    feats = core.compile_model(split.label_model, "CPU", F32)({"labels": labels})
    feed = {"sample": x, "timestep": t} | {n: feats[n] for n in split.names}
    eps = core.compile_model(split.step_model, "CPU", F32)(feed)[0]
    assert rel(eps, ref_ov) <= 1e-5
    assert rel(eps, torch_eps(unmerged_reference(eng), x, t, labels)) <= 1e-4


def test_nothing_to_split(eng):
    core = ov.Core()
    # dynamic batch: the boundary shapes are dynamic (or the heads read ShapeOf(sample))
    assert split_at_input(core.read_model(str(eng.dynamic))) is None
    assert split_at_input(core.read_model(str(eng.fixed)), "no_such_input") is None
    assert OpenVINODenoiser(eng.dynamic, threads=1).split is None
    assert OpenVINODenoiser(eng.dynamic, threads=1, batch=2).split is not None  # reshaped
    assert OpenVINODenoiser(eng.fixed, threads=1, label_cache=0).split is None
    assert OpenVINODenoiser(eng.fixed, mode="throughput", threads=1).split is None


def test_label_cache_hits_and_misses(eng):
    whole = OpenVINODenoiser(eng.fixed, threads=1, label_cache=0)
    den = OpenVINODenoiser(eng.fixed, threads=1)
    assert den.split is not None and den.label_cache_bytes == 4 * den.split.elements  # f32
    x, t, a = tee_inputs(3, seed=1, phantom=True)
    x2, t2, b = tee_inputs(3, seed=7, phantom=True)
    assert rel(den(x, t, a), whole(x, t, a)) <= 1e-5 and den.features.runs == 1
    assert rel(den(x2, t2, a), whole(x2, t2, a)) <= 1e-5 and den.features.runs == 1  # kept
    assert rel(den(x, t, b), whole(x, t, b)) <= 1e-5 and den.features.runs == 2  # new labels
    b[:, :8] = 0  # the caller changes its array in place: the kept copy must not follow
    assert rel(den(x, t, b), whole(x, t, b)) <= 1e-5 and den.features.runs == 3
    assert len(den.features.entries) == 1  # one engine batch per call: one kept


def test_label_cache_drops_the_least_recently_used(eng):
    """Calls of two engine batches (rows 6 = 2 x 3): A|B, A|C, A|B. LRU keeps A (used by every
    call) and drops B, then C: 4 label runs; a first-in-first-out cache would make 5."""
    whole = OpenVINODenoiser(eng.fixed, threads=1, label_cache=0)
    den = OpenVINODenoiser(eng.fixed, threads=1)
    x, t, a = tee_inputs(3, seed=11, phantom=True)
    b, c = (tee_inputs(3, seed=s, phantom=True)[2] for s in (12, 13))
    x6, t6 = np.concatenate([x, x]), np.concatenate([t, t])
    for second in (b, c, b):
        y = np.concatenate([a, second])
        assert rel(den(x6, t6, y), whole(x6, t6, y)) <= 1e-5
    assert den.features.runs == 4 and len(den.features.entries) == 2
    # a short call (5 rows: one padded batch) after them, then one engine batch: capacity 1
    assert rel(den(x6[:5], t6[:5], y[:5]), whole(x6[:5], t6[:5], y[:5])) <= 1e-5
    assert rel(den(x, t, a), whole(x, t, a)) <= 1e-5 and len(den.features.entries) == 1


def test_label_cache_memory_limit(eng, monkeypatch):
    from tte2tee_fast.export import label_cache

    monkeypatch.setattr(label_cache, "LABEL_CACHE_BYTES", 1024)  # smaller than one batch's features
    with pytest.warns(UserWarning, match="the whole graph runs at every call"):
        den = OpenVINODenoiser(eng.fixed, threads=1)
    assert den.split is None and den.features is None
    x, t, labels = tee_inputs(3, seed=6, phantom=True)
    assert rel(den(x, t, labels), torch_eps(unmerged_reference(eng), x, t, labels)) <= 1e-4
    monkeypatch.undo()
    kept = OpenVINODenoiser(eng.fixed, threads=1)  # the default limit: split, models dropped
    assert kept.split.label_model is None and kept.split.step_model is None


def test_guidance_keeps_both_label_batches(eng):
    whole = OpenVINODenoiser(eng.fixed, threads=1, label_cache=0)
    den = OpenVINODenoiser(eng.fixed, threads=1)
    x, t, labels = tee_inputs(3, seed=2, phantom=True)
    for step in range(3):
        tt = np.maximum(t - 100 * step, 0)
        assert rel(den(x, tt, labels, guidance=2.0), whole(x, tt, labels, guidance=2.0)) <= 1e-5
    assert den.features.runs == 2  # labels and null labels, once each
    _, _, other = tee_inputs(3, seed=9, phantom=True)
    assert rel(den(x, t, other, guidance=2.0), whole(x, t, other, guidance=2.0)) <= 1e-5
    assert den.features.runs == 3  # new labels; the null labels are the same rows as before
    assert rel(den(x, t, other), whole(x, t, other)) <= 1e-5  # unguided: one batch kept
    assert den.features.runs == 3 and len(den.features.entries) == 1
    small = OpenVINODenoiser(eng.fixed, threads=1, label_cache=1)
    with pytest.warns(UserWarning, match="more than the label cache keeps"):
        eps = small(x, t, labels, guidance=2.0)
    assert rel(eps, whole(x, t, labels, guidance=2.0)) <= 1e-5
    small(x, t, labels, guidance=2.0)
    assert small.features.runs == 4  # past its limit it recomputes, and stays correct


def test_guided_engine(eng):
    whole = OpenVINODenoiser(eng.guided, threads=1, batch=2, label_cache=0)
    den = OpenVINODenoiser(eng.guided, threads=1, batch=2)
    assert den.split is not None
    x, t, labels = tee_inputs(2, seed=3, phantom=True)
    for g in (1.5, 3.0):
        assert rel(den(x, t, labels, guidance=g), whole(x, t, labels, guidance=g)) <= 1e-5
    assert den.features.runs == 1  # the null rows are made inside the graph, from the labels


@pytest.mark.skipif(not cpu_has_bf16(ov.Core()), reason="this CPU has no bf16 hardware")
def test_bf16_boundary(eng):
    den = OpenVINODenoiser(eng.fixed, precision="bf16", threads=1)
    whole = OpenVINODenoiser(eng.fixed, precision="bf16", threads=1, label_cache=0)
    assert den.label_cache_bytes == 2 * den.split.elements
    x, t, labels = tee_inputs(3, seed=5, phantom=True)
    ref = torch_eps(unmerged_reference(eng), x, t, labels)
    err_whole, err_split = rel(whole(x, t, labels), ref), rel(den(x, t, labels), ref)
    assert err_split <= max(2 * err_whole, 1e-2), (err_split, err_whole)
