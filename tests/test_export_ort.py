"""ONNX Runtime runner: parity with torch through the runner (chunked fixed batch, guidance on
a plain engine), session options, input checks with one clear line, missing providers."""

import sys

import numpy as np
import pytest
import torch
from export_helpers import engines, rel, tee_inputs, torch_eps, unmerged_reference
from tte2tee_fast.export.engine_io import physical_cores, stacks_null_rows
from tte2tee_fast.export.ort import OrtDenoiser, providers_for, session_options

from tte2tee_fast.condition.maskr2 import builtin_spec, remap_one_hot
from tte2tee_fast.diffusion.guidance import cfg_eps_fn
from tte2tee_fast.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    return engines(tmp_path_factory)


def test_runner_parity_chunked_and_guided(eng):
    model = unmerged_reference(eng)
    fixed = OrtDenoiser(eng.fixed, threads=1)
    assert fixed.batch == 3 and fixed.metadata["schema"] == "tee"
    for b in (1, 5, 7):  # pad a short batch, chunk a long one
        x, t, labels = tee_inputs(b, seed=b, phantom=b == 5)
        assert rel(fixed(x, t, labels), torch_eps(model, x, t, labels)) <= 1e-4
    # guidance on a plain engine (cond + null rows) and on the guided variant
    x, t, labels = tee_inputs(2, seed=4)
    cond = remap_one_hot(torch.from_numpy(labels), builtin_spec("tee->tte"))
    with torch.no_grad():
        ref = cfg_eps_fn(model, cond, 2.5)(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    for path in (eng.dynamic, eng.fixed, eng.guided):
        assert rel(OrtDenoiser(path, threads=1)(x, t, labels, guidance=2.5), ref) <= 1e-4
    # int32 labels and timesteps are accepted (converted), results equal
    dyn = OrtDenoiser(eng.dynamic, threads=1)
    assert np.array_equal(dyn(x, t.astype(np.int32), labels.astype(np.uint8)), dyn(x, t, labels))


def test_which_calls_stack_null_rows():
    """The rule run_denoiser and OpenVINO's label cache share: a plain engine given a guidance
    scale other than 0 / 1 runs [labels; null] rows (twice the rows)."""
    plain, guided = {"variant": "eps"}, {"variant": "guided"}
    assert [stacks_null_rows(plain, g) for g in (None, 0, 0.0, 1, 1.0)] == [False] * 5
    assert stacks_null_rows(plain, 2.0) and stacks_null_rows(plain, 0.5)
    assert not any(stacks_null_rows(guided, g) for g in (None, 0.0, 1.0, 2.0))


def test_session_options():
    opts = session_options(3)
    import onnxruntime as ort

    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert session_options().intra_op_num_threads == physical_cores() >= 1
    assert physical_cores() <= len(__import__("os").sched_getaffinity(0))
    assert providers_for("cpu") == ["CPUExecutionProvider"]


def test_bad_inputs_one_line(eng):
    den = OrtDenoiser(eng.dynamic, threads=1)
    x, t, labels = tee_inputs(2)
    bad = labels.copy()
    bad[0, 0, :3] = [7, 9, -2]
    with pytest.raises(InputError, match=r"values \[-2, 7, 9\] are not in schema 'tee'"):
        den(x, t, bad)
    cases = [
        ((x.astype(np.float64), t, labels), "sample must be float32, got float64"),
        ((x[0], t, labels), r"sample must be \[B, 1, 32, 32\], got \[1, 32, 32\]"),
        ((x, t, labels.astype(np.float32)), "labels must be an integer label map, got float32"),
        ((x, t, labels[0]), r"labels must be \[B, 32, 32\]"),
        ((x, t.astype(np.float32), labels), "timestep must be an integer array"),
        ((x, t[:1], labels), "batch sizes differ: sample 2, timestep 1"),
        ((x, t + 1000, labels), "timesteps must lie in 0..999"),
    ]
    for args, msg in cases:
        with pytest.raises(InputError, match=msg) as info:
            den(*args)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="guided engine; pass a guidance"):
        OrtDenoiser(eng.guided, threads=1)(x, t, labels)
    with pytest.raises(InputError, match="guidance scale must be >= 0"):
        den(x, t, labels, guidance=-1.0)


def test_missing_provider_and_package(eng, monkeypatch, tmp_path):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    for provider, what in (("cuda", "onnxruntime-gpu"), ("tensorrt", "tensorrt")):
        with pytest.raises(InputError, match=what) as info:
            OrtDenoiser(eng.dynamic, provider=provider)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="unknown ONNX Runtime provider"):
        OrtDenoiser(eng.dynamic, provider="rocm")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(InputError, match="pip install onnxruntime"):
        OrtDenoiser(eng.dynamic)


def test_not_an_engine(tmp_path):
    import onnx
    from onnx import helper

    graph = helper.make_graph([], "g", [], [])
    onnx.save(helper.make_model(graph), str(tmp_path / "plain.onnx"))
    with pytest.raises(InputError, match="not a tte2tee engine"):
        OrtDenoiser(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(InputError, match="not a readable ONNX file"):
        OrtDenoiser(tmp_path / "junk.onnx")
    with pytest.raises(InputError, match="does not exist"):
        OrtDenoiser(tmp_path / "none.onnx")


def test_runners_work_without_torch(eng, tmp_path):
    """The runners import no torch: in a subprocess where importing torch fails, ORT and
    OpenVINO run the engine and give the eps saved here from torch."""
    import subprocess

    x, t, labels = tee_inputs(2, seed=6)
    ref = torch_eps(unmerged_reference(eng), x, t, labels)
    np.savez(tmp_path / "io.npz", x=x, t=t, labels=labels, ref=ref)
    code = f"""
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is blocked")
sys.meta_path.insert(0, NoTorch())
import numpy as np
from tte2tee_fast.export.openvino import OpenVINODenoiser
from tte2tee_fast.export.ort import OrtDenoiser
d = np.load({str(tmp_path / "io.npz")!r})
for den in (OrtDenoiser({str(eng.dynamic)!r}, threads=1),
            OpenVINODenoiser({str(eng.fixed)!r}, threads=1)):
    y = den(d["x"], d["t"], d["labels"])
    err = np.abs(y - d["ref"]).max() / np.abs(d["ref"]).max()
    assert err <= 1e-4, err
assert "torch" not in sys.modules
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
