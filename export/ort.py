"""ONNX Runtime runner of a denoiser engine (numpy + onnxruntime, no torch).

Session options: graph optimisation ``ORT_ENABLE_ALL``, intra-op threads = physical cores
(or ``threads``), one inter-op thread, sequential execution. Providers by flag:

``cpu``       CPUExecutionProvider
``cuda``      CUDAExecutionProvider (+ CPU for what it lacks); inputs and the output are bound
              with IO binding (the output stays on the device until it is copied once)
``tensorrt``  TensorrtExecutionProvider, then CUDA, then CPU

A provider this onnxruntime build lacks is refused with one line saying what to install.
ONNX Runtime has no bf16 CPU kernels: its CPU fast path is int8 (another module).

Example::

    den = OrtDenoiser("runs/tee.onnx")                     # CPU, physical cores
    eps = den(x, t, labels)                                # [B, 1, H, W] float32
    eps = den(x, t, labels, guidance=2.0)                  # cond + null rows in one batch
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from tte2tee_fast.export.engine_io import physical_cores, run_denoiser
from tte2tee_fast.export.metadata import read_metadata

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


class OrtDenoiser:
    """Run a denoiser engine (``tte2tee export onnx``) in ONNX Runtime.

    ``metadata``: the engine's metadata dict; ``batch``: its fixed batch (None = dynamic);
    a fixed engine pads a short batch and chunks a longer one.
    """

    def __init__(
        self, path: str | os.PathLike, provider: str = "cpu", threads: int | None = None
    ) -> None:
        ort = import_onnxruntime()
        self.path = str(path)
        self.metadata = read_metadata(path)
        self.batch: int | None = self.metadata["batch"]
        self.provider = provider
        self.threads = int(threads) if threads else physical_cores()
        self.session = ort.InferenceSession(
            self.path, session_options(self.threads), providers=providers_for(provider)
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _run(self, x: np.ndarray, t: np.ndarray, y: np.ndarray, g: np.ndarray | None) -> np.ndarray:
        feed = {"sample": x, "timestep": t, "labels": y}
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
        return run_denoiser(
            self._run, self.metadata, sample, timestep, labels, guidance, self.batch, self.path
        )
