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

ONNX Runtime and TensorRT backends come with the export issue.

Inputs are random but fixed per batch size (seed ``seed``): ``x`` ~ N(0, 1), timesteps drawn
in [0, 1000), one-hot conditioning of random labels. ``max_rel_err`` = max |y - y_fp32| /
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

import torch
from torch import nn
from tqdm.auto import tqdm

from tte2tee_fast.bench.kernels import time_ms
from tte2tee_fast.errors import InputError

BASELINE = "eager_fp32"


@dataclass(frozen=True)
class DenoiserBenchConfig:
    """Batch sizes and modes to time."""

    batches: tuple[int, ...] = (1, 8, 16)
    bf16: bool = True
    compile: bool = False
    repeats: int = 5  # CPU timing repeats (CUDA: do_bench decides)
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", tuple(int(b) for b in self.batches))
        if not self.batches or min(self.batches) < 1:
            raise InputError(f"batch sizes must be >= 1, got {list(self.batches)}")
        if self.repeats < 1:
            raise InputError(f"repeats must be >= 1, got {self.repeats}")

    @property
    def modes(self) -> tuple[str, ...]:
        precisions = ("fp32", "bf16") if self.bf16 else ("fp32",)
        kinds = ("eager", "compile") if self.compile else ("eager",)
        return tuple(f"{k}_{p}" for k in kinds for p in precisions)


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


def _inputs(model: nn.Module, batch: int, seed: int, device: torch.device) -> tuple:
    cfg = model.config
    gen = torch.Generator().manual_seed(seed + batch)
    s = int(cfg.sample_size)
    x = torch.randn(batch, cfg.in_channels, s, s, generator=gen)  # [B, 1, S, S]
    t = torch.randint(0, 1000, (batch,), generator=gen)  # [B]
    labels = torch.randint(0, cfg.label_channels, (batch, s, s), generator=gen)
    cond = nn.functional.one_hot(labels, cfg.label_channels).permute(0, 3, 1, 2).float()
    return x.to(device), t.to(device), cond.to(device)  # cond [B, C, S, S]


def _forward(net: Callable, device: torch.device, bf16: bool) -> Callable:
    def fn(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        ctx = (
            torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        )
        with ctx:
            return net(x, t, cond)

    return fn


@torch.no_grad()
def bench_denoiser(
    model: nn.Module,
    config: DenoiserBenchConfig,
    device: str = "auto",
    progress: bool = True,
    model_name: str = "",
) -> dict:
    """Time the forward of ``model`` per batch size and mode; JSON-ready result with rows
    ``{"batch", "mode", "ms", "ms_per_image", "vs_eager_fp32", "max_rel_err"}``."""
    from tte2tee_fast.bench.samplers import machine_info

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a device (auto, cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available")
    model = model.to(dev).eval()
    cuda = dev.type == "cuda"
    compiled = torch.compile(model) if config.compile else None
    nets = {"eager": model, "compile": compiled}
    rows = []
    bar = tqdm(
        total=len(config.batches) * len(config.modes), desc="bench denoiser", disable=not progress
    )
    with bar:
        for batch in config.batches:
            x, t, cond = _inputs(model, batch, config.seed, dev)
            ref = model(x, t, cond).float()  # [B, 1, S, S] eager fp32
            base_ms = None
            for mode in config.modes:
                kind, precision = mode.split("_")
                fn = _forward(nets[kind], dev, precision == "bf16")
                row = {"batch": batch, "mode": mode}
                try:
                    err = (fn(x, t, cond).float() - ref).abs().max() / ref.abs().max()
                    ms = time_ms(partial(fn, x, t, cond), cuda, config.repeats)
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
        ],
        "rows": rows,
    }


def format_table(result: dict) -> str:
    """Plain-text table: batch, mode, ms/forward, ms/image, ratio, error."""
    head = ["batch", "mode", "ms", "ms_per_image", "vs_eager_fp32", "max_rel_err"]
    body = []
    for r in result["rows"]:
        if "error" in r:
            body.append([str(r["batch"]), r["mode"], "failed", r["error"][:60], "", ""])
        else:
            body.append([str(r["batch"]), r["mode"], *(f"{r[k]:.4g}" for k in head[2:])])
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
    lines = [
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in (head, *body)
    ]
    return "\n".join(lines) + "\n"
