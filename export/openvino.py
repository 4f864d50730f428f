"""OpenVINO: IR conversion and the runner of a denoiser engine (numpy + openvino, no torch).

**IR** (:func:`convert_to_ir`, ``tte2tee export openvino``): ``f.xml`` + ``f.bin`` + the metadata
sidecar ``f.meta.json`` (also stored in the IR's ``rt_info``). Weights are written in fp32 by
default (``compress_fp16=False``), deliberately: on the CPU OpenVINO decompresses fp16 weights
back to f32 / bf16 when it compiles, so fp16 storage only halves the ``.bin`` and does not
speed inference up, while the rounding of every weight costs accuracy (1.6e-4 relative error on
the packaged model, docs/notes/engines.md), above the f32 parity bar of ``tte2tee export check``
(1e-4).
``--compress-fp16`` is there for size-limited deployments (and for GPU plugins that run fp16).

**Runner** (:class:`OpenVINODenoiser`): the same call interface as
:class:`~tte2tee_fast.export.ort.OrtDenoiser`. It always sets ``INFERENCE_PRECISION_HINT``
explicitly (``f32`` or ``bf16``): on CPUs with AVX512_BF16 / AMX OpenVINO would pick bf16 on
its own. On a CPU without bf16 hardware (this AVX2 machine) OpenVINO compiles a bf16 request as
f32; the runner reads the precision back from the compiled model (``effective_precision``) and
warns. Static shapes: an engine with a fixed batch is compiled as it is; a dynamic engine is
reshaped to ``batch`` when one is given (static shapes are faster in OpenVINO). Modes: LATENCY
runs engine batches one after the other on one request; THROUGHPUT runs them on an
``AsyncInferQueue`` with one request per stream. ``cache_dir`` sets OpenVINO's compiled-model
cache (``CACHE_DIR``), which makes the second load of the same engine skip compilation.

Example::

    convert_to_ir("runs/tee.onnx", "runs/tee.xml")
    den = OpenVINODenoiser("runs/tee.xml", precision="f32", batch=8)
    eps = den(x, t, labels)
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from tte2tee_fast.export.engine_io import physical_cores, run_denoiser
from tte2tee_fast.export.label_cache import LabelCache, cache_limit
from tte2tee_fast.export.metadata import (
    RT_INFO_KEY,
    as_strings,
    read_metadata,
    sidecar_path,
    write_sidecar,
)
from tte2tee_fast.export.ov_split import SplitModels, split_at_input

from tte2tee_fast.errors import InputError

PRECISIONS = {"f32": "f32", "bf16": "bf16"}
MODES = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def import_openvino() -> Any:
    """``openvino``, or one line saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise InputError("the openvino backend needs OpenVINO: pip install openvino") from None
    return openvino


def cpu_has_bf16(core: Any) -> bool:
    """Whether OpenVINO's CPU plugin reports native bf16 (AVX512_BF16 / AMX)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def convert_to_ir(
    onnx_path: str | os.PathLike, out_xml: str | os.PathLike, compress_fp16: bool = False
) -> Path:
    """Convert an engine ``.onnx`` to OpenVINO IR ``out_xml`` (+ ``.bin`` + ``.meta.json``).

    All three files are written in a temporary folder beside ``out_xml`` and moved into place
    (the ``.xml`` last) when complete. ``compress_fp16``: store weights in fp16 (see module)."""
    ov = import_openvino()
    out_xml = Path(out_xml)
    if out_xml.suffix != ".xml":
        raise InputError(f"OpenVINO IR name must end in .xml, got {out_xml}")
    meta = read_metadata(onnx_path)
    model = ov.convert_model(str(onnx_path))
    for key, value in as_strings(meta).items():
        model.set_rt_info(value, [RT_INFO_KEY, key])
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_xml.stem}.", dir=out_xml.parent))
    try:
        ov.save_model(model, str(tmp / out_xml.name), compress_to_fp16=compress_fp16)
        write_sidecar(tmp / out_xml.name, meta)
        bin_name = out_xml.with_suffix(".bin").name
        os.replace(tmp / bin_name, out_xml.parent / bin_name)
        os.replace(sidecar_path(tmp / out_xml.name), sidecar_path(out_xml))
        os.replace(tmp / out_xml.name, out_xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_xml


def _boundary_as_bf16(
    ov: Any, split: SplitModels, label_model: Any, step_model: Any
) -> tuple[Any, Any]:
    """The two halves with their f32 boundary tensors held in bf16 (half the memory and traffic;
    a bf16 request computes them in bf16 anyway)."""
    from openvino.preprocess import PrePostProcessor

    out_pp, in_pp = PrePostProcessor(label_model), PrePostProcessor(step_model)
    for name in split.names:
        if label_model.output(name).get_element_type() == ov.Type.f32:
            out_pp.output(name).tensor().set_element_type(ov.Type.bf16)
            in_pp.input(name).tensor().set_element_type(ov.Type.bf16)
    return out_pp.build(), in_pp.build()


def _label_run(ov: Any, compiled: Any, names: tuple[str, ...]) -> Any:
    """:class:`~tte2tee_fast.export.label_cache.LabelCache`'s ``run`` of a compiled label part:
    it writes into preallocated ``ov.Tensor`` s (a dropped batch's, else new ones)."""
    request = compiled.create_infer_request()

    def run(labels: np.ndarray, recycled: dict | None) -> dict:
        tensors = recycled
        if tensors is None:
            tensors = {}
            for name in names:
                port = compiled.output(name)
                tensors[name] = ov.Tensor(port.get_element_type(), port.get_shape())
        for name, tensor in tensors.items():
            request.set_tensor(name, tensor)  # the label part writes into them
        request.infer({"labels": labels}, share_outputs=True)  # no copy of the features
        return tensors

    return run


class OpenVINODenoiser:
    """Run a denoiser engine (``.xml`` IR or ``.onnx``) in OpenVINO on the CPU.

    ``precision``: ``f32`` | ``bf16`` (always set explicitly); ``mode``: ``latency`` |
    ``throughput``; ``streams``: NUM_STREAMS (default: OpenVINO's choice for the mode);
    ``batch``: compile a dynamic engine at this static batch; ``cache_dir``: compiled-model
    cache; ``threads``: INFERENCE_NUM_THREADS (default: physical cores); ``label_cache``: in
    latency mode, split off the label-only part of the graph (:mod:`~tte2tee_fast.export.ov_split`)
    and keep its outputs for as many label batches as one call has engine batches (at most
    ``label_cache``, and at most :data:`~tte2tee_fast.export.label_cache.LABEL_CACHE_BYTES` in all), least recently used dropped;
    0: run the whole graph at every call. ``self.split`` is ``None`` when nothing was split;
    ``self.label_cache_bytes`` is the memory of one kept label batch.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        precision: str = "f32",
        mode: str = "latency",
        streams: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        threads: int | None = None,
        batch: int | None = None,
        device: str = "CPU",
        label_cache: int = 4,
    ) -> None:
        ov = import_openvino()
        if precision not in PRECISIONS:
            raise InputError(f"OpenVINO precision {precision!r}: choose {list(PRECISIONS)}")
        if mode not in MODES:
            raise InputError(f"OpenVINO mode {mode!r}: choose {list(MODES)}")
        self.path = str(path)
        self.metadata = read_metadata(path)
        core = ov.Core()
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache_dir)})
        model = core.read_model(self.path)
        self.batch: int | None = self.metadata["batch"]
        if self.batch is None and batch is not None:
            self._reshape(model, int(batch))
            self.batch = int(batch)
        elif batch is not None and batch != self.batch:
            raise InputError(f"engine {path} has a fixed batch {self.batch}, not {batch}")
        self.threads = int(threads) if threads else physical_cores()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
            "PERFORMANCE_HINT": MODES[mode],
            "INFERENCE_NUM_THREADS": self.threads,
        }
        if streams is not None:
            config["NUM_STREAMS"] = int(streams)
        self.split: SplitModels | None = None  # its models dropped once compiled
        self.features: LabelCache | None = None
        self.label_cache_bytes = 0  # the label features of one engine batch
        split = None
        if label_cache > 0 and mode == "latency":
            split = split_at_input(model.clone())  # None: nothing label-only to split off
        if split is not None:
            bf16 = precision == "bf16" and cpu_has_bf16(core)  # the graph computes them in bf16
            nbytes = split.elements * (2 if bf16 else 4)
            limit = cache_limit(label_cache, nbytes, self.path)
            if limit >= 1:
                label_model, model = split.label_model, split.step_model
                if bf16:
                    label_model, model = _boundary_as_bf16(ov, split, label_model, model)
                compiled = core.compile_model(label_model, device, config)
                self.features = LabelCache(_label_run(ov, compiled, split.names), limit)
                self.label_cache_bytes = nbytes
                self.split = dataclasses.replace(split, label_model=None, step_model=None)
        self._bound: dict | None = None  # the label features the step request reads now
        self.compiled = core.compile_model(model, device, config)
        self.precision = precision
        self.mode = mode
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.effective_precision = getattr(hint, "to_string", lambda: str(hint))()  # "f32"
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        self.warning = None
        if precision == "bf16" and not cpu_has_bf16(core):
            self.warning = (
                "this CPU has no bf16 hardware (no AVX512_BF16 / AMX): OpenVINO compiled the "
                f"bf16 request as {self.effective_precision}"
            )
            warnings.warn(self.warning, UserWarning, stacklevel=2)
        self.request = self.compiled.create_infer_request()
        self.queue = None
        if mode == "throughput":
            self.queue = ov.AsyncInferQueue(self.compiled, max(1, self.streams))

    def _reshape(self, model: Any, batch: int) -> None:
        s = int(self.metadata["sample_size"])
        shapes = {"sample": [batch, 1, s, s], "timestep": [batch], "labels": [batch, s, s]}
        if self.metadata["variant"] == "guided":
            shapes["guidance"] = [1]
        model.reshape({name: shapes[name] for name in shapes})

    def _feed(self, x: np.ndarray, t: np.ndarray, y: np.ndarray, g: np.ndarray | None) -> dict:
        feed = {"sample": x, "timestep": t}
        if self.split is None:
            feed["labels"] = y
        if g is not None:
            feed["guidance"] = g
        return feed

    def _run(self, x: np.ndarray, t: np.ndarray, y: np.ndarray, g: np.ndarray | None) -> np.ndarray:
        if self.features is not None:
            tensors = self.features.lookup(y)
            if tensors is not self._bound:
                for name, tensor in tensors.items():
                    self.request.set_tensor(name, tensor)
                self._bound = tensors
        out = self.request.infer(self._feed(x, t, y, g))
        return np.array(out[self.compiled.output(0)], dtype=np.float32)  # copy out of the request

    def _run_many(self, chunks: list[tuple]) -> list[np.ndarray]:
        """Engine batches on the AsyncInferQueue (one request per stream), outputs in order."""
        results: list = [None] * len(chunks)

        def done(request: Any, index: int) -> None:
            results[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32)

        self.queue.set_callback(done)
        for i, chunk in enumerate(chunks):
            self.queue.start_async(self._feed(*chunk), i)
        self.queue.wait_all()
        return results

    def __call__(
        self,
        sample: np.ndarray,  # [B, 1, H, W] float32
        timestep: np.ndarray,  # [B] integer
        labels: np.ndarray,  # [B, H, W] integer, source schema
        guidance: float | None = None,
    ) -> np.ndarray:
        """eps ``[B, 1, H, W]`` float32 (see :mod:`tte2tee_fast.export.engine_io`)."""
        many = self._run_many if self.queue is not None else None
        if self.features is not None:  # split engines have a static batch
            self.features.fit_call(self.metadata, sample, guidance, self.batch)
        return run_denoiser(
            self._run,
            self.metadata,
            sample,
            timestep,
            labels,
            guidance,
            self.batch,
            self.path,
            run_many=many,
        )
