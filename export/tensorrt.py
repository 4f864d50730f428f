"""TensorRT engines of the denoiser ONNX: build (profiles, precision, timing cache, REFIT), a
JSON sidecar checked before deserialising, and :class:`TrtDenoiser` (numpy in, numpy out).

Build::

    ONNX (sample, timestep, labels -> eps)  --OnnxParser-->  network
    optimisation profile: (min, opt, max) batch of every input, from ``--batch 1:8:32``
    precision: fp32 | fp16 | bf16; TensorRT 10 sets BuilderFlag.FP16 / BF16 (weak typing),
               TensorRT 11 removed those flags: there the ONNX must already hold that precision
               (``tte2tee export quantize --precision fp16``) and the network is strongly typed
    REFIT (``--refittable``): weights can be swapped later (:mod:`tte2tee_fast.export.trt_refit`)
    timing cache: read from and written back to ``--timing-cache FILE`` (rebuilds take seconds)

The sidecar ``f.plan.json`` records what the plan is bound to: TensorRT version, GPU name and
compute capability (a plan runs only on the GPU model and TensorRT version that built it), the
profile shapes, precision, the refittable flag, the sha256 of the ONNX file and its ``tte2tee.*``
metadata (model / adapter / merged hashes, schema). :func:`check_sidecar` compares it with the
running machine BEFORE the plan is deserialised, so a foreign plan fails with one line instead
of a TensorRT crash. The pure parts (batch strings, profile shapes, sidecar checks) are tested on
the CPU; the build and the runner need ``tensorrt`` and an NVIDIA GPU.

Device buffers of :class:`TrtDenoiser` are torch CUDA tensors (torch is a dependency of this
package; the torch-free edge runtime uses ONNX Runtime / OpenVINO, not TensorRT).

Example::

    build_engine("runs/tee.onnx", "runs/tee.plan", precision="fp16", batch="1:8:32",
                 timing_cache="runs/trt.cache", refittable=True)
    eps = TrtDenoiser("runs/tee.plan")(sample, timestep, labels)     # numpy [B, 1, H, W]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import staged_file, write_json_atomic

PRECISIONS = ("fp32", "fp16", "bf16")
SIDECAR_SUFFIX = ".json"
SIDECAR_VERSION = 1
INPUTS = ("sample", "timestep", "labels")
INSTALL_HINT = (
    "TensorRT is not installed: `pip install tensorrt` (10.x or 11.x) on a machine with an "
    "NVIDIA GPU and driver; on CPU-only machines use --backend ort or openvino"
)

Shape = tuple[int, ...]


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or InputError saying what to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return trt


# ----------------------------------------------------------------------------- profiles


def parse_batch(text: str) -> tuple[int, int, int]:
    """``"8"`` -> (8, 8, 8); ``"1:8:32"`` -> (1, 8, 32) (min:opt:max, min <= opt <= max)."""
    parts = str(text).split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"--batch {text!r}: give N or MIN:OPT:MAX with integers") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise InputError(f"--batch {text!r}: give N or MIN:OPT:MAX (three values)")
    lo, opt, hi = values
    if not 1 <= lo <= opt <= hi:
        raise InputError(f"--batch {text!r}: need 1 <= MIN <= OPT <= MAX")
    return lo, opt, hi


@dataclass(frozen=True)
class GraphInput:
    """One ONNX graph input: name, numpy dtype name, dims (an int, or None where symbolic)."""

    name: str
    dtype: str
    dims: tuple[int | None, ...]


def onnx_inputs(model_or_path: Any) -> list[GraphInput]:
    """The real inputs of an ONNX model (initializers excluded), in graph order."""
    import onnx
    from onnx import helper

    proto = _load_onnx(model_or_path) if not isinstance(model_or_path, onnx.ModelProto) else None
    proto = proto or model_or_path
    inits = {i.name for i in proto.graph.initializer}
    out = []
    for v in proto.graph.input:
        if v.name in inits:
            continue
        tt = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        out.append(GraphInput(v.name, dtype, dims))
    return out


def profile_shapes(
    inputs: list[GraphInput], batch: tuple[int, int, int], where: str = "ONNX"
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """``{input: (min, opt, max) shape}`` of one optimisation profile for ``batch``.

    The batch is dimension 0 of every input whose rank is > 0 (``guidance [1]`` of the guided
    variant is fixed). A fixed-batch ONNX (dim 0 an integer) accepts only that batch. Every
    other dimension must be fixed in the ONNX (the engines are exported at one image size).
    """
    out: dict[str, tuple[Shape, Shape, Shape]] = {}
    for inp in inputs:
        if not inp.dims or inp.name == "guidance":
            if any(d is None for d in inp.dims):
                raise InputError(f"{where}: input {inp.name!r} has a symbolic dimension")
            fixed = tuple(int(d) for d in inp.dims)
            out[inp.name] = (fixed, fixed, fixed)
            continue
        rest = inp.dims[1:]
        if any(d is None for d in rest):
            raise InputError(
                f"{where}: input {inp.name!r} {_dims(inp.dims)} has a symbolic dimension other "
                "than the batch; export it at a fixed image size"
            )
        b0 = inp.dims[0]
        if b0 is not None and batch != (b0, b0, b0):
            raise InputError(
                f"{where} has a fixed batch of {b0} (input {inp.name!r} {_dims(inp.dims)}): "
                f"--batch {':'.join(map(str, batch))} is not possible; use --batch {b0} or "
                "export with a dynamic batch"
            )
        out[inp.name] = tuple((b, *(int(d) for d in rest)) for b in batch)  # type: ignore[assignment]
    return out


def _dims(dims: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("B" if d is None else str(d) for d in dims) + "]"


def _load_onnx(path: Any) -> Any:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as e:  # DecodeError and friends for foreign files
        raise InputError(f"{path} is not a readable ONNX file: {e}") from None


# ----------------------------------------------------------------------------- sidecar


@dataclass(frozen=True)
class TrtEnvironment:
    """What a plan is bound to: the TensorRT version and the GPU (name, compute capability)."""

    trt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"


def current_environment(device: int = 0) -> TrtEnvironment:
    """The environment of this process: ``tensorrt.__version__`` and CUDA device ``device``."""
    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise InputError("TensorRT engines need an NVIDIA GPU: torch sees no CUDA device")
    props = torch.cuda.get_device_properties(device)
    return TrtEnvironment(trt.__version__, props.name, f"{props.major}.{props.minor}")


def sidecar_path(plan: str | os.PathLike) -> Path:
    """``f.plan`` -> ``f.plan.json``."""
    plan = Path(plan)
    return plan.with_name(plan.name + SIDECAR_SUFFIX)


def make_sidecar(
    env: TrtEnvironment,
    onnx_sha256: str,
    onnx_meta: Mapping[str, Any],
    profile: Mapping[str, tuple[Shape, Shape, Shape]],
    precision: str,
    refittable: bool,
    onnx_path: str | None = None,
) -> dict[str, Any]:
    """The sidecar dict of a plan (JSON-ready)."""
    return {
        "format_version": SIDECAR_VERSION,
        "tensorrt_version": env.trt_version,
        "gpu_name": env.gpu_name,
        "compute_capability": env.compute_capability,
        "precision": precision,
        "refittable": bool(refittable),
        "profile": {k: [list(s) for s in v] for k, v in profile.items()},
        "onnx_sha256": onnx_sha256,
        "onnx_path": onnx_path,
        "onnx_metadata": dict(onnx_meta),
    }


def read_sidecar(plan: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of ``plan``; InputError when it is missing or unreadable."""
    plan = Path(plan)
    if not plan.is_file():
        raise InputError(f"TensorRT engine {plan} does not exist")
    side = sidecar_path(plan)
    if not side.is_file():
        raise InputError(
            f"TensorRT engine {plan} has no sidecar {side.name}: rebuild it with `tte2tee export trt`"
        )
    try:
        data = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{side}: unreadable sidecar: {e}") from None
    if not isinstance(data, dict) or data.get("format_version") != SIDECAR_VERSION:
        raise InputError(f"{side}: not a tte2tee TensorRT sidecar (format_version)")
    return data


def check_sidecar(
    sidecar: Mapping[str, Any],
    env: TrtEnvironment,
    where: str = "engine",
    model_hash: str | None = None,
) -> None:
    """Refuse a plan built for another GPU, compute capability, TensorRT version or base model,
    with one line naming both values (checked before the plan is deserialised)."""
    if sidecar.get("compute_capability") != env.compute_capability:
        raise InputError(
            f"{where} was built for compute capability {sidecar.get('compute_capability')} "
            f"({sidecar.get('gpu_name')}), this GPU ({env.gpu_name}) is "
            f"{env.compute_capability}: rebuild it here with `tte2tee export trt`"
        )
    if sidecar.get("gpu_name") != env.gpu_name:
        raise InputError(
            f"{where} was built on GPU {sidecar.get('gpu_name')!r}, this GPU is "
            f"{env.gpu_name!r}: rebuild it here with `tte2tee export trt`"
        )
    if sidecar.get("tensorrt_version") != env.trt_version:
        raise InputError(
            f"{where} was built with TensorRT {sidecar.get('tensorrt_version')}, this is "
            f"TensorRT {env.trt_version}: rebuild it with `tte2tee export trt`"
        )
    have = (sidecar.get("onnx_metadata") or {}).get("model_hash")
    if model_hash is not None and have != model_hash:
        raise InputError(
            f"{where} was built from base model {have}, but the given model hashes to {model_hash}"
        )


# ----------------------------------------------------------------------------- build


def _has_flag(trt: Any, name: str) -> bool:
    return hasattr(trt.BuilderFlag, name)


def _onnx_float_types(proto: Any) -> set[str]:
    from onnx import TensorProto

    kinds = {TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16"}
    return {kinds[i.data_type] for i in proto.graph.initializer if i.data_type in kinds}


def build_engine(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    precision: str = "fp16",
    batch: str = "1:8:32",
    timing_cache: str | os.PathLike | None = None,
    refittable: bool = False,
    workspace_gib: float = 4.0,
    device: int = 0,
) -> Path:
    """Build a TensorRT plan of ``onnx_path`` and write it and its sidecar (atomically).

    Raises InputError before any TensorRT work for a bad precision, batch or ONNX file, and
    when ``tensorrt`` or a GPU is missing.
    """
    from tte2tee_fast.export.metadata import file_sha256, onnx_props

    if precision not in PRECISIONS:
        raise InputError(f"unknown TensorRT precision {precision!r}; choose one of {PRECISIONS}")
    proto = _load_onnx(onnx_path)
    shapes = profile_shapes(onnx_inputs(proto), parse_batch(batch), str(onnx_path))
    trt = import_tensorrt()
    env = current_environment(device)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak = _has_flag(trt, "FP16")  # TensorRT 10: weak typing with precision flags
    if not weak:  # TensorRT 11: strongly typed always; the ONNX carries the precision
        stored = _onnx_float_types(proto)
        if precision != "fp32" and precision not in stored:
            raise InputError(
                f"TensorRT {trt.__version__} builds strongly typed networks only: {onnx_path} "
                f"holds no {precision} weights; convert it first (tte2tee export quantize "
                "--backend ort --precision fp16) or use TensorRT 10"
            )
    flags = 0  # explicit batch is the default (and the only mode) since TensorRT 10
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if weak and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if weak and precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    if refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)  # ignore_mismatch=False: refuse a foreign cache
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise InputError(f"TensorRT could not build an engine from {onnx_path} (see its log)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = onnx_props(proto)
    side = make_sidecar(
        env, file_sha256(onnx_path), meta, shapes, precision, refittable, str(onnx_path)
    )
    # plan first, sidecar last: a plan without its sidecar is refused, never misread
    sidecar_path(out).unlink(missing_ok=True)
    with staged_file(out) as tmp:
        tmp.write_bytes(bytes(plan))
    write_json_atomic(sidecar_path(out), side)
    if cache_path is not None:
        with staged_file(cache_path) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return out


# ----------------------------------------------------------------------------- runtime


def load_engine(plan: str | os.PathLike, device: int = 0, model_hash: str | None = None) -> Any:
    """``(engine, sidecar)``: the sidecar is checked against this machine first."""
    sidecar = read_sidecar(plan)
    trt = import_tensorrt()
    check_sidecar(sidecar, current_environment(device), f"TensorRT engine {plan}", model_hash)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(plan).read_bytes())
    if engine is None:
        raise InputError(f"TensorRT could not deserialise {plan}")
    return engine, sidecar


class TrtDenoiser:
    """Run a TensorRT plan: ``runner(sample, timestep, labels, guidance=None) -> eps`` numpy,
    the call of the ONNX Runtime and OpenVINO runners (:mod:`tte2tee_fast.export.engine_io`:
    the same input checks, label values against the engine's schema, fixed-batch chunking,
    guidance). Device buffers are torch CUDA tensors on ``device``.
    """

    def __init__(self, plan: str | os.PathLike, device: int = 0) -> None:
        import torch
        from tte2tee_fast.export.metadata import parse

        self._trt = import_tensorrt()
        self.plan = Path(plan)
        self.engine, self.sidecar = load_engine(plan, device)
        self.metadata = parse(dict(self.sidecar.get("onnx_metadata") or {}), str(plan))
        self.context = self.engine.create_execution_context()
        self.device = torch.device("cuda", device)
        self.stream = torch.cuda.Stream(self.device)
        lo, _, hi = (s[0] for s in self.sidecar["profile"]["sample"])
        self.batch_range = (int(lo), int(hi))
        self.batch: int | None = self.metadata["batch"]  # None: the profile's range

    def _run(self, x: np.ndarray, t: np.ndarray, y: np.ndarray, g: np.ndarray | None) -> np.ndarray:
        import torch

        feeds = {"sample": x, "timestep": t, "labels": y}
        if g is not None:
            feeds["guidance"] = np.asarray(g, np.float32).reshape(1)
        if not self.batch_range[0] <= x.shape[0] <= self.batch_range[1]:
            raise InputError(
                f"TensorRT engine {self.plan} takes batches {self.batch_range[0]}.."
                f"{self.batch_range[1]}, got {x.shape[0]}"
            )
        with torch.cuda.stream(self.stream):
            bufs = {
                k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device, non_blocking=True)
                for k, v in feeds.items()
            }
            for name, buf in bufs.items():
                self.context.set_input_shape(name, tuple(buf.shape))
                self.context.set_tensor_address(name, buf.data_ptr())
            half = self.engine.get_tensor_dtype("eps") == self._trt.DataType.HALF
            eps = torch.empty(
                tuple(self.context.get_tensor_shape("eps")),
                dtype=torch.float16 if half else torch.float32,
                device=self.device,
            )
            self.context.set_tensor_address("eps", eps.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution of {self.plan} failed")
            result = eps.float().cpu()
        self.stream.synchronize()
        return result.numpy()

    def __call__(
        self,
        sample: np.ndarray,  # [B, 1, H, W] float32
        timestep: np.ndarray,  # [B] integer
        labels: np.ndarray,  # [B, H, W] integer, source schema
        guidance: float | None = None,
    ) -> np.ndarray:
        """eps ``[B, 1, H, W]`` float32."""
        from tte2tee_fast.export.engine_io import run_denoiser

        return run_denoiser(
            self._run, self.metadata, sample, timestep, labels, guidance, self.batch,
            str(self.plan),
        )  # fmt: skip
