"""Sample frames from a SemanticUNet for a batch of label maps: the plain loop every caller uses.

label map (source schema) -> MaskR² remap -> one-hot [B, C, H, W] -> guided eps_fn -> sampler
loop from counter-based noise -> x0 in [-1, 1]. Frame ``i`` of a run depends only on
``(seed, i)``, so batch size never changes a frame.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from tte2tee_fast.condition.maskr2 import MaskR2Spec, remap_one_hot
from tte2tee_fast.data.schemas import LabelSchema
from tte2tee_fast.diffusion import NoiseSchedule, NoiseSource, cfg_eps_fn, get_sampler
from tte2tee_fast.diffusion.clip import clip_denoised
from tte2tee_fast.diffusion.dense import load_plan, run_dense_plan
from tte2tee_fast.errors import InputError

if TYPE_CHECKING:
    from tte2tee_fast.generate.multi_adapter import MixedAdapters


@dataclass(frozen=True)
class SampleConfig:
    """How to sample: sampler name, step count and spacing, guidance scale, seed, batch size."""

    sampler: str = "ddim"
    steps: int = 50
    # "trailing" starts every step count at t = 999 (diffusers' recommendation; "leading" starts
    # 10 steps at t = 900). From 999 the clamp below is what makes it safe: alpha = 4.9e-5 there,
    # and unclamped clean-image estimates of a trained eps-network are saturated (RESULTS.md)
    spacing: str = "trailing"
    guidance: float = 1.0
    seed: int = 0
    batch_size: int = 8
    bf16: bool = False  # bf16 autocast on CPU (weights stay fp32)
    eta: float = 0.0  # ddim only
    # clamp each step's clean-image estimate to [-1, 1] (diffusion/clip.py; SDM and guided
    # diffusion sample this way). Off for ODE-error measurements: it changes the ODE.
    clip: bool = True
    t_max: int | None = None  # first timestep (trailing/linspace/karras); None: T - 1
    rho: float = 7.0  # karras spacing only: sigma_i^(1/rho) evenly spaced (Karras et al. eq. 5)
    t_min: int | None = None  # karras spacing only: last timestep of the grid; None: 0


def _model_fn(model: torch.nn.Module, bf16: bool) -> Callable:
    def fn(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        ctx = (
            torch.autocast(x.device.type, dtype=torch.bfloat16)
            if bf16
            else contextlib.nullcontext()
        )
        with ctx:
            return model(x, t, cond).float()

    return fn


@torch.no_grad()
def sample_with(
    model_fn: Callable,
    cond: torch.Tensor,
    frame_indices: torch.Tensor,
    config: SampleConfig,
    schedule: NoiseSchedule | None = None,
    eps_wrapper: Callable | None = None,
    clamp: bool = True,
    null: torch.Tensor | None = None,
) -> torch.Tensor:
    """Frames ``[B, 1, H, W]`` in [-1, 1] from ``model_fn(x, t, cond)`` (eps) for conditioning
    ``cond`` ``[B, ...]`` (one-hot channels, or the raw label maps of an engine backend, whose
    unconditional input ``null`` is a map of unmapped values).

    ``config.sampler`` is a named sampler or ``plan:FILE`` (a dense plan,
    :mod:`tte2tee_fast.diffusion.dense`). ``eps_wrapper`` (e.g. an
    :class:`~tte2tee_fast.diffusion.NFECounter`) wraps the guided eps function, for benchmarks.
    ``clamp=False`` returns the sampler's raw output (the ODE solution, for error measurements)
    instead of clipping it to [-1, 1].
    """
    schedule = schedule or NoiseSchedule.cosine(1000)
    noise = NoiseSource(config.seed, frame_indices)
    h, w = cond.shape[-2:]
    x = noise.initial((1, h, w), device=cond.device)  # [B, 1, H, W]
    eps_fn = cfg_eps_fn(model_fn, cond, config.guidance, null)
    if config.sampler.startswith("plan:"):
        plan = load_plan(config.sampler[len("plan:") :])
        if eps_wrapper is not None:
            eps_fn = eps_wrapper(eps_fn)
        t_b = [
            torch.full((x.shape[0],), t, dtype=torch.long, device=x.device) for t in plan.timesteps
        ]
        x0 = run_dense_plan(lambda xk, k: eps_fn(xk, t_b[k]), x, plan, clip=config.clip)
        return x0.clamp(-1.0, 1.0) if clamp else x0
    sampler = get_sampler(config.sampler)
    timesteps = schedule.timesteps(
        config.steps, config.spacing, rho=config.rho, t_max=config.t_max, t_min=config.t_min
    )
    if config.clip:
        eps_fn = clip_denoised(eps_fn, schedule, device=cond.device)
    if eps_wrapper is not None:
        eps_fn = eps_wrapper(eps_fn)
    options = {"eta": config.eta} if config.sampler == "ddim" else {}
    x0 = sampler(eps_fn, x, schedule, timesteps, noise=noise, **options)
    return x0.clamp(-1.0, 1.0) if clamp else x0


def sample_batch(
    model: torch.nn.Module,
    cond: torch.Tensor,
    frame_indices: torch.Tensor,
    config: SampleConfig,
    schedule: NoiseSchedule | None = None,
    eps_wrapper: Callable | None = None,
    clamp: bool = True,
) -> torch.Tensor:
    """:func:`sample_with` for a SemanticUNet and one-hot conditioning ``cond`` ``[B, C, H, W]``."""
    fn = _model_fn(model, config.bf16)
    return sample_with(fn, cond, frame_indices, config, schedule, eps_wrapper, clamp)


def sample_labels(
    model: torch.nn.Module,
    labels: torch.Tensor,
    spec: MaskR2Spec,
    config: SampleConfig,
    first_frame: int = 0,
    progress: bool = True,
    adapters: MixedAdapters | None = None,
) -> torch.Tensor:
    """Frames ``[N, 1, H, W]`` for label maps ``[N, H, W]`` in ``spec``'s source schema.

    ``adapters`` (adapters fused unmerged, :mod:`tte2tee_fast.generate.multi_adapter`): frame
    ``i`` runs adapter ``i % K`` and is remapped with that adapter's spec (``spec`` unused).
    """
    if labels.ndim != 3:
        raise InputError(f"label maps must be [N, H, W], got shape {tuple(labels.shape)}")
    channels = model.config.label_channels
    for s in dict.fromkeys((spec,) if adapters is None else adapters.specs):
        s.check_labels(labels, source="conditioning masks")
        if s.num_channels != channels:
            raise InputError(
                f"MaskR² spec {s.name!r} produces {s.num_channels} channels but the model "
                f"expects {channels}"
            )
    model.eval()
    schedule = NoiseSchedule.cosine(1000)  # built once for every batch
    out = []
    n = labels.shape[0]
    bar = tqdm(
        total=n, desc=f"sampling ({config.sampler}, {config.steps} steps)", disable=not progress
    )
    for start in range(0, n, config.batch_size):
        lab = labels[start : start + config.batch_size]  # [b, H, W]
        idx = torch.arange(first_frame + start, first_frame + start + lab.shape[0])
        if adapters is None:
            cond, rows = remap_one_hot(lab, spec), contextlib.nullcontext()  # [b, C, H, W]
        else:  # per row: the frame's adapter and its spec
            cond, rows = adapters.remap(lab, idx), adapters.rows(model, idx)
        with rows:
            out.append(sample_batch(model, cond, idx, config, schedule))
        bar.update(lab.shape[0])
    bar.close()
    return torch.cat(out)


@dataclass(frozen=True)
class SampleRun:
    """What :func:`run_sample` drew (all ``[N, H, W]`` uint8) and how (``meta``)."""

    generated: np.ndarray
    masks: np.ndarray
    reference: np.ndarray | None  # the source's own frames of the same masks, if it has them
    schema: LabelSchema
    meta: dict


def run_sample(
    out: str,
    model_dir: str | None,
    masks: str,
    n: int,
    config: SampleConfig,
    remap: str | None = None,
    mask_seed: int = 0,
    view: str | None = None,
    adapters: Sequence[str] | None = None,
    adapter: str | None = None,
    backend: str = "torch",
    precision: str | None = None,
    engine: str | None = None,
) -> SampleRun:
    """``tte2tee sample``: sample ``n`` frames for the masks of ``masks`` and write them to ``out``
    (images, masks, grid.png); returns the frames for the report.

    The MaskR² spec is ``remap`` when given, else ``adapter``'s (merged into the model in memory,
    any LoRA targets, as ``tte2tee merge`` would), else the model folder's own (``maskr2.json``
    of a merged adapter, identity ``tte`` otherwise); its source schema must be the masks'.
    ``adapters`` (folders): serve them unmerged on the model, frame ``i`` with adapter
    ``i % K`` through its own spec (:mod:`tte2tee_fast.generate.multi_adapter`; torch only).
    ``backend`` / ``precision`` / ``engine``: the denoiser (:mod:`tte2tee_fast.generate.backends`;
    ``precision=None``: bf16 if ``config.bf16`` else fp32, for the torch backend).
    """
    import time

    from tte2tee_fast.condition.maskr2 import load_spec
    from tte2tee_fast.generate.masks import load_masks, to_uint8
    from tte2tee_fast.generate.outputs import write_samples
    from tte2tee_fast.models import load_model
    from tte2tee_fast.packaged import resolve_model_path

    path = resolve_model_path(model_dir)
    if adapters and adapter:
        raise InputError("give --adapter (merged) or --unmerged --adapters, not both")
    mixed = None
    if adapters:
        from tte2tee_fast.generate.multi_adapter import fuse_mixed_adapters

        if remap:
            raise InputError(
                "--remap cannot be combined with --adapters: each adapter folder carries its "
                "own MaskR² spec (tte2tee.json)"
            )
        if backend != "torch":
            raise InputError("--unmerged --adapters runs on the torch backend only")
        if precision is not None:
            from tte2tee_fast.generate.backends import resolve

            config = dataclasses.replace(config, bf16=resolve("torch", precision)[1] == "bf16")
        model = load_model(path)
        mixed = fuse_mixed_adapters(model, adapters)
        spec, size = mixed.specs[0], int(model.config.sample_size)
    else:
        from tte2tee_fast.generate.backends import build_denoiser, sample_frames

        if precision is None:
            precision = "bf16" if config.bf16 else "fp32"
        spec_override = load_spec(remap) if remap else None
        den = build_denoiser(
            str(path),
            adapter,
            backend,
            precision,
            config.batch_size,
            engine=engine,
            spec=spec_override,
        )
        spec, size = den.spec, den.size
    batch = load_masks(masks, n, size, seed=mask_seed, view=view)
    if batch.schema.name != spec.source.name:
        hint = (
            "other masks"
            if mixed is not None
            else f"--remap with a {batch.schema.name}->... spec or other masks"
        )
        raise InputError(
            f"masks {masks!r} use the {batch.schema.name!r} schema but the MaskR² spec "
            f"{spec.name!r} maps {spec.source.name!r} labels; pass {hint}"
        )
    start = time.perf_counter()
    if mixed is not None:
        frames = sample_labels(model, batch.labels, spec, config, adapters=mixed)
    else:
        spec.check_labels(batch.labels, source="conditioning masks")
        frames = sample_frames(den, batch.labels, torch.arange(n), config, progress=True)
    seconds = time.perf_counter() - start
    meta = {
        "model": str(path),
        **({} if mixed is not None else {"denoiser": den.info}),
        "masks": masks,
        "remap": spec.name if mixed is None else ",".join(s.name for s in mixed.specs),
        "config": dataclasses.asdict(config),
        "seconds": round(seconds, 3),
        "seconds_per_frame": round(seconds / n, 4),
    }
    if adapter:
        meta["adapter"] = str(adapter)
    if mixed is not None:
        meta["adapters"] = [str(p) for p in mixed.paths]
        meta["adapter_of_frame"] = f"i % {mixed.num_adapters}"
    generated = to_uint8(frames)
    labels = batch.labels.numpy().astype("uint8")
    reference = to_uint8(batch.images)
    write_samples(out, batch.names, generated, labels, batch.schema, reference=reference)
    return SampleRun(generated, labels, reference, batch.schema, meta)
