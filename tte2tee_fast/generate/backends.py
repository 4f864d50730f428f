"""One backend interface for the denoiser: ``torch``, ``compile``, ``ort``, ``openvino``, ``trt``.

Every backend takes the raw label map in the model's source schema (the MaskR² lookup and
one-hot are part of it: :class:`~tte2tee_fast.condition.maskr2.MaskR2Remap` in torch, ops inside
the graph of an engine) and returns eps::

    den = build_denoiser(None, "phantom-tee", "openvino", "fp32")
    eps = den(x, t, labels, guidance=1.0)   # x [B, 1, H, W] f32, t [B] int64, labels [B, H, W]

Precisions: ``torch`` / ``compile``: fp32, bf16 (autocast; + channels_last); ``ort``: fp32
(int8 / fp16 engines: give ``--engine``, ``tte2tee export quantize``); ``openvino``: fp32, bf16
(the ``INFERENCE_PRECISION_HINT``, always set explicitly), int8 (an NNCF IR via ``--engine``);
``trt``: the precision the plan was built with (``--engine f.plan``). Engines for ``ort`` and
``openvino`` are exported on first use into a cache folder (``TTE2TEE_CACHE``, default
``~/.cache/tte2tee-fast``) keyed by the merged model's hash, so a rerun reuses them.

``auto`` (the default of ``tte2tee generate`` and ``tte2tee sample``): on CUDA, torch bf16; on a
CPU with bf16 hardware (AVX512_BF16 or AMX), OpenVINO bf16 (21.7 ms per image at batch 8 on such
a CPU against 60 for ONNX Runtime fp32); on other CPUs ONNX Runtime fp32 (measured faster than
OpenVINO f32 on the AVX2-only development machine: 116 vs 161-298 ms per image at batch 8,
``benchmarks/RESULTS.md``), then OpenVINO, then torch fp32.
A backend whose package or device is missing fails with one line saying what to install.
``ort`` and ``openvino`` run the label-only part of the graph (MaskR², the SPADE heads) once per
mask batch and only the rest at every step (``info["label_cache"]``; export/onnx_split.py,
export/ov_split.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tte2tee_fast.condition.maskr2 import MaskR2Remap, MaskR2Spec, load_spec
from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.auto_sampler import AUTO, auto_sampler
from tte2tee_fast.generate.masks import to_uint8
from tte2tee_fast.generate.shards import config_hash
from tte2tee_fast.packaged import resolve_asset

BACKENDS = ("torch", "compile", "ort", "openvino", "trt")
PRECISIONS = {
    "torch": ("fp32", "bf16"),
    "compile": ("fp32", "bf16"),
    "ort": ("fp32",),
    "openvino": ("fp32", "bf16"),
    "trt": ("engine",),
}
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
_NEEDS = {
    "ort": ("onnxruntime", "pip install onnxruntime"),
    "openvino": ("openvino", "pip install openvino"),
}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512_BF16 or AMX): only there is bf16 fast."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


def available(backend: str) -> bool:
    """Whether ``backend``'s package is installed (a device is checked when it is built)."""
    if backend in _NEEDS:
        return importlib.util.find_spec(_NEEDS[backend][0]) is not None
    if backend == "trt":
        return importlib.util.find_spec("tensorrt") is not None
    return True


def resolve(backend: str, precision: str, device: str = "cpu") -> tuple[str, str]:
    """``(backend, precision)`` with ``auto`` resolved and the pair checked."""
    if backend == "auto":
        if device.startswith("cuda"):
            backend = "torch"
        else:  # measured order (benchmarks/RESULTS.md)
            order = ("openvino", "ort") if cpu_has_bf16() else ("ort", "openvino")
            backend = next(b for b in (*order, "torch") if available(b))
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose auto or one of {list(BACKENDS)}")
    if precision == "auto":
        fast_bf16 = device.startswith("cuda") or cpu_has_bf16()
        precision = (
            "bf16" if fast_bf16 and "bf16" in PRECISIONS[backend] else PRECISIONS[backend][0]
        )
    if precision not in PRECISIONS[backend]:
        raise InputError(
            f"backend {backend!r} runs precisions {list(PRECISIONS[backend])}, not {precision!r} "
            "(int8 / fp16 engines: tte2tee export quantize, then --engine FILE)"
        )
    if not available(backend):
        name, how = _NEEDS.get(backend, ("tensorrt", "pip install tensorrt (NVIDIA GPU)"))
        raise InputError(f"backend {backend!r} needs the {name} package: {how}")
    return backend, precision


def cache_dir() -> Path:
    """Where exported engines are kept between runs."""
    return Path(os.environ.get("TTE2TEE_CACHE", Path.home() / ".cache" / "tte2tee-fast"))


@dataclass
class Denoiser:
    """``den(x, t, labels, guidance) -> eps`` on torch tensors, whatever runs it.

    ``x`` ``[B, 1, H, W]`` float32, ``t`` ``[B]`` int64, ``labels`` ``[B, H, W]`` integer (source
    schema); ``guidance``: classifier-free guidance scale (1 = none), cond and null rows batched.
    """

    backend: str
    precision: str
    spec: MaskR2Spec
    size: int
    info: dict  # JSON-able: hashes, backend, precision, engine path
    _run: Any  # (x, t, labels, guidance) -> eps
    device: str = "cpu"  # where its inputs should live (engines: host arrays, so cpu)
    runner: Any = None  # the engine runner (OrtDenoiser, OpenVINODenoiser, ...); None on torch

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, guidance: float = 1.0
    ) -> torch.Tensor:
        return self._run(x, t, labels, float(guidance))


def _torch_run(model: torch.nn.Module, spec: MaskR2Spec, bf16: bool) -> Any:
    from tte2tee_fast.diffusion.guidance import cfg_eps_fn

    remap = MaskR2Remap(spec).to(next(model.parameters()).device)

    def net(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        ctx = (
            torch.autocast(x.device.type, dtype=torch.bfloat16)
            if bf16
            else contextlib.nullcontext()
        )
        with ctx:
            return model(x, t, cond).float()

    @torch.no_grad()
    def run(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, g: float) -> torch.Tensor:
        # guidance as everywhere else: cond and null rows in one forward
        return cfg_eps_fn(net, remap(labels), g)(x, t)

    return run


def _engine_run(runner: Any) -> Any:
    def run(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, g: float) -> torch.Tensor:
        eps = runner(
            x.detach().float().cpu().numpy(),
            t.detach().cpu().numpy().astype(np.int64),
            labels.detach().cpu().numpy().astype(np.int64),
            guidance=None if g == 1.0 else g,
        )
        return torch.from_numpy(eps).to(x.device)

    return run


def engine_file(merged: torch.nn.Module, spec: MaskR2Spec, meta: dict, batch: int | None) -> Path:
    """The cached ONNX engine of ``merged`` (exported on first use, atomically), keyed by the
    base, adapter and merged hashes, the MaskR² spec and the batch."""
    from tte2tee_fast.export.onnx_export import export_denoiser

    key = {k: meta[k] for k in ("model_hash", "adapter_hash", "merged_hash", "batch")}
    key["maskr2"] = spec.to_json()
    digest = config_hash(key)[:20]
    path = cache_dir() / "engines" / f"{digest}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        export_denoiser(merged, spec, path, meta, batch=batch)
    return path


def build_denoiser(
    model: str | None,
    adapter: str | None,
    backend: str = "auto",
    precision: str = "auto",
    batch: int | None = None,
    device: str = "cpu",
    engine: str | None = None,
    threads: int | None = None,
    spec: MaskR2Spec | None = None,
    label_cache: int = 4,
) -> Denoiser:
    """The denoiser of ``model`` (+ ``adapter`` merged in memory) on ``backend``.

    ``batch``: the engine batch of ``ort`` / ``openvino`` (static shapes are faster there; a
    short batch is padded; torch ignores it); ``engine``: an engine file to run instead of the
    cached export (its metadata must name the same base and adapter hashes); ``spec``: a MaskR²
    spec in place of the adapter's (or the model folder's) own; ``label_cache``: the label cache
    of ``ort`` and ``openvino`` (:class:`~tte2tee_fast.export.ort.OrtDenoiser`,
    :class:`~tte2tee_fast.export.openvino.OpenVINODenoiser`; 0: the whole graph every call).
    """
    from tte2tee_fast.export.onnx_export import engine_metadata, load_merged

    backend, precision = resolve(backend, precision, device)
    merged, own_spec, base_hash, weights = load_merged(model, adapter)
    spec = spec or own_spec
    if spec.num_channels != int(merged.config.label_channels):
        raise InputError(
            f"MaskR² spec {spec.name!r} produces {spec.num_channels} channels but the model "
            f"takes {int(merged.config.label_channels)}"
        )
    meta = engine_metadata(base_hash, merged, spec, weights, batch, False)
    size = int(merged.config.sample_size)
    info = {
        "backend": backend,
        "precision": precision,
        "model_hash": meta["model_hash"],
        "adapter_hash": meta["adapter_hash"],
        "merged_hash": meta["merged_hash"],
        "maskr2": spec.name,
        "schema": spec.source.name,
    }
    if backend in ("torch", "compile"):
        net = merged.to(device)
        if precision == "bf16":
            net = net.to(memory_format=torch.channels_last)
        if backend == "compile":
            net = torch.compile(net)
        run = _torch_run(net, spec, precision == "bf16")
        return Denoiser(backend, precision, spec, size, info, run, device)
    if device != "cpu" and backend != "trt":
        raise InputError(f"backend {backend!r} runs on the CPU here; use --device cpu")
    path = Path(engine) if engine else None
    if backend == "trt":
        if path is None:
            raise InputError(
                "backend 'trt' needs a TensorRT plan: tte2tee export trt ..., then --engine F.plan"
            )
        from tte2tee_fast.export.tensorrt import TrtDenoiser

        runner = TrtDenoiser(path)
    else:
        path = path or engine_file(merged, spec, meta, batch)
        if backend == "ort":
            from tte2tee_fast.export.ort import OrtDenoiser

            runner = OrtDenoiser(path, threads=threads, label_cache=label_cache)
        else:
            from tte2tee_fast.export.openvino import OpenVINODenoiser

            runner = OpenVINODenoiser(
                path,
                precision=_OV_PRECISION[precision],
                threads=threads,
                batch=batch,
                label_cache=label_cache,
            )
        # the SPADE heads run once per mask batch, not per step (export/onnx_split.py, ov_split.py)
        info["label_cache"] = runner.split is not None
    from tte2tee_fast.export.metadata import check_engine

    check_engine(
        runner.metadata, str(path), meta["model_hash"], meta["adapter_hash"], spec.source.name
    )
    info["engine"] = str(path)
    return Denoiser(backend, precision, spec, size, info, _engine_run(runner), runner=runner)


# ----------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class FrameConfig:
    """How ``tte2tee generate`` draws frames (all of it enters the dataset's configuration)."""

    model: str | None = None  # model folder or packaged name; None: the packaged phantom-tte
    adapter: str | None = "phantom-tee"  # adapter folder or packaged name (merged); None: none
    # a sampler name, plan:FILE, or auto: the packaged plan of this model, else unipc
    # (generate/auto_sampler.py)
    sampler: str = "auto"
    steps: int = 10
    # trailing from 999: the karras grid from 999 spends its steps where the cosine schedule's
    # k-sigma explodes (999, 998, 997, ...; RESULTS.md 'Where the ODE starts')
    spacing: str = "trailing"
    t_min: int | None = None  # karras spacing only
    # first timestep: T - 1, where the prior N(0, I) is exact (alpha_bar 2.4e-9). From 979
    # (alpha_bar 1e-3) pure noise lacks the frame's DC and every ODE sampler drew each region
    # ~10 gray levels too bright (benchmarks/RESULTS.md, 'Where the ODE starts')
    t_max: int | None = 999
    rho: float = 7.0
    guidance: float = 1.0
    seed: int = 0
    backend: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    device: str = "cpu"
    engine: str | None = None
    remap: str | None = None  # a MaskR² spec (file or name) for masks in another schema

    def sample_config(self) -> Any:
        from tte2tee_fast.generate.sample import SampleConfig

        return SampleConfig(
            sampler=self.sampler,
            steps=self.steps,
            spacing=self.spacing,
            seed=self.seed,
            batch_size=self.batch_size,
            t_max=self.t_max,
            t_min=self.t_min,
            rho=self.rho,
            guidance=self.guidance,
        )


def sample_frames(
    den: Denoiser,
    labels: torch.Tensor,
    frames: torch.Tensor,
    config: Any,
    progress: bool = False,
    clamp: bool = True,
) -> torch.Tensor:
    """Frames ``[N, 1, H, W]`` in [-1, 1] for label maps ``[N, H, W]`` (source schema) and their
    global frame indices ``[N]`` (a :class:`~tte2tee_fast.generate.sample.SampleConfig`: sampler,
    steps, guidance, seed, batch size), in network batches of ``config.batch_size``. A short
    last batch is padded by repeating its last frame, so the network always runs the same batch
    size and frame ``i`` does not depend on which frames share its batch. ``clamp=False``: the
    sampler's raw output (for ODE-error measurements)."""
    from tqdm.auto import tqdm

    from tte2tee_fast.generate.sample import sample_with

    def model_fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return den(x, t, c, config.guidance)  # guidance inside: cond + null rows batched

    plain = dataclasses.replace(config, guidance=1.0)
    out, b = [], config.batch_size
    bar = tqdm(
        total=labels.shape[0],
        desc=f"sampling ({config.sampler}, {config.steps} steps)",
        disable=not progress,
    )
    for start in range(0, labels.shape[0], b):
        lab, idx = labels[start : start + b].to(den.device), frames[start : start + b]
        n = lab.shape[0]
        if n < b:  # pad: the same batch size every time
            lab = torch.cat([lab, lab[-1:].expand(b - n, *lab.shape[1:])])
            idx = torch.cat([idx, idx[-1:].expand(b - n)])
        out.append(sample_with(model_fn, lab, idx, plain, clamp=clamp)[:n])
        bar.update(n)
    bar.close()
    return torch.cat(out)


class FrameFn:
    """``fn(labels [B, S, S] uint8, frames [B] int64) -> images [B, S, S] uint8``: frame ``i``
    depends only on (the configuration, ``i``, its mask); see :func:`build_frame_fn`."""

    def __init__(self, den: Denoiser, config: FrameConfig) -> None:
        if config.sampler == AUTO:  # resolved here: the dataset hash takes the real sampler
            own = None if config.adapter is None else resolve_asset(config.adapter)
            sampler = auto_sampler(den.info.get("merged_hash"), config.guidance, own)
            config = dataclasses.replace(config, sampler=sampler)
        self.den = den
        self.config = config
        self.spec = den.spec
        self.size = den.size
        self._sample = config.sample_config()
        self.info = {
            **den.info,
            "sampler": config.sampler,
            "steps": config.steps,
            "spacing": config.spacing,
            "t_min": config.t_min,
            "t_max": config.t_max,
            "rho": config.rho,
            "guidance": config.guidance,
            "batch_size": config.batch_size,
            "seed": config.seed,
        }
        if config.remap is not None:  # the spec's content, not its file name, counts
            self.info["maskr2_sha256"] = config_hash(self.spec.to_json())
        if config.sampler.startswith("plan:"):  # the plan's content, not its file name, counts
            from tte2tee_fast.diffusion.dense import load_plan

            plan = load_plan(config.sampler[len("plan:") :]).to_json()
            made_for = ((plan.get("source") or {}).get("model") or {}).get("merged_hash")
            if made_for is not None and made_for != den.info.get("merged_hash"):
                import warnings

                warnings.warn(
                    f"plan {config.sampler[len('plan:') :]} was tuned for another model (merged "
                    f"hash {made_for[:12]}, this one {str(den.info.get('merged_hash'))[:12]}): "
                    "its coefficients may not fit; tune one with tte2tee tune-plan",
                    stacklevel=2,
                )
            self.info |= {"steps": None, "nfe": len(plan["timesteps"])}
            self.info["plan_sha256"] = config_hash(plan)

    def __call__(self, labels: np.ndarray, frames: np.ndarray) -> np.ndarray:
        labels, frames = np.asarray(labels), np.asarray(frames)
        s = self.size
        if labels.ndim != 3 or labels.shape[1:] != (s, s) or labels.shape[0] != frames.shape[0]:
            raise InputError(
                f"frames need label maps [B, {s}, {s}] and B frame indices, got "
                f"{list(labels.shape)} and {list(frames.shape)}"
            )
        self.spec.check_labels(labels, source="masks")
        lab = torch.from_numpy(labels.astype(np.int64))
        idx = torch.from_numpy(frames.astype(np.int64))
        return to_uint8(sample_frames(self.den, lab, idx, self._sample))


def build_frame_fn(config: FrameConfig) -> FrameFn:
    """The frame function of ``config`` (model, adapter, sampler, backend resolved and loaded)."""
    if config.batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {config.batch_size}")
    den = build_denoiser(
        config.model,
        config.adapter,
        config.backend,
        config.precision,
        batch=config.batch_size,  # engines compile static shapes at the network batch
        device=config.device,
        engine=config.engine,
        spec=None if config.remap is None else load_spec(config.remap),
    )
    return FrameFn(den, config)
