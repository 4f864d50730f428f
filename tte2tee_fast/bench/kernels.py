"""Kernel benchmark (``tte2tee bench kernels``): the Triton kernels against torch, on the shapes
the models really run.

Shapes come from the model presets themselves, built on the meta device (no weights, no
memory): ``small`` = the ``tiny`` preset, ``paper`` = ``sdm256``.

- **LoRA linear** (``kernels/lora_linear.py``): every distinct ``(in, out)`` of the preset's
  ``nn.Linear`` layers (time MLP and per-ResBlock embedding projections, the "mlp" LoRA
  targets) x rows (batch sizes 1 / 8 / 64) x ranks 1 / 4 / 16, K = 4 adapters stacked, rows
  grouped by adapter as in a mixed batch. Variants: ``triton`` (the fused multi-adapter
  kernel); ``eager`` (**baseline**: torch eager unmerged, one adapter, what peft's LoRA layer
  computes: ``x Wᵀ + b + s (x Aᵀ) Bᵀ``); ``eager_mixed`` (peft's mixed-batch forward: the base
  GEMM, then per adapter the LoRA of its sub-batch); ``reference`` (``lora_linear_reference``,
  dense over adapters: the CPU path); ``merged`` (``F.linear`` with ``W + s B A``: one adapter
  merged, the cost floor of any unmerged scheme).
- **MaskR² remap + one-hot** (``kernels/maskr2.py``): B x 256 x 256 TEE label maps through the
  ``tee->tte`` spec, NCHW and NHWC. Variants: ``triton``; ``torch`` (**baseline**,
  ``maskr2_one_hot_reference``: the same contract, unmapped flag included).
- **SPADE norm** (``kernels/spade.py``): every distinct input of the preset's SPADE norms
  (middle and decoder, found by one meta-device forward), with the ResBlock's embedding
  scale-shift where the model applies one (``spade_out``), SiLU after. Variants: ``triton``;
  ``eager`` (**baseline**, ``spade_norm_act_reference``: the model's own torch ops).

Timing: on CUDA the median of ``triton.testing.do_bench``; on the CPU the median wall time of
``repeats`` calls after one warm-up call (``time.perf_counter``). ``vs_baseline`` holds
``baseline_ms / variant_ms`` for every variant (> 1: faster than the baseline), measured in the
same process. ``floor`` (CUDA only) is max(bytes / copy bandwidth, flops / matmul throughput),
both measured on the device (a 1 GiB copy, an 8192³ bf16 matmul), bytes counting every input
read and the output written once; ``triton_of_floor = floor_ms / triton_ms`` (1 = at the floor).
``triton_rel_err`` is max |triton - torch reference| / max |reference| of the case. Without
CUDA, the Triton columns (and the floor) read "no GPU".
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import write_json_atomic

NO_GPU = "no GPU"
SHAPE_SETS = {"small": "tiny", "paper": "sdm256"}  # --shapes -> model preset
LABEL_SIZE = 256  # MaskR² label maps are B x 256 x 256
KERNELS = ("lora_linear", "maskr2_one_hot", "spade_norm_act")


@dataclass(frozen=True)
class KernelBenchConfig:
    """What to time; :func:`config_for` gives the ``small`` / ``paper`` sets."""

    preset: str = "tiny"
    rows: tuple[int, ...] = (1, 8, 64)  # LoRA rows (batch sizes)
    ranks: tuple[int, ...] = (1, 4, 16)
    adapters: int = 4  # K adapters stacked in the fused LoRA layer
    label_batches: tuple[int, ...] = (1, 8)  # MaskR² B (x 256 x 256)
    spade_batch: int = 8
    label_size: int = LABEL_SIZE
    repeats: int = 5  # CPU timing repeats (CUDA: do_bench decides)
    kernels: tuple[str, ...] = KERNELS
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernels", tuple(self.kernels))
        unknown = sorted(set(self.kernels) - set(KERNELS))
        if unknown or not self.kernels:
            raise InputError(f"unknown kernels {unknown or '(none)'}; choose from {list(KERNELS)}")
        sizes = (*self.rows, *self.ranks, *self.label_batches, self.spade_batch, self.label_size)
        if min(sizes) < 1:
            raise InputError("rows, ranks and batch sizes must be >= 1")
        if self.adapters < 1 or self.repeats < 1:
            raise InputError("adapters and repeats must be >= 1")


def config_for(
    shapes: str, repeats: int = 5, kernels: tuple[str, ...] = KERNELS
) -> KernelBenchConfig:
    """``small``: the ``tiny`` model's shapes; ``paper``: ``sdm256`` (SPADE at batch 2 there,
    so its 512 x 256 x 256 maps stay near 0.1 G elements)."""
    if shapes not in SHAPE_SETS:
        raise InputError(f"--shapes {shapes!r}: choose one of {sorted(SHAPE_SETS)}")
    if shapes == "paper":
        return KernelBenchConfig(
            "sdm256", label_batches=(1, 16, 64), spade_batch=2, repeats=repeats, kernels=kernels
        )
    return KernelBenchConfig("tiny", repeats=repeats, kernels=kernels)


def parse_kernels(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma list of :data:`KERNELS`."""
    if text.strip() == "all":
        return KERNELS
    names = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in names if k not in KERNELS]
    if unknown or not names:
        raise InputError(f"--kernels {text!r}: use 'all' or a comma list of {', '.join(KERNELS)}")
    return names


# ----------------------------------------------------------------------------- shapes


def _meta_model(preset: str) -> nn.Module:
    from tte2tee_fast.models import from_preset

    with torch.device("meta"):
        return from_preset(preset)


def linear_shapes(preset: str) -> list[tuple[int, int]]:
    """Distinct ``(in_features, out_features)`` of the preset's ``nn.Linear`` layers."""
    model = _meta_model(preset)
    return sorted(
        {(m.in_features, m.out_features) for m in model.modules() if type(m) is nn.Linear}
    )


def spade_shapes(preset: str) -> list[tuple[int, int, int, int, bool]]:
    """Distinct ``(C, H, W, groups, emb)`` inputs of the preset's SPADE norms in one forward at
    ``sample_size`` (``emb``: the ResBlock's embedding scale-shift follows, as in ``spade_out``)."""
    from tte2tee_fast.models.blocks import SPADEGroupNorm

    model = _meta_model(preset)
    found: set[tuple[int, int, int, int, bool]] = set()

    def recorder(emb: bool) -> Callable:
        def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            c, h, w = args[0].shape[1:]  # [B, C, H, W]
            found.add((int(c), int(h), int(w), mod.norm.num_groups, emb))

        return hook

    hooks = [
        mod.register_forward_hook(recorder(name.endswith("spade_out")))
        for name, mod in model.named_modules()
        if isinstance(mod, SPADEGroupNorm)
    ]
    s, c = model.config.sample_size, model.config.label_channels
    with torch.no_grad():
        x = torch.empty(1, model.config.in_channels, s, s, device="meta")
        model(x, torch.zeros(1, device="meta"), torch.empty(1, c, s, s, device="meta"))
    for h in hooks:
        h.remove()
    return sorted(found)


# ----------------------------------------------------------------------------- timing


def time_ms(fn: Callable[[], object], cuda: bool, repeats: int = 5) -> float:
    """Median ms of ``fn()``: ``triton.testing.do_bench`` on CUDA; on the CPU the median wall
    time of ``repeats`` calls after one warm-up call."""
    if cuda:
        import triton.testing

        return float(triton.testing.do_bench(fn, return_mode="median"))
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def device_rates(dtype: torch.dtype = torch.bfloat16) -> tuple[float, float]:
    """(copy bandwidth in bytes/s, ``dtype`` matmul flop/s) measured on the current CUDA device."""
    import triton.testing

    src = torch.empty(1 << 29, dtype=torch.float16, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    bw = 2 * src.numel() * 2 / (triton.testing.do_bench(partial(dst.copy_, src)) * 1e-3)
    del src, dst
    n = 8192
    a = torch.randn(n, n, dtype=dtype, device="cuda")
    flops = 2 * n**3 / (triton.testing.do_bench(partial(torch.matmul, a, a)) * 1e-3)
    return bw, flops


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(
        (got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-30)
    )


@dataclass(frozen=True)
class _Run:
    """How this run times and what it runs (shared by the per-kernel functions)."""

    device: str  # torch device: "cpu" or "cuda"
    name: str  # device name written in the rows
    triton: bool  # run the Triton kernels
    dtype: torch.dtype
    rates: tuple[float, float] | None  # (copy bytes/s, matmul flop/s) for the floors, CUDA only
    repeats: int

    def times(self, fns: dict[str, Callable[[], object] | None]) -> dict[str, float | None]:
        """ms per variant (None where the variant is not run here)."""
        cuda = self.device == "cuda"
        return {k: None if f is None else time_ms(f, cuda, self.repeats) for k, f in fns.items()}

    def row(self, kernel: str, case: dict, baseline: str, ms: dict, rel_err: float | None) -> dict:
        """One result row; ``ms`` maps variant (and "floor") -> ms, None -> "no GPU"."""
        base = ms[baseline]
        tri, floor = ms.get("triton"), ms.get("floor")
        return {
            "kernel": kernel,
            **case,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.name,
            "baseline": baseline,
            "ms": {k: NO_GPU if v is None else round(v, 5) for k, v in ms.items()},
            "vs_baseline": {
                k: NO_GPU if v is None else round(base / v, 3)
                for k, v in ms.items()
                if k != "floor"
            },
            "triton_of_floor": NO_GPU if tri is None or floor is None else round(floor / tri, 3),
            "triton_rel_err": NO_GPU if rel_err is None else float(f"{rel_err:.3g}"),
        }


# ----------------------------------------------------------------------------- LoRA linear


def lora_problem(
    m: int, n_in: int, n_out: int, rank: int, k: int, dtype: torch.dtype, device: str, seed: int
) -> tuple[torch.Tensor, ...]:
    """``(x, W, b, A [K, r, in], B [K, out, r], scales [K], index [m])``, rows grouped by adapter."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    x, w, b = rnd(m, n_in), rnd(n_out, n_in, scale=n_in**-0.5), rnd(n_out)
    a, bb = rnd(k, rank, n_in, scale=n_in**-0.5), rnd(k, n_out, rank)
    scales = torch.linspace(0.5, 1.0, k, device=device)
    idx = (torch.arange(m) * k // m).to(device)  # [m]
    return x, w, b, a, bb, scales, idx


def eager_unmerged(x, weight, bias, a0, b0, s0: float) -> torch.Tensor:
    """torch eager, one adapter, unmerged (peft's LoRA layer): base GEMM + two thin GEMMs."""
    return F.linear(x, weight, bias) + s0 * ((x @ a0.T) @ b0.T)


def eager_mixed(x, weight, bias, lora_a, lora_b, groups) -> torch.Tensor:
    """peft's mixed-batch forward: the base GEMM, then each adapter's LoRA on its sub-batch.
    ``groups`` = ``[(k, rows of adapter k, scale k)]``, built on the host beforehand as peft does."""
    y = F.linear(x, weight, bias)  # [M, out]
    for k, rows, s in groups:
        y[rows] += s * ((x[rows] @ lora_a[k].T) @ lora_b[k].T)
    return y


def _lora_rows(cfg: KernelBenchConfig, run: _Run, bar: tqdm) -> list[dict]:
    from tte2tee_fast.kernels.lora_linear import lora_linear_reference, lora_linear_triton

    rows = []
    for n_in, n_out in linear_shapes(cfg.preset):
        for m in cfg.rows:
            for rank in cfg.ranks:
                problem = lora_problem(
                    m, n_in, n_out, rank, cfg.adapters, run.dtype, run.device, cfg.seed
                )
                x, w, b, a, bb, s, idx = problem
                scales = s.tolist()
                merged = w + (scales[0] * bb[0].float() @ a[0].float()).to(run.dtype)
                groups = [
                    (k, (idx == k).nonzero().flatten(), scales[k])
                    for k in sorted(set(idx.tolist()))
                ]
                fns = {
                    "triton": partial(lora_linear_triton, *problem) if run.triton else None,
                    "eager": partial(eager_unmerged, x, w, b, a[0], bb[0], scales[0]),
                    "eager_mixed": partial(eager_mixed, x, w, b, a, bb, groups),
                    "reference": partial(lora_linear_reference, *problem),
                    "merged": partial(F.linear, x, merged, b),
                }
                ms = run.times(fns)
                err = _rel_err(fns["triton"](), fns["reference"]()) if run.triton else None
                ms["floor"] = None
                if run.rates is not None:
                    esize = x.element_size()
                    nbytes = esize * (m * n_in + n_out * n_in + n_out + m * n_out)
                    nbytes += esize * len(groups) * rank * (n_in + n_out)
                    flops = 2 * m * n_in * n_out + 2 * m * rank * (n_in + n_out)
                    ms["floor"] = max(nbytes / run.rates[0], flops / run.rates[1]) * 1e3
                case = {"shape": [m, n_in, n_out], "rank": rank, "adapters": cfg.adapters}
                rows.append(run.row("lora_linear", case, "eager", ms, err))
                bar.update()
    return rows


# ----------------------------------------------------------------------------- MaskR²


def _maskr2_rows(cfg: KernelBenchConfig, run: _Run, bar: tqdm) -> list[dict]:
    from tte2tee_fast.condition.maskr2 import builtin_spec
    from tte2tee_fast.kernels.maskr2 import maskr2_one_hot_reference, maskr2_one_hot_triton

    spec = builtin_spec("tee->tte")
    lut = spec.lookup_table().to(run.device)
    c = spec.num_channels
    n_values = len(spec.source.values)
    esize = torch.empty((), dtype=run.dtype).element_size()
    gen = torch.Generator().manual_seed(cfg.seed)
    rows = []
    for b in cfg.label_batches:
        shape = (b, cfg.label_size, cfg.label_size)
        labels = torch.randint(0, n_values, shape, generator=gen, dtype=torch.uint8)
        labels = labels.to(run.device)  # [B, H, W]
        for layout in ("nchw", "nhwc"):
            args = (labels, lut, c, run.dtype, layout)
            fns = {
                "triton": partial(maskr2_one_hot_triton, *args) if run.triton else None,
                "torch": partial(maskr2_one_hot_reference, *args),
            }
            ms = run.times(fns)
            err = _rel_err(fns["triton"]()[0], fns["torch"]()[0]) if run.triton else None
            pixels = labels.numel()
            nbytes = pixels * (labels.element_size() + c * esize) + lut.numel() * lut.element_size()
            ms["floor"] = None if run.rates is None else nbytes / run.rates[0] * 1e3
            case = {"shape": list(shape), "channels": c, "layout": layout}
            row = run.row("maskr2_one_hot", case, "torch", ms, err)
            row["mpix_per_s"] = {
                k: NO_GPU if v is None else round(pixels / 1e3 / v, 1)
                for k, v in ms.items()
                if k != "floor"
            }
            rows.append(row)
            bar.update()
    return rows


# ----------------------------------------------------------------------------- SPADE


def _spade_rows(cfg: KernelBenchConfig, run: _Run, bar: tqdm) -> list[dict]:
    from tte2tee_fast.kernels.spade import spade_norm_act_reference, spade_norm_act_triton

    gen = torch.Generator().manual_seed(cfg.seed)
    like = {"device": run.device, "dtype": run.dtype}
    b = cfg.spade_batch
    rows = []
    for c, h, w, groups, emb in spade_shapes(cfg.preset):
        x, gamma, beta = (torch.randn(b, c, h, w, generator=gen).to(**like) for _ in range(3))
        scale, shift = (
            (0.1 * torch.randn(b, c, generator=gen)).to(**like) if emb else None for _ in range(2)
        )
        args = (x, gamma, beta, groups, 1e-5, "silu", scale, shift)
        fns = {
            "triton": partial(spade_norm_act_triton, *args) if run.triton else None,
            "eager": partial(spade_norm_act_reference, *args),
        }
        ms = run.times(fns)
        err = _rel_err(fns["triton"](), fns["eager"]()) if run.triton else None
        nbytes = (4 * x.numel() + (2 * b * c if emb else 0)) * x.element_size()
        ms["floor"] = None if run.rates is None else nbytes / run.rates[0] * 1e3
        case = {"shape": [b, c, h, w], "groups": groups, "emb_scale_shift": emb}
        rows.append(run.row("spade_norm_act", case, "eager", ms, err))
        bar.update()
    return rows


# ----------------------------------------------------------------------------- run / report

_RUNNERS = {
    "lora_linear": _lora_rows,
    "maskr2_one_hot": _maskr2_rows,
    "spade_norm_act": _spade_rows,
}


def _count(cfg: KernelBenchConfig) -> int:
    n = 0
    if "lora_linear" in cfg.kernels:
        n += len(linear_shapes(cfg.preset)) * len(cfg.rows) * len(cfg.ranks)
    if "maskr2_one_hot" in cfg.kernels:
        n += 2 * len(cfg.label_batches)
    if "spade_norm_act" in cfg.kernels:
        n += len(spade_shapes(cfg.preset))
    return n


def run_kernel_bench(
    config: KernelBenchConfig,
    device: str = "auto",
    progress: bool = True,
    triton: bool | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns ``{"machine", "config", "notes", "rows"}`` (JSON-ready).

    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``. CUDA runs bf16 (the
    model's autocast dtype) with the Triton kernels and the floors; the CPU runs fp32, torch
    only. ``triton=True`` on the CPU runs the kernels in triton's interpreter
    (``TRITON_INTERPRET=1``): it checks the Triton code path (``triton_rel_err``), its times
    mean nothing.
    """
    from tte2tee_fast.bench.samplers import machine_info
    from tte2tee_fast.kernels._triton import interpret_mode, triton_available

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: use auto, cpu or cuda")
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    triton = cuda if triton is None else triton
    if triton and not triton_available():
        raise InputError("the Triton kernels need triton, which is not installed")
    if triton and not cuda and not interpret_mode():
        raise InputError("Triton kernels on the CPU run only under TRITON_INTERPRET=1")
    dtype = torch.bfloat16 if cuda else torch.float32
    rates = device_rates(dtype) if cuda else None
    name = torch.cuda.get_device_name() if cuda else "cpu"
    if triton and not cuda:
        name = "cpu (triton interpreter)"
    run = _Run(device, name, triton, dtype, rates, config.repeats)
    rows: list[dict] = []
    bar = tqdm(total=_count(config), desc="bench kernels", disable=not progress)
    with torch.no_grad(), bar:
        for kernel in config.kernels:
            rows += _RUNNERS[kernel](config, run, bar)
    notes = [
        "ms: median ms per call (CUDA: triton.testing.do_bench; CPU: wall clock, "
        f"{config.repeats} calls after a warm-up)",
        "vs_baseline: baseline_ms / variant_ms, same process (> 1 = faster than the baseline)",
    ]
    if rates is None:
        notes.append(f"{NO_GPU}: the Triton kernels and the floors need a CUDA device")
    else:
        notes.append(
            f"floor rates: copy {rates[0] / 1e9:.0f} GB/s, {dtype} matmul "
            f"{rates[1] / 1e12:.0f} TFLOP/s"
        )
    return {
        "machine": machine_info(torch.device(device)),
        "config": asdict(config),
        "notes": notes,
        "rows": rows,
    }


_TABLE_CASE = {
    "lora_linear": ("shape", "rank"),
    "maskr2_one_hot": ("shape", "layout"),
    "spade_norm_act": ("shape", "emb_scale_shift"),
}


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """Plain-text tables, one per kernel: case, ms per variant, triton speedup over the baseline."""
    lines: list[str] = []
    for kernel, case_keys in _TABLE_CASE.items():
        mine = [r for r in rows if r["kernel"] == kernel]
        if not mine:
            continue
        variants = list(mine[0]["ms"])
        head = [*case_keys, *(f"{v}_ms" for v in variants), "triton_x_base", "of_floor"]
        body = [
            [
                *(_cell(r[k]) for k in case_keys),
                *(_cell(r["ms"][v]) for v in variants),
                _cell(r["vs_baseline"]["triton"]),
                _cell(r["triton_of_floor"]),
            ]
            for r in mine
        ]
        widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
        lines.append(
            f"{kernel} ({mine[0]['dtype']}, {mine[0]['device']}; baseline {mine[0]['baseline']})"
        )
        for row in (head, *body):
            lines.append("  ".join(c.rjust(wd) for c, wd in zip(row, widths, strict=True)))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` (a temporary name first, then renamed)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--json {path} is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)
    return path
