"""Denoiser benchmark (``tte2tee bench denoiser``): one network evaluation ``model(x, t, cond)``,
ms per image, per batch size and execution mode, as ratios against eager fp32 in the same process.

Modes:

- ``eager_fp32``  the baseline: plain PyTorch, fp32.
- ``eager_bf16``  ``torch.autocast(device, bfloat16)`` around the forward (weights stay fp32),
  what ``tte2tee sample --bf16`` runs.
- ``compile_fp32`` / ``compile_bf16`` (``compile=True``): ``torch.compile(model)``; the first
  call per batch size compiles (seconds for ``tiny``, minutes for ``sdm256``), outside the timing.
  A mode that fails to compile (no C++ compiler for inductor, ...) is reported with its error
  instead of a time.

Engine backends (``backends``, CPU; the model is exported once to a temporary dynamic-batch
ONNX engine with the MaskR² lookup inside, so engines take the raw label map):

- ``ort_fp32``       ONNX Runtime, CPUExecutionProvider, ORT_ENABLE_ALL (no bf16 CPU kernels).
- ``openvino_f32``   OpenVINO, ``INFERENCE_PRECISION_HINT=f32`` (set explicitly: OpenVINO picks
  bf16 by itself on AVX512_BF16 CPUs), LATENCY, 1 stream, compiled at the static batch.
- ``openvino_bf16``  the same with the bf16 hint (``precision`` in the row says what OpenVINO
  compiled: a CPU without bf16 hardware runs f32).
- ``openvino_f32_2s`` THROUGHPUT with 2 streams: the batch is split into two static halves run
  on an AsyncInferQueue (1 vs 2 streams on the same cores).

Threads: torch's intra-op threads (``torch.get_num_threads()``) for every backend. Engine
timings include the runner's input checks (label values against the schema), as a user calls
it.

Inputs are random but fixed per batch size (seed ``seed``): ``x`` ~ N(0, 1), timesteps drawn
in [0, 1000), random label values of the MaskR² spec's source schema (``spec``; the identity
TTE spec by default) and their one-hot conditioning. ``max_rel_err`` = max |y - y_fp32| /
max |y_fp32| of each mode's output against eager fp32 on the same inputs (bf16 costs accuracy;
compile should not). Timing: ``triton.testing.do_bench`` medians on CUDA, median wall time of
``repeats`` calls after a warm-up call on the CPU (:func:`~tte2tee_fast.bench.kernels.time_ms`).

The model is ``--model`` (a folder), else a ``--preset`` with random weights, else the packaged
phantom-trained weights when this install carries them, else ``tiny`` with random weights.
Random weights get their zero-initialised output convs re-drawn (``reset_parameters``) so the
output, and with it ``max_rel_err``, is not identically zero; weights do not change the speed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tte2tee_fast.bench.kernels import time_ms
from tte2tee_fast.errors import InputError

BASELINE = "eager_fp32"
BACKENDS = ("torch", "ort", "openvino")
ENGINE_MODES = {
    "ort": ("ort_fp32",),
    "openvino": ("openvino_f32", "openvino_bf16", "openvino_f32_2s"),
}


@dataclass(frozen=True)
class DenoiserBenchConfig:
    """Batch sizes and modes to time."""

    batches: tuple[int, ...] = (1, 8, 16)
    bf16: bool = True
    compile: bool = False
    repeats: int = 5  # CPU timing repeats (CUDA: do_bench decides)
    seed: int = 0
    backends: tuple[str, ...] = ("torch",)  # torch always runs (eager fp32 is the baseline)

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", tuple(int(b) for b in self.batches))
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise InputError(f"unknown backends {bad}; choose from {list(BACKENDS)}")
        if not self.batches or min(self.batches) < 1:
            raise InputError(f"batch sizes must be >= 1, got {list(self.batches)}")
        if self.repeats < 1:
            raise InputError(f"repeats must be >= 1, got {self.repeats}")

    @property
    def modes(self) -> tuple[str, ...]:
        precisions = ("fp32", "bf16") if self.bf16 else ("fp32",)
        kinds = ("eager", "compile") if self.compile else ("eager",)
        modes = [f"{k}_{p}" for k in kinds for p in precisions]
        for backend in BACKENDS[1:]:
            if backend in self.backends:
                modes += [m for m in ENGINE_MODES[backend] if self.bf16 or "bf16" not in m]
        return tuple(modes)


def mask_batch(runner: Callable, x: Any, labels: Any, nfe: int) -> None:
    """One mask batch as a sampler runs it: ``nfe`` calls ``runner(x, t, labels)`` on the same
    labels, ``t`` from 999 down (numpy arrays: ``x [B, 1, S, S]``, ``labels [B, S, S]``)."""
    import numpy as np

    for step in range(nfe):
        runner(x, np.full(len(x), 999 - step * (999 // nfe), np.int64), labels)


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,8,16"`` -> ``(1, 8, 16)``."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--batch {text!r}: give a comma list of integers, e.g. 1,8,16") from None
    if not values or min(values) < 1:
        raise InputError(f"--batch {text!r}: batch sizes must be >= 1")
    return values


def _redraw_zero_layers(model: nn.Module) -> None:
    """Re-draw the all-zero conv / linear weights of a randomly initialised model."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not bool(m.weight.any()):
            m.reset_parameters()


def load_bench_model(model_dir: str | None, preset: str | None) -> tuple[nn.Module, str]:
    """``(model, description)``: see the module docstring for the order of choices."""
    from tte2tee_fast.models import from_preset, load_model
    from tte2tee_fast.packaged import DEFAULT_MODEL, packaged_path, resolve_model_path

    if model_dir is not None and preset is not None:
        raise InputError("give --model or --preset, not both")
    if model_dir is not None:
        path = resolve_model_path(model_dir)
        return load_model(path), str(path)
    if preset is None:
        try:
            path = packaged_path(DEFAULT_MODEL)
        except InputError:
            preset = "tiny"
        else:
            return load_model(path), f"packaged {DEFAULT_MODEL} ({path})"
    torch.manual_seed(0)
    model = from_preset(preset)
    _redraw_zero_layers(model)
    return model, f"preset {preset} (random weights)"


def parse_backends(text: str) -> tuple[str, ...]:
    """``"torch,ort"`` -> ``("torch", "ort")``; unknown names refused."""
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [n for n in names if n not in BACKENDS]
    if not names or bad:
        raise InputError(f"--backends {text!r}: choose a comma list of {', '.join(BACKENDS)}")
    return names


def _default_spec(model: nn.Module):
    from tte2tee_fast.condition.maskr2 import MaskR2Spec
    from tte2tee_fast.data.schemas import TTE

    if int(model.config.label_channels) != TTE.num_labels:
        raise InputError(
            f"model takes {model.config.label_channels} label channels: pass its MaskR² spec"
        )
    return MaskR2Spec.identity(TTE)


def load_bench_setup(
    model_dir: str | None, preset: str | None, adapter: str | None = None
) -> tuple[nn.Module, object, str]:
    """``(model, MaskR² spec, description)``: :func:`load_bench_model`, with ``adapter`` (a
    folder or ``phantom-tee``) merged in and its spec; else the model folder's spec."""
    from tte2tee_fast.adapt.adapter import load_adapter_meta
    from tte2tee_fast.adapt.merge import load_model_spec, merge_adapter
    from tte2tee_fast.packaged import resolve_asset, resolve_model_path

    model, name = load_bench_model(model_dir, preset)
    if adapter is not None:
        if preset is not None:
            raise InputError("--adapter needs the base model it was trained on, not --preset")
        folder = resolve_asset(adapter)
        spec = load_adapter_meta(folder).maskr2
        return merge_adapter(model, folder), spec, f"{name} + adapter {adapter} (merged)"
    if name.startswith("preset"):  # random weights: the identity TTE spec
        return model, _default_spec(model), name
    return model, load_model_spec(resolve_model_path(model_dir)), name


def _inputs(model: nn.Module, batch: int, seed: int, spec, device: torch.device) -> tuple:
    """``(x, t, cond, labels)``: labels ``[B, S, S]`` in the spec's source schema (CPU)."""
    from tte2tee_fast.condition.maskr2 import remap_one_hot

    cfg = model.config
    gen = torch.Generator().manual_seed(seed + batch)
    s = int(cfg.sample_size)
    x = torch.randn(batch, cfg.in_channels, s, s, generator=gen)  # [B, 1, S, S]
    t = torch.randint(0, 1000, (batch,), generator=gen)  # [B]
    values = torch.tensor(sorted(spec.source.values))
    labels = values[torch.randint(0, len(values), (batch, s, s), generator=gen)]  # [B, S, S]
    cond = remap_one_hot(labels, spec)  # [B, C, S, S]
    return x.to(device), t.to(device), cond.to(device), labels


def _forward(net: Callable, device: torch.device, bf16: bool) -> Callable:
    def fn(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        ctx = (
            torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        )
        with ctx:
            return net(x, t, cond)

    return fn


def _engine(model: nn.Module, spec, folder: str) -> str:
    """Export ``model`` (merged) as a dynamic-batch engine in ``folder``; its path."""
    from tte2tee_fast.export.onnx_export import engine_metadata, export_denoiser
    from tte2tee_fast.models import model_hash

    meta = engine_metadata(model_hash(model), model, spec, None, None, False)
    return str(export_denoiser(model.float().cpu(), spec, f"{folder}/bench.onnx", meta))


def _engine_fn(mode: str, path: str, batch: int, threads: int) -> tuple[Callable, str]:
    """``(runner, compiled precision)`` of an engine mode at ``batch``."""
    if mode == "ort_fp32":
        from tte2tee_fast.export.ort import OrtDenoiser

        return OrtDenoiser(path, threads=threads, label_cache=0), "fp32"  # whole forwards
    import warnings

    from tte2tee_fast.export.openvino import OpenVINODenoiser

    _, precision, *tput = mode.split("_")  # openvino_f32_2s -> tput = ["2s"]
    kw = (
        {"mode": "throughput", "streams": 2, "batch": max(1, (batch + 1) // 2)}
        if tput
        else {"mode": "latency", "streams": 1, "batch": batch}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bf16 fallback is recorded in the row instead
        # label_cache=0: every row times the whole network (the sampler-level saving of the
        # label cache is measured by bench e2e, where the labels repeat between steps)
        den = OpenVINODenoiser(path, precision=precision, threads=threads, label_cache=0, **kw)
    return den, den.effective_precision


@torch.no_grad()
def bench_denoiser(
    model: nn.Module,
    config: DenoiserBenchConfig,
    device: str = "auto",
    progress: bool = True,
    model_name: str = "",
    spec=None,
) -> dict:
    """Time the forward of ``model`` per batch size and mode; JSON-ready result with rows
    ``{"batch", "mode", "ms", "ms_per_image", "vs_eager_fp32", "max_rel_err"}`` (engine rows
    add ``precision``: what the engine compiled). ``spec``: the MaskR² spec of the labels
    (the identity TTE spec by default)."""
    import tempfile

    from tte2tee_fast.bench.samplers import machine_info

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a device (auto, cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available")
    spec = spec if spec is not None else _default_spec(model)
    model = model.to(dev).eval()
    cuda = dev.type == "cuda"
    compiled = torch.compile(model) if config.compile else None
    nets = {"eager": model, "compile": compiled}
    threads = torch.get_num_threads()
    engines = [m for m in config.modes if m.split("_")[0] in ENGINE_MODES]
    tmp = tempfile.TemporaryDirectory(prefix="tte2tee-bench-")
    path = _engine(model, spec, tmp.name) if engines else ""
    model = model.to(dev)
    rows = []
    bar = tqdm(
        total=len(config.batches) * len(config.modes), desc="bench denoiser", disable=not progress
    )
    with bar, tmp:
        for batch in config.batches:
            x, t, cond, labels = _inputs(model, batch, config.seed, spec, dev)
            ref = model(x, t, cond).float()  # [B, 1, S, S] eager fp32
            base_ms = None
            for mode in config.modes:
                kind, precision = mode.split("_")[:2]
                row = {"batch": batch, "mode": mode}
                try:
                    if kind in ENGINE_MODES:
                        fn, row["precision"] = _engine_fn(mode, path, batch, threads)
                        args = (x.cpu().numpy(), t.cpu().numpy(), labels.numpy())
                        y = torch.from_numpy(fn(*args)).to(dev)
                    else:
                        fn = _forward(nets[kind], dev, precision == "bf16")
                        args = (x, t, cond)
                        y = fn(*args).float()
                    err = (y - ref).abs().max() / ref.abs().max()
                    ms = time_ms(
                        partial(fn, *args), cuda and kind not in ENGINE_MODES, config.repeats
                    )
                except Exception as e:  # a failed compile is a result of the run, not a crash
                    if kind != "compile":
                        raise
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                else:
                    base_ms = ms if mode == BASELINE else base_ms
                    row.update(
                        ms=round(ms, 4),
                        ms_per_image=round(ms / batch, 4),
                        vs_eager_fp32=round(base_ms / ms, 3),
                        max_rel_err=float(f"{float(err):.3g}"),
                    )
                rows.append(row)
                bar.update()
    return {
        "machine": machine_info(dev),
        "model": model_name,
        "config": {**asdict(config), "modes": list(config.modes)},
        "notes": [
            "ms: median ms per forward (CUDA: triton.testing.do_bench; CPU: wall clock, "
            f"{config.repeats} calls after a warm-up); ms_per_image = ms / batch",
            "vs_eager_fp32: eager fp32 ms / mode ms at the same batch, same process (> 1 = faster)",
            "max_rel_err: max |y - y_eager_fp32| / max |y_eager_fp32| on the same inputs",
            f"threads: {threads} intra-op for torch, ONNX Runtime and OpenVINO",
            "engine rows: a dynamic-batch ONNX export of the same model (MaskR² inside); "
            "precision = what the engine compiled (OpenVINO runs a bf16 request as f32 on a CPU "
            "without bf16 hardware)",
        ],
        "rows": rows,
    }


def format_table(result: dict) -> str:
    """Plain-text table: batch, mode, ms/forward, ms/image, ratio, error, compiled precision."""
    head = ["batch", "mode", "ms", "ms_per_image", "vs_eager_fp32", "max_rel_err", "precision"]
    body = []
    for r in result["rows"]:
        if "error" in r:
            body.append([str(r["batch"]), r["mode"], "failed", r["error"][:60], "", "", ""])
        else:
            nums = [f"{r[k]:.4g}" for k in head[2:6]]
            body.append([str(r["batch"]), r["mode"], *nums, r.get("precision", "")])
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
    lines = [
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in (head, *body)
    ]
    return "\n".join(lines) + "\n"
