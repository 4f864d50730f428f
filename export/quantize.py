"""Reduced-precision engines of the denoiser ONNX: int8 for ONNX Runtime (static QDQ) and for
OpenVINO (NNCF post-training quantization), and an fp16 ONNX for GPUs.

int8 (both backends) is calibrated on U-Net inputs recorded across the timesteps of real
sampling runs (:mod:`tte2tee_fast.export.calibrate`). What stays in float, ``ignore``:

``none``             everything the tool quantizes by default
``first_last``       the first and the last convolution (the 1-channel image in and out)
``first_last_time``  those and the time-embedding path (nodes fed by ``timestep`` alone:
                     the sinusoid, the time MLP and every block's embedding projection)

ONNX Runtime: ``quantize_static`` in QDQ format, S8S8 (int8 activations and weights),
per-channel weights, MinMax ranges, on Conv / Gemm / MatMul only: the MaskR² lookup (integer
Gather) and the int64 timestep are never touched. OpenVINO: ``nncf.quantize`` on the model read
from the ONNX (preset ``mixed``: symmetric weights, asymmetric activations), Convolution and
MatMul only (:data:`OV_FLOAT_TYPES` stay float), saved as IR with fp32 weights outside the
quantized ops, plus the engine metadata sidecar ``f.meta.json``.

fp16 ONNX: onnxconverter-common's ``convert_float_to_float16`` with float32 inputs and outputs
kept (``keep_io_types``) and the time-embedding path blocked (``sin(t * f)`` at t ~ 999 needs
fp32: fp16 spacing there is 0.5 rad); integer tensors are left as they are.

Whether an int8 engine is kept is a fidelity question (``tte2tee evaluate fidelity``); the
helpers at the end measure its eps error, its effect on a sampled frame and its speed.

Example::

    data = load_calibration("runs/calib.npz")
    quantize_ort_int8("runs/tee.onnx", "runs/tee-int8.onnx", data)
    quantize_openvino_int8("runs/tee.onnx", "runs/tee-int8.xml", data)
    convert_fp16("runs/tee.onnx", "runs/tee-fp16.onnx")
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tte2tee_fast.export.calibrate import KEYS, calibration_batches

from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import staged_file

IGNORE = ("none", "first_last", "first_last_time")
QUANT_OPS = ("Conv", "Gemm", "MatMul")
# OpenVINO op types NNCF would quantize that stay float (only Convolution / MatMul get int8)
OV_FLOAT_TYPES = (
    "Multiply", "Add", "Subtract", "Divide", "MVN", "Interpolate", "AvgPool", "Concat",
    "Softmax", "Sigmoid", "Select",
)  # fmt: skip
PRECISION_KEY = "tte2tee.precision"

Feeds = dict[str, np.ndarray]
Runner = Callable[[Feeds], np.ndarray]


def _load(path: str | os.PathLike) -> Any:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise InputError(f"{path} is not a readable ONNX file: {e}") from None


def _check_ignore(ignore: str) -> None:
    if ignore not in IGNORE:
        raise InputError(f"unknown --ignore {ignore!r}; choose one of {IGNORE}")


def fixed_batch(proto: Any) -> int | None:
    """The ONNX's fixed batch (dim 0 of ``sample``), or None when it is dynamic."""
    for v in proto.graph.input:
        if v.name == "sample":
            d = v.type.tensor_type.shape.dim[0]
            return int(d.dim_value) if d.HasField("dim_value") else None
    raise InputError("ONNX has no input 'sample': not a tte2tee denoiser engine")


# ----------------------------------------------------------------------------- graph scopes


def timestep_only_nodes(proto: Any) -> list[str]:
    """Names of the nodes whose inputs derive from ``timestep`` alone (the time-embedding path),
    in graph (topological) order."""
    inits = {i.name for i in proto.graph.initializer}
    source: dict[str, set[str]] = {v.name: {v.name} for v in proto.graph.input}
    out = []
    for node in proto.graph.node:
        deps: set[str] = set()
        for name in node.input:
            if name and name not in inits:
                deps |= source.get(name, set())
        if node.op_type in ("Shape", "Size"):
            deps = set()  # a shape is not data: expand(t, x.shape[0]) stays on the time path
        for name in node.output:
            source[name] = deps
        if deps == {"timestep"}:
            out.append(node.name)
    return out


def conv_ends(proto: Any) -> list[str]:
    """The first and the last Conv node of the graph (graph order is topological)."""
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    return list(dict.fromkeys([convs[0], convs[-1]])) if convs else []


def onnx_excluded(proto: Any, ignore: str) -> list[str]:
    """ONNX node names kept in float for ``ignore`` (see the module docstring)."""
    _check_ignore(ignore)
    if ignore == "none":
        return []
    names = conv_ends(proto)
    if ignore == "first_last_time":
        time_nodes = set(timestep_only_nodes(proto))
        names += [
            n.name for n in proto.graph.node if n.name in time_nodes and n.op_type in QUANT_OPS
        ]
    return names


def _set_precision(proto: Any, precision: str) -> None:
    keep = [p for p in proto.metadata_props if p.key != PRECISION_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    entry = proto.metadata_props.add()
    entry.key, entry.value = PRECISION_KEY, precision


# ----------------------------------------------------------------------------- ONNX Runtime


def _reader(feeds: list[Feeds]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> Feeds | None:
            return next(self.items, None)

        def rewind(self) -> None:
            self.items = iter(feeds)

    return Reader()


def quantize_ort_int8(
    onnx_in: str | os.PathLike,
    out: str | os.PathLike,
    calib: dict,
    ignore: str = "first_last",
    per_channel: bool = True,
    batch: int = 8,
) -> Path:
    """Static int8 (QDQ, S8S8, per-channel) ONNX of ``onnx_in`` calibrated on ``calib``; written
    atomically to ``out`` with the input's metadata and ``tte2tee.precision = int8``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto = _load(onnx_in)
    feeds = calibration_batches(calib, fixed_batch(proto) or batch)
    exclude = onnx_excluded(proto, ignore)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(out) as tmp:
        quantize_static(
            proto,
            str(tmp),
            _reader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANT_OPS),
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
        )
        q = onnx.load(str(tmp))
        _copy_metadata(proto, q)
        _set_precision(q, "int8")
        onnx.save(q, str(tmp))
    return out


def _copy_metadata(src: Any, dst: Any) -> None:
    have = {p.key for p in dst.metadata_props}
    for p in src.metadata_props:
        if p.key not in have:
            entry = dst.metadata_props.add()
            entry.key, entry.value = p.key, p.value


def convert_fp16(onnx_in: str | os.PathLike, out: str | os.PathLike) -> Path:
    """fp16 ONNX of ``onnx_in`` (float32 inputs/outputs, the time-embedding path in fp32)."""
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise InputError(
            "fp16 conversion needs onnxconverter-common: `pip install onnxconverter-common`"
        ) from None
    proto = _load(onnx_in)
    half = float16.convert_float_to_float16(
        proto, keep_io_types=True, node_block_list=timestep_only_nodes(proto)
    )
    _fix_casts(half)
    _cast_float_inputs(half, set(timestep_only_nodes(proto)))
    _copy_metadata(proto, half)
    _set_precision(half, "fp16")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(out) as tmp:
        onnx.save(half, str(tmp))
    return out


def _fix_casts(proto: Any) -> None:
    """Cast-to-float nodes whose output the converter retyped to fp16 cast to fp16
    (onnxconverter-common 1.16 retypes the value but leaves the ``to`` attribute)."""
    from onnx import TensorProto

    types = {v.name: v.type.tensor_type.elem_type for v in proto.graph.value_info}
    for node in proto.graph.node:
        if node.op_type != "Cast" or types.get(node.output[0]) != TensorProto.FLOAT16:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16


def _cast_float_inputs(proto: Any, blocked: set[str]) -> None:
    """Give every fp16 node that still reads a float32 graph input directly (the converter
    misses some, e.g. ``sigma_t * x_t`` of a v-model) the input cast to fp16."""
    from onnx import TensorProto, helper

    for inp in proto.graph.input:
        if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        users = [
            n
            for n in proto.graph.node
            if inp.name in n.input and n.op_type != "Cast" and n.name not in blocked
        ]
        if not users:
            continue
        half = f"{inp.name}_as_fp16"
        for node in users:
            node.input[:] = [half if i == inp.name else i for i in node.input]
        cast = helper.make_node("Cast", [inp.name], [half], f"{half}_cast", to=TensorProto.FLOAT16)
        proto.graph.node.insert(0, cast)


# ----------------------------------------------------------------------------- OpenVINO


def openvino_excluded(ov_model: Any, ignore: str) -> list[str]:
    """Friendly names of the OpenVINO ops kept in float for ``ignore``: the first and last
    Convolution, and (``first_last_time``) the MatMuls fed by ``timestep`` alone."""
    _check_ignore(ignore)
    if ignore == "none":
        return []
    ops = list(ov_model.get_ordered_ops())
    convs = [op.get_friendly_name() for op in ops if op.get_type_name() == "Convolution"]
    names = list(dict.fromkeys([convs[0], convs[-1]])) if convs else []
    if ignore == "first_last_time":
        deps: dict[str, set[str]] = {}
        for op in ops:
            name = op.get_friendly_name()
            if op.get_type_name() == "Parameter":
                deps[name] = {op.get_output_tensor(0).get_any_name()}
                continue
            d: set[str] = set()
            if op.get_type_name() not in ("ShapeOf",):  # a shape is not data
                for value in op.input_values():
                    d |= deps.get(value.get_node().get_friendly_name(), set())
            deps[name] = d
            if d == {"timestep"} and op.get_type_name() == "MatMul":
                names.append(name)
    return names


def quantize_openvino_int8(
    onnx_in: str | os.PathLike,
    out_xml: str | os.PathLike,
    calib: dict,
    ignore: str = "first_last",
    batch: int = 8,
) -> Path:
    """NNCF int8 OpenVINO IR (``out_xml`` + ``.bin`` + ``.meta.json``) of ``onnx_in``."""
    from tte2tee_fast.export.openvino import import_openvino

    ov = import_openvino()
    try:
        import nncf
    except ImportError:
        raise InputError("int8 for OpenVINO needs NNCF: `pip install nncf`") from None
    from tte2tee_fast.export.metadata import onnx_props, write_sidecar

    proto = _load(onnx_in)
    feeds = calibration_batches(calib, fixed_batch(proto) or batch)
    model = ov.Core().read_model(str(onnx_in))
    # quantize what ONNX Runtime quantizes (convolutions and matrix products): NNCF's default
    # also quantizes the inputs of elementwise ops, GroupNorm (MVN), resizes and pools, which
    # put the eps error of the packaged tiny model at 0.5 (0.16 without them; notes file)
    scope = nncf.IgnoredScope(
        names=openvino_excluded(model, ignore), types=list(OV_FLOAT_TYPES), validate=False
    )
    quantized = nncf.quantize(
        model,
        nncf.Dataset(feeds),
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(feeds),  # dataset items (batches), every one of them
        ignored_scope=scope,
    )
    out_xml = Path(out_xml)
    if out_xml.suffix != ".xml":
        raise InputError(f"OpenVINO output {out_xml} must end in .xml")
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_xml.parent / f".{out_xml.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp_dir.mkdir()
        ov.save_model(quantized, str(tmp_dir / out_xml.name), compress_to_fp16=False)
        os.replace(tmp_dir / out_xml.with_suffix(".bin").name, out_xml.with_suffix(".bin"))
        os.replace(tmp_dir / out_xml.name, out_xml)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    props = onnx_props(proto)
    if props:
        write_sidecar(out_xml, {**props, "precision": "int8"})
    return out_xml


# ----------------------------------------------------------------------------- measurements


def ort_runner(path: str | os.PathLike, threads: int = 2) -> Runner:
    """``feeds -> eps`` of an engine on ONNX Runtime's CPU provider
    (:class:`~tte2tee_fast.export.ort.OrtDenoiser`: graph optimisation ALL, ``threads``)."""
    from tte2tee_fast.export.ort import OrtDenoiser

    run = OrtDenoiser(path, "cpu", threads, label_cache=0)  # whole forwards, as OpenVINO's
    return lambda feeds: run(feeds["sample"], feeds["timestep"], feeds["labels"])


def openvino_runner(path: str | os.PathLike, threads: int = 2, precision: str = "f32") -> Runner:
    """``feeds -> eps`` of an ONNX / IR engine on OpenVINO's CPU plugin
    (:class:`~tte2tee_fast.export.openvino.OpenVINODenoiser`, latency mode), precision hint
    explicit (``f32`` / ``bf16``: OpenVINO picks bf16 by itself on AVX512_BF16 CPUs)."""
    from tte2tee_fast.export.openvino import OpenVINODenoiser

    # label_cache=0: the whole graph per call, so ms_per_image times a whole forward
    run = OpenVINODenoiser(path, precision, "latency", threads=threads, label_cache=0)
    return lambda feeds: run(feeds["sample"], feeds["timestep"], feeds["labels"])


def eps_error(reference: Runner, candidate: Runner, calib: dict, batch: int = 8) -> float:
    """Max relative error ``max|e - e_ref| / max|e_ref|`` of eps over the calibration rows."""
    worst = 0.0
    for feeds in calibration_batches(calib, batch):
        want, got = reference(feeds), candidate(feeds)
        if not np.isfinite(got).all():
            return float("inf")
        worst = max(worst, float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)))
    return worst


def sample_frames(run: Runner, labels: np.ndarray, steps: int = 10, seed: int = 0) -> np.ndarray:
    """DDIM frames ``[B, 1, H, W]`` (``steps`` steps, clamped estimates, counter-based noise
    of frames ``0..B-1``) with ``run`` as the network; the labels are the engine's raw ones."""
    import torch

    from tte2tee_fast.diffusion import NoiseSchedule, NoiseSource, get_sampler
    from tte2tee_fast.diffusion.clip import clip_denoised

    schedule = NoiseSchedule.cosine(1000)
    b, h, w = labels.shape
    noise = NoiseSource(seed, range(b))

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        feeds = {"sample": x.float().numpy(), "timestep": t.long().numpy(), "labels": labels}
        return torch.from_numpy(np.asarray(run(feeds), np.float32))

    x = noise.initial((1, h, w))  # [B, 1, H, W]
    with torch.no_grad():
        x0 = get_sampler("ddim")(
            clip_denoised(eps_fn, schedule), x, schedule, schedule.timesteps(steps), noise=noise
        )
    return x0.clamp(-1, 1).numpy()


def frame_error(reference: Runner, candidate: Runner, labels: np.ndarray, steps: int = 10) -> float:
    """Relative RMSE ``||f - f_ref|| / ||f_ref||`` of :func:`sample_frames` from the same noise."""
    want = sample_frames(reference, labels, steps)
    got = sample_frames(candidate, labels, steps)
    return float(np.sqrt(np.mean((got - want) ** 2) / max(np.mean(want**2), 1e-12)))


def ms_per_image(run: Runner, feeds: Feeds, repeats: int = 5) -> float:
    """Median wall time of ``run(feeds)`` over ``repeats`` calls (after one warm-up), in ms per
    image of the batch."""
    run(feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)) / len(feeds["sample"])


# ----------------------------------------------------------------------------- the command


def calibration_for(
    onnx_path: str | os.PathLike,
    n: int,
    steps: int,
    model: str | os.PathLike | None,
    adapter: str | os.PathLike | None,
    seed: int,
) -> dict:
    """Calibration rows recorded with the torch model the ONNX was exported from (``model`` +
    ``adapter``, checked against the ONNX's ``merged_hash`` when it records one)."""
    from tte2tee_fast.export.calibrate import CalibConfig, record_calibration
    from tte2tee_fast.export.metadata import onnx_props
    from tte2tee_fast.export.onnx_export import load_merged

    from tte2tee_fast.models import model_hash

    props = onnx_props(_load(onnx_path))
    merged, spec, _, _ = load_merged(model, adapter)
    want = props.get("merged_hash")
    if want and model_hash(merged) != want:
        raise InputError(
            f"ONNX {onnx_path} holds weights {want[:12]}..., but --model/--adapter give "
            f"{model_hash(merged)[:12]}...: pass the model and adapter it was exported from"
        )
    if props.get("schema") and props["schema"] != spec.source.name:
        raise InputError(
            f"ONNX {onnx_path} takes {props['schema']!r} labels but the given model/adapter "
            f"maps {spec.source.name!r}: pass its adapter with --adapter"
        )
    return record_calibration(merged, spec, CalibConfig(n=n, steps=steps, seed=seed))


def quantize_engine(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    backend: str = "ort",
    precision: str = "int8",
    calib: int = 200,
    calib_file: str | os.PathLike | None = None,
    steps: int = 10,
    model: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    ignore: str = "first_last",
    seed: int = 0,
) -> tuple[Path, float]:
    """``tte2tee export quantize``: write the engine, return it and its max relative eps error
    against the fp32 ONNX (on ONNX Runtime) over held-out sampling inputs (seed + 1)."""
    from tte2tee_fast.export.calibrate import load_calibration, save_calibration

    if backend not in ("ort", "openvino") or precision not in ("int8", "fp16"):
        raise InputError(f"unknown backend/precision {backend}/{precision}")
    if precision == "fp16" and backend != "ort":
        raise InputError(
            "--precision fp16 writes an ONNX for GPUs: use --backend ort (OpenVINO IR weights "
            "are fp16-compressed by `tte2tee export openvino`)"
        )
    _load(onnx_path)  # a readable ONNX before any sampling
    if calib_file is not None and Path(calib_file).is_file():
        data = load_calibration(calib_file)
    else:
        data = calibration_for(onnx_path, calib, steps, model, adapter, seed)
        if calib_file is not None:
            save_calibration(calib_file, data)
    held = calibration_for(onnx_path, 16, steps, model, adapter, seed + 1)
    if precision == "fp16":
        path = convert_fp16(onnx_path, out)
        candidate = ort_runner(path)
    elif backend == "ort":
        path = quantize_ort_int8(onnx_path, out, data, ignore)
        candidate = ort_runner(path)
    else:
        path = quantize_openvino_int8(onnx_path, out, data, ignore)
        candidate = openvino_runner(path)
    batch = fixed_batch(_load(onnx_path)) or 8
    return path, eps_error(ort_runner(onnx_path), candidate, held, batch)


__all__ = [
    "IGNORE",
    "KEYS",
    "convert_fp16",
    "eps_error",
    "frame_error",
    "ms_per_image",
    "openvino_runner",
    "ort_runner",
    "quantize_engine",
    "quantize_openvino_int8",
    "quantize_ort_int8",
    "sample_frames",
]
