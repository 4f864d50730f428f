"""OpenVINO: IR files and metadata, f32 parity with torch (IR and ONNX, latency and
throughput with 2 streams, static reshape), fp16 weight compression error, the explicit
precision hint and the bf16 fallback of a CPU without bf16, missing openvino, atomic IR write."""

import sys

import openvino as ov
import pytest
from click.testing import CliRunner
from export_helpers import engines, rel, tee_inputs, torch_eps, unmerged_reference
from helpers import error_line
from tte2tee_fast.export.metadata import read_metadata
from tte2tee_fast.export.openvino import OpenVINODenoiser, convert_to_ir, cpu_has_bf16

from tte2tee_fast.cli import main
from tte2tee_fast.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    return engines(tmp_path_factory)


@pytest.fixture(scope="module")
def ir(eng, tmp_path_factory):
    return convert_to_ir(eng.dynamic, tmp_path_factory.mktemp("ir") / "e.xml")


def test_ir_files_and_metadata(eng, ir):
    assert ir.is_file() and ir.with_suffix(".bin").is_file()
    assert (ir.parent / "e.meta.json").is_file()
    assert read_metadata(ir) == read_metadata(eng.dynamic)
    model = ov.Core().read_model(str(ir))
    assert (
        model.get_rt_info(["tte2tee", "model_hash"]).astype(str) == read_metadata(ir)["model_hash"]
    )
    assert sorted(p.name for p in ir.parent.iterdir()) == ["e.bin", "e.meta.json", "e.xml"]


def test_f32_parity_modes_and_static_batch(eng, ir):
    model = unmerged_reference(eng)
    x, t, labels = tee_inputs(5, seed=2, phantom=True)
    ref = torch_eps(model, x, t, labels)
    runners = [
        OpenVINODenoiser(ir, threads=1),
        OpenVINODenoiser(eng.dynamic, threads=1),  # the .onnx directly
        OpenVINODenoiser(ir, threads=1, batch=2),  # static reshape, chunks 2+2+1
        OpenVINODenoiser(ir, mode="throughput", streams=2, threads=2, batch=2),
        OpenVINODenoiser(eng.fixed, mode="throughput", threads=1),
    ]
    for den in runners:
        assert den.effective_precision == "f32"
        assert rel(den(x, t, labels), ref) <= 1e-4, (den.path, den.mode, den.batch)
    assert runners[2].batch == 2 and runners[3].streams == 2 and runners[4].batch == 3
    static = runners[2].compiled.input("sample").get_partial_shape()
    assert static.is_static and list(static.to_shape()) == [2, 1, 32, 32]
    with pytest.raises(InputError, match="fixed batch 3, not 2"):
        OpenVINODenoiser(eng.fixed, batch=2)
    g = OpenVINODenoiser(eng.guided, threads=1, batch=2)
    y = g(x[:2], t[:2], labels[:2], guidance=2.0)
    want = OpenVINODenoiser(ir, threads=1)(x[:2], t[:2], labels[:2], guidance=2.0)
    assert rel(y, want) <= 1e-4


@pytest.mark.slow
def test_fp16_compression_costs_accuracy(eng, ir, tmp_path):
    small = convert_to_ir(eng.dynamic, tmp_path / "h.xml", compress_fp16=True)
    assert small.with_suffix(".bin").stat().st_size < 0.6 * ir.with_suffix(".bin").stat().st_size
    x, t, labels = tee_inputs(2, seed=8)
    ref = torch_eps(unmerged_reference(eng), x, t, labels)
    err32 = rel(OpenVINODenoiser(ir, threads=1)(x, t, labels), ref)
    err16 = rel(OpenVINODenoiser(small, threads=1)(x, t, labels), ref)
    assert err32 <= 1e-4 < err16 < 2e-2  # fp16-rounded weights: above the f32 bar


def test_precision_hint_is_explicit(eng, ir):
    core = ov.Core()
    if cpu_has_bf16(core):
        den = OpenVINODenoiser(ir, precision="bf16", threads=1)
        assert den.effective_precision == "bf16" and den.warning is None
    else:  # this AVX2 machine: OpenVINO compiles a bf16 request as f32, and we say so
        with pytest.warns(UserWarning, match="no bf16 hardware"):
            den = OpenVINODenoiser(ir, precision="bf16", threads=1)
        assert den.effective_precision == "f32"
    with pytest.raises(InputError, match="precision 'fp8'"):
        OpenVINODenoiser(ir, precision="fp8")
    with pytest.raises(InputError, match="mode 'fast'"):
        OpenVINODenoiser(ir, mode="fast")


def test_cache_dir(ir, tmp_path):
    OpenVINODenoiser(ir, threads=1, cache_dir=tmp_path / "cache")
    assert any((tmp_path / "cache").iterdir())  # the compiled blob is cached


def test_missing_openvino_and_atomic_ir(eng, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ov, "save_model", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_to_ir(eng.dynamic, tmp_path / "e.xml")
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails
    with pytest.raises(InputError, match="pip install openvino"):
        OpenVINODenoiser(eng.dynamic)
    res = CliRunner().invoke(
        main, ["export", "openvino", "--onnx", str(eng.dynamic), "--out", str(tmp_path / "a.xml")]
    )
    error_line(res, "pip install openvino")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=r"must end in \.xml"):
        monkeypatch.undo()
        convert_to_ir(eng.dynamic, tmp_path / "a.bin")
