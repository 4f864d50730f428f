"""``tte2tee export check``: a good engine passes with errors computed here independently, a
tampered engine fails (exit 1), an engine of another model / adapter is refused with one line
naming both hashes; the CLI end to end on the packaged base + phantom-tee adapter (slow)."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from export_helpers import engines, rel, tee_inputs, torch_eps, unmerged_reference
from helpers import error_line, random_micro
from onnx import numpy_helper
from tte2tee_fast.export.check import CheckConfig, check_engine_file, format_report, rel_err

from tte2tee_fast.cli import main
from tte2tee_fast.errors import InputError
from tte2tee_fast.models import save_model

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = CheckConfig(batch=2, frame_steps=3, runners=("ort_fp32", "openvino_f32"), threads=1)


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    return engines(tmp_path_factory)


def test_good_engine_passes(eng):
    report = check_engine_file(eng.dynamic, eng.base_dir, eng.adapter_dir, FAST)
    assert report["ok"] and report["cases"] == ["random", "phantom"]
    rows = {r["runner"]: r for r in report["rows"]}
    assert set(rows) == {"ort_fp32", "openvino_f32"}
    for r in rows.values():
        assert r["checked"] and r["ok"]
        assert 0 < r["err_random"] <= 1e-4 and r["err_phantom"] <= 1e-4
        assert r["err_frame"] <= 1e-3
    assert "PASS" in format_report(report)
    assert rel_err(np.array([1.0, 2.5]), np.array([1.0, 2.0])) == pytest.approx(0.25)


def test_guided_engine_passes(eng):
    cfg = CheckConfig(batch=2, frame_steps=0, runners=("ort_fp32",), threads=1)
    report = check_engine_file(eng.guided, eng.base_dir, eng.adapter_dir, cfg)
    assert report["ok"] and report["metadata"]["variant"] == "guided"
    assert "err_frame" not in report["rows"][0]


def test_tampered_engine_fails(eng, tmp_path):
    model = onnx.load(str(eng.dynamic))
    init = max(model.graph.initializer, key=lambda i: int(np.prod(i.dims)))  # a conv weight
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((w * 1.01).astype(w.dtype), init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))  # metadata kept: only parity can tell
    # independent: the tampered graph really differs from torch by more than the tolerance
    import onnxruntime as ort

    x, t, labels = tee_inputs(2, seed=0)
    y = ort.InferenceSession(str(bad), providers=["CPUExecutionProvider"]).run(
        ["eps"], {"sample": x, "timestep": t, "labels": labels}
    )[0]
    assert rel(y, torch_eps(unmerged_reference(eng), x, t, labels)) > 1e-4
    cfg = CheckConfig(batch=2, frame_steps=0, runners=("ort_fp32",), threads=1)
    report = check_engine_file(bad, eng.base_dir, eng.adapter_dir, cfg)
    assert not report["ok"] and "FAIL" in format_report(report)
    args = ["export", "check", str(bad), "--model", str(eng.base_dir), "--adapter"]
    res = CliRunner().invoke(
        main,
        [*args, str(eng.adapter_dir), "--batch", "2", "--frame-steps", "0", "--runners",
         "ort_fp32", "--threads", "1", "--json", str(tmp_path / "r.json")],
    )  # fmt: skip
    assert res.exit_code == 1 and "FAIL" in res.output
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is False


def test_mismatched_model_or_adapter_refused(eng, tmp_path):
    other = tmp_path / "other"
    save_model(random_micro(seed=5), other)
    from tte2tee_fast.models import model_hash

    with pytest.raises(InputError, match="exported from base model") as info:
        check_engine_file(eng.dynamic, other, None, FAST)
    assert model_hash(other) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputError, match=r"exported with adapter .* but the given adapter is none"):
        check_engine_file(eng.dynamic, eng.base_dir, None, FAST)
    res = CliRunner().invoke(main, ["export", "check", str(eng.dynamic), "--model", str(other)])
    error_line(res, "exported from base model", model_hash(other))
    with pytest.raises(InputError, match="unknown runners"):
        CheckConfig(runners=("trt",))


@pytest.mark.slow
def test_cli_packaged_base_and_phantom_tee(tmp_path):
    out = tmp_path / "tee.onnx"
    res = CliRunner().invoke(
        main, ["export", "onnx", "--adapter", "phantom-tee", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "schema tee" in res.output and out.is_file()
    res = CliRunner().invoke(
        main,
        ["export", "check", str(out), "--adapter", "phantom-tee", "--batch", "2",
         "--frame-steps", "4", "--runners", "ort_fp32,openvino_f32", "--threads", "2",
         "--json", str(tmp_path / "c.json")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["ok"] and report["metadata"]["preset"] == "tiny"
    assert all(r["err_random"] <= 1e-4 and r["err_frame"] <= 1e-3 for r in report["rows"])
    res = CliRunner().invoke(main, ["export", "check", str(out), "--threads", "2"])
    error_line(res, "exported with adapter", "but the given adapter is none")
