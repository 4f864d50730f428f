"""Parity check of a denoiser engine against torch (``tte2tee export check``).

The reference is the merged model in torch, eager fp32, on the CPU (the model and adapter the
engine claims to come from: their hashes must equal the engine's metadata, else the engine is
refused with one line naming both hashes). Every runner is fed the same inputs:

``random``   x ~ N(0, 1), every label value of the engine's schema at random, timesteps
             spread over 0..999 (0, 999 and values between)
``phantom``  real phantom label maps of the schema (``data.phantom.phantom_case``) with the
             same kind of x and timesteps (skipped for a schema without a phantom)

Runners: ONNX Runtime (CPU, fp32), OpenVINO f32 hint, and OpenVINO bf16 hint (ONNX Runtime has
no bf16 CPU kernels). Relative error is ``max |y - y_torch| / max |y_torch|`` over the whole
batch. fp32 runners must stay within ``tolerance`` (1e-4); bf16 only reports its error (and the
precision OpenVINO actually compiled: a CPU without bf16 hardware runs f32). ``frame``: a
deterministic DDIM run of ``frame_steps`` steps from the same noise and phantom masks with the
runner as the network against torch; fp32 frames must stay within ``frame_tolerance`` (1e-3).
A guided engine is checked against :func:`~tte2tee_fast.diffusion.guidance.cfg_eps_fn` at
``guidance``.

Example::

    report = check_engine_file("runs/tee.onnx", None, "phantom-tee")
    print(format_report(report)); assert report["ok"]
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tte2tee_fast.export.metadata import check_engine, file_sha256, label_values, read_metadata

from tte2tee_fast.errors import InputError

RUNNERS = ("ort_fp32", "openvino_f32", "openvino_bf16")
PHANTOM_SCHEMAS = ("tte", "tee")


@dataclass(frozen=True)
class CheckConfig:
    """What ``tte2tee export check`` runs; tolerances apply to fp32 runners."""

    batch: int = 4
    tolerance: float = 1e-4
    frame_tolerance: float = 1e-3
    frame_steps: int = 10
    frame_batch: int = 2
    guidance: float = 2.0
    runners: tuple[str, ...] = RUNNERS
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        bad = [r for r in self.runners if r not in RUNNERS]
        if bad:
            raise InputError(f"unknown runners {bad}; choose from {list(RUNNERS)}")
        if self.batch < 1 or self.frame_batch < 1 or self.frame_steps < 0:
            raise InputError("batch and frame_batch must be >= 1, frame_steps >= 0")


def rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    """``max |y - ref| / max |ref|``."""
    return float(np.abs(y.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def phantom_masks(schema: str, size: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` phantom label maps ``[n, size, size]`` int64 of ``schema``; a size below the
    phantom's minimum is rendered k times larger and subsampled (nearest)."""
    from tte2tee_fast.data.phantom import MIN_SIZE, phantom_case

    k = -(-MIN_SIZE // size)  # ceil
    masks = [phantom_case(schema, size=size * k, seed=seed + i).mask[::k, ::k] for i in range(n)]
    return np.stack(masks).astype(np.int64)


def _cases(meta: dict[str, Any], config: CheckConfig) -> dict[str, tuple[np.ndarray, ...]]:
    """``{case: (x [B,1,S,S] f32, t [B] i64, labels [B,S,S] i64)}``."""
    s, b = int(meta["sample_size"]), config.batch
    rng = np.random.default_rng(config.seed)
    values = label_values(meta)
    t = np.linspace(0, 999, b).round().astype(np.int64)  # 0 .. 999
    cases = {
        "random": (
            rng.standard_normal((b, 1, s, s), dtype=np.float32),
            rng.permutation(t),
            values[rng.integers(0, values.size, (b, s, s))],
        )
    }
    if meta["schema"] in PHANTOM_SCHEMAS:
        cases["phantom"] = (
            rng.standard_normal((b, 1, s, s), dtype=np.float32),
            t,
            phantom_masks(meta["schema"], s, b, config.seed),
        )
    return cases


def _torch_fn(
    model: torch.nn.Module, spec: Any, meta: dict[str, Any], guidance: float
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Reference eps of the merged model (fp32 eager), guided like the engine."""
    from tte2tee_fast.condition.maskr2 import remap_one_hot
    from tte2tee_fast.diffusion.guidance import cfg_eps_fn

    def fn(x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        cond = remap_one_hot(torch.from_numpy(y), spec)  # [B, C, S, S]
        with torch.no_grad():
            xt, tt = torch.from_numpy(x), torch.from_numpy(t)
            if meta["variant"] == "guided":
                return cfg_eps_fn(model, cond, guidance)(xt, tt).numpy()
            return model(xt, tt, cond).numpy()

    return fn


def _runners(path: str, config: CheckConfig) -> dict[str, tuple[Callable, str]]:
    """``{name: (runner, note)}``; OpenVINO is skipped (noted) when it is not installed."""
    from tte2tee_fast.export.openvino import OpenVINODenoiser
    from tte2tee_fast.export.ort import OrtDenoiser

    out: dict[str, tuple[Callable, str]] = {}
    for name in config.runners:
        if name == "ort_fp32":
            out[name] = (OrtDenoiser(path, threads=config.threads), "CPUExecutionProvider")
            continue
        precision = name.split("_")[1]
        try:
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                den = OpenVINODenoiser(path, precision=precision, threads=config.threads)
        except InputError as e:
            if "pip install openvino" not in str(e):
                raise
            out[name] = (None, str(e))  # type: ignore[assignment]
            continue
        if precision != "f32" and den.effective_precision == "f32":
            # no bf16 hardware: OpenVINO compiled f32, the same engine as openvino_f32
            out[name] = (None, f"{den.warning}; same as openvino_f32")  # type: ignore[assignment]
            continue
        out[name] = (den, f"compiled {den.effective_precision}")
    return out


def _frame(eps_fn: Callable, x: np.ndarray, labels: np.ndarray, steps: int) -> np.ndarray:
    """A deterministic DDIM frame ``[B, 1, S, S]`` with ``eps_fn(x, t, labels)`` (numpy)."""
    from tte2tee_fast.diffusion import NoiseSchedule, get_sampler

    schedule = NoiseSchedule.cosine(1000)
    timesteps = schedule.timesteps(steps)

    def fn(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).expand(xt.shape[0])
        return torch.from_numpy(eps_fn(xt.float().numpy(), t.long().numpy(), labels))

    return get_sampler("ddim")(fn, torch.from_numpy(x), schedule, timesteps).numpy()


def check_engine_file(
    path: str | os.PathLike,
    model: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    config: CheckConfig | None = None,
) -> dict[str, Any]:
    """Run every runner against torch; a JSON-ready report with ``ok`` and ``rows``."""
    from tte2tee_fast.export.onnx_export import load_merged

    from tte2tee_fast.models import model_hash

    config = config or CheckConfig()
    path = str(path)
    meta = read_metadata(path)
    net, spec, base_hash, weights = load_merged(model, adapter)
    adapter_hash = file_sha256(weights) if weights is not None else ""
    check_engine(meta, path, model_hash=base_hash, adapter_hash=adapter_hash)
    merged_hash = model_hash(net)
    if meta["merged_hash"] != merged_hash:
        raise InputError(
            f"engine {path} holds merged weights {meta['merged_hash']}, but merging the given "
            f"model and adapter gives {merged_hash}"
        )
    if spec.to_json() != meta["maskr2"]:
        raise InputError(f"engine {path} was exported with another MaskR² spec than {spec.name!r}")
    ref_fn = _torch_fn(net, spec, meta, config.guidance)
    guidance = config.guidance if meta["variant"] == "guided" else None
    cases = _cases(meta, config)
    refs = {case: ref_fn(*arrays) for case, arrays in cases.items()}
    frame_case = "phantom" if "phantom" in cases else "random"
    fx, _, flabels = (a[: config.frame_batch] for a in cases[frame_case])
    ref_frame = _frame(ref_fn, fx, flabels, config.frame_steps) if config.frame_steps else None
    rows = []
    for name, (runner, note) in _runners(path, config).items():
        fp32 = not name.endswith("bf16")
        row: dict[str, Any] = {"runner": name, "note": note}
        if runner is None:
            rows.append({**row, "skipped": True, "ok": True})
            continue
        for case, arrays in cases.items():
            row[f"err_{case}"] = rel_err(runner(*arrays, guidance=guidance), refs[case])
        if ref_frame is not None:

            def run(x, t, y, runner=runner):
                return runner(x, t, y, guidance=guidance)

            row["err_frame"] = rel_err(_frame(run, fx, flabels, config.frame_steps), ref_frame)
        errs = [row[f"err_{c}"] for c in cases]
        row["ok"] = not fp32 or (
            max(errs) <= config.tolerance and row.get("err_frame", 0.0) <= config.frame_tolerance
        )
        row["checked"] = fp32
        rows.append(row)
    return {
        "engine": path,
        "metadata": {k: v for k, v in meta.items() if k != "maskr2"},
        "config": asdict(config),
        "cases": list(cases),
        "frame_case": frame_case,
        "rows": rows,
        "ok": all(r["ok"] for r in rows),
        "notes": [
            "err = max|y - y_torch| / max|y_torch| against the merged model in torch (eager fp32)",
            f"fp32 runners must stay within {config.tolerance:g} (denoiser) and "
            f"{config.frame_tolerance:g} (frame: DDIM {config.frame_steps} steps); "
            "bf16 rows report only",
        ],
    }


def format_report(report: dict[str, Any]) -> str:
    """Plain-text table of a :func:`check_engine_file` report."""
    cols = [f"err_{c}" for c in report["cases"]] + ["err_frame"]
    head = ["runner", *cols, "verdict", "note"]
    body = []
    for r in report["rows"]:
        if r.get("skipped"):
            body.append([r["runner"], *("-" for _ in cols), "skipped", r["note"]])
            continue
        verdict = ("ok" if r["ok"] else "FAIL") if r["checked"] else "report"
        errs = [f"{r[c]:.3g}" if c in r else "-" for c in cols]
        body.append([r["runner"], *errs, verdict, r["note"]])
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in (head, *body)
    ]
    meta = report["metadata"]
    lines.insert(
        0,
        f"engine {report['engine']}: schema {meta['schema']}, variant {meta['variant']}, "
        f"batch {meta['batch'] or 'dynamic'}, model {meta['model_hash'][:12]}, "
        f"adapter {(meta['adapter_hash'] or 'none')[:12]}",
    )
    lines.append("PASS" if report["ok"] else "FAIL: an fp32 runner is out of tolerance")
    return "\n".join(lines) + "\n"
