"""ONNX Runtime runner of a denoiser engine (numpy + onnxruntime, no torch).

Session options: graph optimisation ``ORT_ENABLE_ALL``, intra-op threads = physical cores
(or ``threads``), one inter-op thread, sequential execution. Providers by flag:

``cpu``       CPUExecutionProvider
``cuda``      CUDAExecutionProvider (+ CPU for what it lacks); inputs and the output are bound
              with IO binding (the output stays on the device until it is copied once)
``tensorrt``  TensorrtExecutionProvider, then CUDA, then CPU

A provider this onnxruntime build lacks is refused with one line saying what to install.
ONNX Runtime has no bf16 CPU kernels: its CPU fast path is int8 (another module).

Label cache (``label_cache``, CPU provider, static-batch denoiser engines): the graph is split
at its ``labels`` input (:mod:`~tte2tee_fast.export.onnx_split`) into a label part, run once per
label batch, and a step part, run at every call; the label part's outputs are kept for as many
label batches as one call has engine batches (:mod:`~tte2tee_fast.export.label_cache`). The
split is exact (the same nodes): on the packaged ``tiny`` engine at batch 8 its eps equals the
whole graph's bit for bit; 0 runs the whole graph at every call.

Example::

    den = OrtDenoiser("runs/tee.onnx")                     # CPU, physical cores
    eps = den(x, t, labels)                                # [B, 1, H, W] float32
    eps = den(x, t, labels, guidance=2.0)                  # cond + null rows in one batch
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import numpy as np
from tte2tee_fast.export.engine_io import physical_cores, run_denoiser
from tte2tee_fast.export.label_cache import LabelCache, cache_limit
from tte2tee_fast.export.metadata import read_metadata
from tte2tee_fast.export.onnx_split import OnnxSplit, split_onnx_at_input

from tte2tee_fast.errors import InputError

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_INSTALL = {
    "CUDAExecutionProvider": "pip install onnxruntime-gpu (and a CUDA GPU with its driver)",
    "TensorrtExecutionProvider": "pip install onnxruntime-gpu tensorrt (and a CUDA GPU)",
}


def import_onnxruntime() -> Any:
    """``onnxruntime``, or one line saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise InputError(
            "the ort backend needs onnxruntime: pip install onnxruntime (CPU) "
            "or onnxruntime-gpu (CUDA / TensorRT)"
        ) from None
    return onnxruntime


def session_options(threads: int | None = None) -> Any:
    """``SessionOptions``: ORT_ENABLE_ALL, ``threads`` (default: physical cores) intra-op."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(threads) if threads else physical_cores()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    return opts


def providers_for(provider: str) -> list[str]:
    """The provider list of ``provider``; InputError when this onnxruntime lacks one."""
    if provider not in PROVIDERS:
        raise InputError(f"unknown ONNX Runtime provider {provider!r}; choose {list(PROVIDERS)}")
    ort = import_onnxruntime()
    available = set(ort.get_available_providers())
    wanted = PROVIDERS[provider]
    if wanted[0] not in available:
        raise InputError(
            f"ONNX Runtime provider {provider!r} ({wanted[0]}) is not in this onnxruntime "
            f"build (has {sorted(available)}): {_INSTALL.get(wanted[0], 'reinstall onnxruntime')}"
        )
    return [p for p in wanted if p in available]


def _label_run(session: Any, names: tuple[str, ...]) -> Any:
    """:class:`~tte2tee_fast.export.label_cache.LabelCache`'s ``run`` of a label-part session:
    into the arrays of a dropped batch where there is one (IO binding: no new 387 MB per mask
    batch at batch 8, whose first touch costs page faults), else into new ones."""

    def run(labels: np.ndarray, recycled: dict | None) -> dict:
        if recycled is None:
            return dict(zip(names, session.run(list(names), {"labels": labels}), strict=True))
        binding = session.io_binding()
        labels = np.ascontiguousarray(labels)  # held here while ORT reads it
        binding.bind_cpu_input("labels", labels)
        for name in names:
            out = recycled[name]  # [B, C, H, W], C-contiguous (ORT made it), its own dtype
            binding.bind_output(name, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        session.run_with_iobinding(binding)
        return recycled

    return run


class OrtDenoiser:
    """Run a denoiser engine (``tte2tee export onnx``) in ONNX Runtime.

    ``metadata``: the engine's metadata dict; ``batch``: its fixed batch (None = dynamic);
    a fixed engine pads a short batch and chunks a longer one. ``label_cache``: on the CPU
    provider, keep the label part's outputs of at most this many label batches (module
    docstring); ``self.split`` is ``None`` when the whole graph runs at every call, and
    ``self.label_cache_bytes`` is the memory of one kept label batch. One runner serves one
    thread: a label run may overwrite the features of the batch it drops.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        provider: str = "cpu",
        threads: int | None = None,
        label_cache: int = 4,
    ) -> None:
        ort = import_onnxruntime()
        self.path = str(path)
        self.metadata = read_metadata(path)
        self.batch: int | None = self.metadata["batch"]
        self.provider = provider
        self.threads = int(threads) if threads else physical_cores()
        providers = providers_for(provider)
        options = session_options(self.threads)
        self.split: OnnxSplit | None = None  # its models dropped once the sessions exist
        self.features: LabelCache | None = None
        self.label_cache_bytes = 0
        model: str | bytes = self.path
        split = self._split() if label_cache > 0 and provider == "cpu" else None
        if split is not None:
            limit = cache_limit(label_cache, split.nbytes, self.path)
            if limit >= 1:
                label = ort.InferenceSession(split.label_model, options, providers=providers)
                self.features = LabelCache(_label_run(label, split.names), limit)
                self.label_cache_bytes = split.nbytes
                model = split.step_model
                self.split = dataclasses.replace(split, label_model=b"", step_model=b"")
        self.session = ort.InferenceSession(model, options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _split(self) -> OnnxSplit | None:
        """The engine split at ``labels``; None for baked sampler graphs (one call is a whole
        sampling run: nothing repeats between calls) and where nothing can be split."""
        import onnx

        if self.metadata["variant"] not in ("eps", "guided") or self.batch is None:
            return None
        try:
            return split_onnx_at_input(onnx.load(self.path))
        except Exception as e:  # an engine the ONNX tools cannot cut (contrib ops, ...): whole
            warnings.warn(
                f"{self.path}: no label cache ({type(e).__name__}: {e}); the whole graph runs "
                "at every call",
                UserWarning,
                stacklevel=3,
            )
            return None

    def _run(self, x: np.ndarray, t: np.ndarray, y: np.ndarray, g: np.ndarray | None) -> np.ndarray:
        feed = {"sample": x, "timestep": t}
        if self.features is not None:
            feed.update(self.features.lookup(y))
        else:
            feed["labels"] = y
        if g is not None:
            feed["guidance"] = g
        if self.provider == "cpu":
            return self.session.run(["eps"], feed)[0]
        binding = self.session.io_binding()  # CUDA / TensorRT: bind, run, copy once
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("eps", "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def __call__(
        self,
        sample: np.ndarray,  # [B, 1, H, W] float32
        timestep: np.ndarray,  # [B] integer
        labels: np.ndarray,  # [B, H, W] integer, source schema
        guidance: float | None = None,
    ) -> np.ndarray:
        """eps ``[B, 1, H, W]`` float32 (see :mod:`tte2tee_fast.export.engine_io`)."""
        if self.features is not None:  # split engines have a static batch
            self.features.fit_call(self.metadata, sample, guidance, self.batch)
        return run_denoiser(
            self._run, self.metadata, sample, timestep, labels, guidance, self.batch, self.path
        )
