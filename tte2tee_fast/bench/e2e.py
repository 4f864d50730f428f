"""``tte2tee bench e2e``: three pipelines side by side in one process, on the same masks and
the same counter-based noise, with structural fidelity beside every speed.

- ``reference``: as the base papers run it: torch eager fp32, the peft adapter unmerged
  (:func:`~tte2tee_fast.adapt.adapter.attach_adapter`), 1000-step ancestral DDPM;
- ``diffusers``: torch eager fp32, peft unmerged, diffusers' own ``DPMSolverMultistepScheduler``
  (DPM-Solver++ 2M, its default ``linspace`` spacing) at 20 steps driving the same model;
- ``ours``: the merged model through :func:`~tte2tee_fast.generate.backends.build_frame_fn`
  (backend, precision and sampler as configured: the defaults of ``tte2tee generate``).

For each: seconds per frame, frames/s, fidelity (per-structure Dice of the packaged segmenter
against the conditioning masks, :mod:`tte2tee_fast.evaluate.fidelity`) and the region-mean
error against the phantom's own frames of the same masks; ratios ``ours / reference`` and
``ours / diffusers`` of frames/s. The reference costs ~1000 forwards per frame, so it runs on
``n_reference`` frames only (its fidelity is then a small-sample number: said in the report).

Roofline: FLOPs of one forward counted with ``torch.utils.flop_counter`` (a multiply-add = 2), the
peak matrix-product rate of this machine measured in the same run (fp32 and bf16 ``torch.mm`` at
1024 and 2048 cubed, timed windows: :func:`mm_rates`; bf16 only where it runs in hardware or ours
runs in it, :func:`peak_dtypes`), ours' network rate as a share of the peak of
its precision (16-bit engines against the bf16 peak, the rest against fp32; the median of five
adjacent pairs of one forward and one mm window per size: :func:`paired_roofline`), achieved
GFLOP/s of each pipeline, and the share of ours' time outside the network (loop, masks, encoding):
its timed run less the seconds spent inside its denoiser calls during that run (measured in the
same run: forwards timed apart from it ran up to 25 % slower on this shared host). With the
label cache (export/ov_split.py, onnx_split.py) ours runs the SPADE heads once per mask batch: its FLOPs per frame
are then ``label part + NFE x step``, its roofline is the step's rate (FLOPs without the heads,
timed with repeated labels), and the label part's time is reported (a forward on new labels less
one on repeated labels). Every pipeline is timed after an untimed warm-up (the torch ones: one
forward of their network; ours: one frame-function batch), since engines and torch allocate on the
first call and with ``n = 8`` ours is a single batch.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tte2tee_fast.bench.samplers import sync
from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.masks import to_uint8

PIPELINES = ("reference", "diffusers", "ours")


@dataclass(frozen=True)
class E2EConfig:
    """What ``tte2tee bench e2e`` runs."""

    n: int = 8  # frames of the diffusers and ours pipelines
    n_reference: int = 1  # frames of the 1000-step reference (~1000 forwards each)
    reference_steps: int = 1000
    diffusers_steps: int = 20
    sampler: str = "auto"  # generate's default: the packaged plan of this model, else unipc
    steps: int = 10
    spacing: str = "trailing"  # generate's grid (FrameConfig)
    t_min: int | None = 10  # karras spacing only
    t_max: int | None = 999  # generate's start (FrameConfig)
    backend: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    seed: int = 0
    mask_seed: int = 0
    model: str | None = None
    adapter: str | None = "phantom-tee"
    segmenter: str | None = None  # None: the packaged segmenter of the masks' schema
    pipelines: tuple[str, ...] = PIPELINES
    device: str = "cpu"  # torch device of every pipeline (ours: its backend's device)

    def __post_init__(self) -> None:
        if min(self.n, self.n_reference, self.reference_steps, self.diffusers_steps) < 1:
            raise InputError("bench e2e: frame counts and step counts must be >= 1")
        unknown = [p for p in self.pipelines if p not in PIPELINES]
        if unknown:
            raise InputError(
                f"bench e2e: unknown pipelines {unknown}; choose from {list(PIPELINES)}"
            )


QUICK = {"n": 2, "n_reference": 1, "reference_steps": 8, "diffusers_steps": 4, "steps": 4}


PEAKS = {"fp32": torch.float32, "bf16": torch.bfloat16}  # precisions of the peak probe
PEAK_SIZES = (1024, 2048)  # bf16 mm on the AMX machine: 1024 runs at ~60 % of 2048's rate


def mm_rates(
    dtype: torch.dtype,
    sizes: tuple[int, ...] = PEAK_SIZES,
    seconds: float = 0.2,
    windows: int = 3,
    device: str = "cpu",
) -> dict[int, float]:
    """GFLOP/s of ``torch.mm`` on ``size``-cubed matrices, per size: the best of ``windows``
    timed windows of at least ``seconds`` each (back-to-back products after one untimed one).

    Single products of 1024-cubed last a few ms on a 2-core machine and their rate wandered
    3x between sessions (309-1112 GFLOP/s bf16), so each window repeats the product until it has
    run ``seconds``; larger sizes reach a higher rate (oneDNN's blocking), hence several."""
    rates = {}
    for size in sizes:
        a, b = _mm_operands(size, dtype, device)
        rates[size] = max(_mm_window(a, b, seconds, device) for _ in range(windows))
    return rates


def _mm_operands(size: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # untimed: first-call allocation
    return a, b


def _mm_window(a: torch.Tensor, b: torch.Tensor, seconds: float, device: str) -> float:
    """GFLOP/s of back-to-back ``a @ b`` (square) over one window of at least ``seconds``."""
    sync(device)
    count, t0 = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        count += 1
        sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return 2 * a.shape[0] ** 3 * count / elapsed / 1e9


def peak_dtypes(device: str, precision: str = "fp32") -> dict[str, torch.dtype]:
    """The precisions whose mm peak ``bench e2e`` measures: fp32 always; bf16 where the device
    computes it in hardware (CUDA, or a CPU with AVX512_BF16 / AMX) or ours runs in it. On a CPU
    without bf16 hardware torch emulates a bf16 product (0.9 GFLOP/s on the AVX2-only 2-core
    machine: 19 s per 2048-cubed product), which measures no peak of anything ours runs on."""
    from tte2tee_fast.generate.backends import cpu_has_bf16

    hardware = device.startswith("cuda") or cpu_has_bf16()
    return {k: v for k, v in PEAKS.items() if k == "fp32" or hardware or precision == k}


def peak_gflops(dtype: torch.dtype, device: str = "cpu", **kwargs: Any) -> float:
    """The peak matrix-product rate of this machine now: the best of :func:`mm_rates`."""
    return max(mm_rates(dtype, device=device, **kwargs).values())


def forward_flops(model: torch.nn.Module, size: int, channels: int) -> int:
    """FLOPs of one forward of one image (multiply-add = 2), counted by torch."""
    return sum(flops_by_op(model, size, channels).values())


def flops_by_op(model: torch.nn.Module, size: int, channels: int) -> dict[str, int]:
    """FLOPs of one forward of one image per aten op (``"aten.convolution"``, ``"aten.bmm"``,
    ...), counted by ``torch.utils.flop_counter``."""
    counts = _flop_counts(model, size, channels)["Global"]
    return {str(op): int(n) for op, n in counts.items()}


def label_part_flops(model: torch.nn.Module, size: int, channels: int) -> int:
    """FLOPs of one image in the SPADE heads (``shared``, ``mlp_gamma``, ``mlp_beta`` of every
    SPADE norm): the part that depends on the labels only, which the label cache of OpenVINO and ONNX Runtime runs
    once per mask batch instead of at every step (export/ov_split.py)."""
    from tte2tee_fast.models.blocks import SPADEGroupNorm

    counts = _flop_counts(model, size, channels)
    root = type(model).__name__
    keys = [f"{root}.{n}" for n, m in model.named_modules() if isinstance(m, SPADEGroupNorm)]
    missing = [k for k in keys if k not in counts]
    if missing or not keys:
        raise RuntimeError(f"flop counter names no SPADE norm like {missing[:1] or root}")
    return int(sum(sum(counts[k].values()) for k in keys))


def _flop_counts(model: torch.nn.Module, size: int, channels: int) -> dict[str, dict]:
    """``torch.utils.flop_counter``'s counts per module (and ``"Global"``) of one forward of one
    image at timestep 500 with all labels in channel 0."""
    from torch.utils.flop_counter import FlopCounterMode

    dev = next(model.parameters()).device
    x = torch.randn(1, 1, size, size, device=dev)
    cond = torch.zeros(1, channels, size, size, device=dev)
    cond[:, 0] = 1
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, torch.tensor([500], device=dev), cond)
    return counter.get_flop_counts()


def phantom_pairs(schema: str, size: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The phantom masks and images of cases 0..n-1 (the same for every pipeline); below the
    phantom's smallest size (64) drawn at 64 and subsampled (nearest: no new label values)."""
    from tte2tee_fast.data.phantom import MIN_SIZE, case_seed, phantom_case

    draw = max(size, MIN_SIZE)
    idx = (np.arange(size) * draw) // size  # nearest source pixel
    cases = [phantom_case(schema, size=draw, seed=case_seed(seed, i)) for i in range(n)]
    masks = np.stack([c.mask[np.ix_(idx, idx)] for c in cases])
    return masks, np.stack([c.image[np.ix_(idx, idx)] for c in cases])


def peft_model(config: E2EConfig) -> tuple[torch.nn.Module, Any]:
    from tte2tee_fast.adapt.adapter import attach_adapter, load_adapter_meta
    from tte2tee_fast.adapt.merge import load_model_spec
    from tte2tee_fast.models import load_model
    from tte2tee_fast.packaged import resolve_asset, resolve_model_path

    path = resolve_model_path(config.model)
    model = load_model(path).float().eval().to(config.device)
    if config.adapter is None:
        return model, load_model_spec(path)
    adapter = resolve_asset(config.adapter)
    return attach_adapter(model, adapter).to(config.device), load_adapter_meta(adapter).maskr2


def run_reference(
    model: torch.nn.Module, spec: Any, labels: np.ndarray, config: E2EConfig
) -> np.ndarray:
    """(a) eager fp32, peft unmerged, ancestral DDPM over ``reference_steps`` steps."""
    from tte2tee_fast.condition.maskr2 import remap_one_hot
    from tte2tee_fast.generate.sample import SampleConfig, sample_batch

    cond = remap_one_hot(torch.from_numpy(labels.astype(np.int64)).to(config.device), spec)
    cfg = SampleConfig("ddpm", config.reference_steps, seed=config.seed, batch_size=len(labels))
    return to_uint8(sample_batch(model, cond, torch.arange(len(labels)), cfg))


@torch.no_grad()
def run_diffusers(
    model: torch.nn.Module, spec: Any, labels: np.ndarray, config: E2EConfig
) -> np.ndarray:
    """(b) eager fp32, peft unmerged, diffusers' DPMSolverMultistepScheduler driving the model."""
    from diffusers import DPMSolverMultistepScheduler

    from tte2tee_fast.condition.maskr2 import remap_one_hot
    from tte2tee_fast.diffusion import frame_noise

    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
    )
    scheduler.set_timesteps(config.diffusers_steps)
    cond = remap_one_hot(torch.from_numpy(labels.astype(np.int64)).to(config.device), spec)
    s = labels.shape[-1]
    x = frame_noise(config.seed, range(len(labels)), (1, s, s), device=config.device)
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = model(x, t.to(config.device).expand(x.shape[0]), cond)
        x = scheduler.step(eps, t, x).prev_sample
    return to_uint8(x)


def run_ours(frame_fn: Any, labels: np.ndarray, timer: _DenoiserTimer | None = None) -> np.ndarray:
    """(c) the frame function of ``tte2tee generate``, its denoiser calls timed by ``timer`` if
    given (which adds the seconds of this run to ``timer.seconds``)."""
    if timer is None:
        return frame_fn(labels, np.arange(len(labels)))
    den = frame_fn.den
    if isinstance(den, _DenoiserTimer):
        raise RuntimeError("run_ours: the frame function's denoiser is already timed")
    timer.den, frame_fn.den = den, timer
    try:
        return frame_fn(labels, np.arange(len(labels)))
    finally:
        frame_fn.den = den


def _label_runs(frame_fn: Any) -> int:
    """Label-part runs so far of ``frame_fn``'s label cache (0 without one)."""
    features = getattr(getattr(frame_fn.den, "runner", None), "features", None)
    return 0 if features is None else int(features.runs)


class _DenoiserTimer:
    """A frame function's denoiser that adds the seconds of every call to ``seconds``; its other
    attributes are the denoiser's. On CUDA it synchronises before and after every call, so the
    network's kernels count as network time (and the timed run loses the overlap of the host
    loop with them: a small cost to ours' frames/s there)."""

    def __init__(self) -> None:
        self.den: Any = None  # set by run_ours
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        den = self.__dict__.get("den")
        if den is None:
            raise AttributeError(name)
        return getattr(den, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sync(self.den.device)
        t0 = time.perf_counter()
        out = self.den(*args, **kwargs)
        sync(self.den.device)
        self.seconds += time.perf_counter() - t0
        return out


def fidelity_summary(
    seg: Any, images: np.ndarray, masks: np.ndarray, schema: Any, name: str
) -> dict:
    from tte2tee_fast.evaluate.fidelity import fidelity_report
    from tte2tee_fast.evaluate.frames import Frames

    names = tuple(f"{name}_{i}" for i in range(len(images)))
    report = fidelity_report(seg, Frames(images, masks, names, schema, name), n_boot=200)
    return {
        "mean_dice": report["mean_dice"],
        "per_class": {k: v["mean"] for k, v in report["per_class"].items()},
    }


def _regions(images: np.ndarray, reference: np.ndarray, masks: np.ndarray, schema: Any) -> float:
    from tte2tee_fast.evaluate.intensity import compare_regions, worst_region

    return worst_region(compare_regions(images, reference, masks, schema))


def bench_e2e(config: E2EConfig, progress: bool = True) -> dict:
    """Run the pipelines of ``config`` and return the result dict (see the module docstring)."""
    from tte2tee_fast.bench.samplers import machine_info
    from tte2tee_fast.evaluate.segment import load_segmenter
    from tte2tee_fast.generate.backends import FrameConfig, build_frame_fn

    frame_cfg = FrameConfig(
        model=config.model,
        adapter=config.adapter,
        sampler=config.sampler,
        steps=config.steps,
        spacing=config.spacing,
        t_min=config.t_min if config.spacing == "karras" else None,
        t_max=config.t_max,
        seed=config.seed,
        backend=config.backend,
        precision=config.precision,
        batch_size=config.batch_size,
        device=config.device,
    )
    frame_fn = build_frame_fn(frame_cfg)
    ours = dataclasses.replace(config, sampler=frame_fn.config.sampler)  # auto resolved
    schema = frame_fn.spec.source
    size = frame_fn.size
    labels, phantom = phantom_pairs(
        schema.name, size, max(config.n, config.n_reference), config.mask_seed
    )
    seg = load_segmenter(config.segmenter) if config.segmenter else load_segmenter(None)
    peft, spec = peft_model(config)
    flops = forward_flops(peft, size, spec.num_channels)
    # with the label cache, ours runs the SPADE heads once per mask batch, not at every step
    cached = bool(frame_fn.info.get("label_cache"))
    label_flops = label_part_flops(peft, size, spec.num_channels) if cached else 0
    step_flops = flops - label_flops
    runs = {
        "reference": (
            config.n_reference,
            config.reference_steps,
            lambda lab: run_reference(peft, spec, lab, config),
        ),
        "diffusers": (
            config.n,
            config.diffusers_steps,
            lambda lab: run_diffusers(peft, spec, lab, config),
        ),
        "ours": (config.n, _nfe(ours), lambda lab: run_ours(frame_fn, lab, timer)),
    }
    timer = _DenoiserTimer()  # ours' seconds inside the network, in its timed run
    frame_flops = {name: flops * nfe for name, (_, nfe, _) in runs.items()}  # executed, per frame
    frame_flops["ours"] = label_flops + step_flops * _nfe(ours)
    label_runs = 0  # label-part runs (engine batches) in ours' timed run

    def warm_torch(n: int) -> None:
        warm_up(peft, spec, labels[:n], config.device)

    warm = {  # ours: one frame-function batch (a few forwards), its sampler path included
        "reference": warm_torch,
        "diffusers": warm_torch,
        # mirrored masks: the timed run must not find its own label features already cached
        "ours": lambda n: run_ours(
            frame_fn, np.ascontiguousarray(labels[: config.batch_size, :, ::-1])
        ),
    }
    rows = {}
    for name in config.pipelines:
        n, nfe, fn = runs[name]
        if progress:
            print(f"bench e2e: {name} ({n} frames, {nfe} NFE each)", flush=True)
        lab = labels[:n]
        warm[name](n)  # untimed: first-call allocation is not a per-frame cost
        runs_before = _label_runs(frame_fn)
        t0 = time.perf_counter()
        images = fn(lab)
        seconds = time.perf_counter() - t0
        if name == "ours":
            label_runs = _label_runs(frame_fn) - runs_before
        rows[name] = {
            "frames": n,
            "nfe": nfe,
            "seconds_per_frame": seconds / n,
            "frames_per_s": n / seconds,
            "achieved_gflops": frame_flops[name] * n / seconds / 1e9,
            "fidelity": fidelity_summary(seg, images, lab, schema, name),
            "region_max_rel_diff": _regions(images, phantom[:n], lab, schema),
        }
    ratios = {}
    if "ours" in rows:
        for other in ("reference", "diffusers"):
            if other in rows:
                ratios[f"ours/{other}"] = rows["ours"]["frames_per_s"] / rows[other]["frames_per_s"]
    forward_s = _forward_seconds(frame_fn, labels[: config.batch_size], config)
    label_s = 0.0  # the label part's seconds per image, once per frame (drift can make it < 0)
    if cached:
        fresh_s = _forward_seconds(frame_fn, labels[: config.batch_size], config, fresh=True)
        label_s = fresh_s - forward_s
    outside = None
    if "ours" in rows:  # the denoiser calls of ours' own timed run against that run's time
        outside = 1.0 - timer.seconds / (rows["ours"]["seconds_per_frame"] * rows["ours"]["frames"])
    precision = "bf16" if frame_fn.info.get("precision") in ("bf16", "fp16") else "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peaks = {  # after the pipelines, so their warm-up does not overlap the probe
        name: mm_rates(dt, device=config.device)
        for name, dt in peak_dtypes(config.device, precision).items()
    }
    share = {  # ours' network (one forward) against the peak of its precision measured next
        "precision": precision,
        **paired_roofline(
            frame_fn, labels, step_flops, config.batch_size, dtype, device=config.device
        ),
    }
    return {
        "config": dataclasses.asdict(config),
        "machine": machine_info(torch.device(config.device)),
        "ours_backend": frame_fn.info,
        "flops_per_forward": flops,
        "ours_label_cache": cached,
        "flops_label_part": label_flops,
        "flops_per_step": step_flops,
        "peak_gflops": {k: max(peaks[k].values()) if k in peaks else None for k in PEAKS},
        "mm_gflops_by_size": peaks,
        "ours_network_share_of_peak": share,
        "ours_forward_s_per_image": forward_s,
        "ours_label_part_s_per_image": label_s,
        "ours_label_part_runs": label_runs,
        "ours_share_outside_network": outside,
        "pipelines": rows,
        "ratios": ratios,
        "notes": [
            f"the reference ran {config.n_reference} frame(s) of {config.reference_steps} "
            "steps: its fidelity is a small-sample number",
            "ratios are frames/s of ours over the other pipeline, measured in this process",
        ],
    }


def _nfe(config: E2EConfig) -> int:
    from tte2tee_fast.diffusion.dense import sampler_plan

    if config.sampler in ("ddpm", "dpmpp_2m_sde"):
        return config.steps
    t_min = config.t_min if config.spacing == "karras" else None
    return sampler_plan(config.sampler, config.steps, config.spacing, 7.0, config.t_max, t_min).nfe


@torch.no_grad()
def warm_up(model: torch.nn.Module, spec: Any, labels: np.ndarray, device: str) -> None:
    """One untimed forward of the torch pipelines' network at their batch (``labels [N, S, S]``)."""
    from tte2tee_fast.condition.maskr2 import remap_one_hot

    cond = remap_one_hot(torch.from_numpy(labels.astype(np.int64)).to(device), spec)
    x = torch.zeros(len(labels), 1, *labels.shape[1:], device=device)
    model(x, torch.full((len(labels),), 500, device=device), cond)


def _forward_seconds(
    frame_fn: Any, labels: np.ndarray, config: E2EConfig, repeats: int = 5, fresh: bool = False
) -> float:
    """Seconds per image of one forward of ours' denoiser at the network batch: the median of
    ``repeats`` timed calls after an untimed one (``fresh``: new labels at every call)."""
    forward = _forward_timer(frame_fn, labels, config.batch_size, fresh)
    return float(np.median([forward() for _ in range(repeats)]))


def _forward_timer(frame_fn: Any, labels: np.ndarray, batch: int, fresh: bool = False) -> Any:
    """A function timing one forward of ours' denoiser on ``batch`` images (seconds per image),
    after one untimed call. The same labels at every call, as in a sampler's steps (with the
    label cache: the step part only); ``fresh``: labels shifted by one more pixel each call, so a
    label cache runs its label part every time."""
    dev = frame_fn.den.device
    lab = torch.from_numpy(np.resize(labels, (batch, *labels.shape[1:])).astype(np.int64)).to(dev)
    x = torch.randn(batch, 1, *labels.shape[1:], device=dev)
    t = torch.full((batch,), 500, device=dev)
    calls = itertools.count()
    frame_fn.den(x, t, lab)

    def forward() -> float:
        y = torch.roll(lab, next(calls) + 1, dims=-1) if fresh else lab
        sync(dev)
        t0 = time.perf_counter()
        frame_fn.den(x, t, y)
        sync(dev)
        return (time.perf_counter() - t0) / batch

    return forward


def paired_roofline(
    frame_fn: Any,
    labels: np.ndarray,
    flops: int,
    batch: int,
    dtype: torch.dtype,
    sizes: tuple[int, ...] = PEAK_SIZES,
    pairs: int = 5,
    seconds: float = 0.2,
    device: str = "cpu",
) -> dict:
    """Ours' network rate as a share of the mm peak, measured in ``pairs`` adjacent pairs (one
    forward, then one mm window of ``seconds`` at each of ``sizes``, the best of them the peak):
    the machine's speed drifts within minutes on a shared host (the peak probe read 542-912
    GFLOP/s bf16 in one quarter hour), so each forward is set against the peak measured right
    after it; the share is the median. Every size in every pair, because the rate of one size
    jumps between windows too (bf16 1024-cubed: 1025 GFLOP/s in the probe, 343-359 in the five
    pairs right after it, twelfth session)."""
    forward = _forward_timer(frame_fn, labels, batch)
    operands = {size: _mm_operands(size, dtype, device) for size in sizes}
    rows = []
    for _ in range(pairs):
        net = flops / forward() / 1e9
        rates = {size: _mm_window(a, b, seconds, device) for size, (a, b) in operands.items()}
        best = max(rates, key=rates.get)
        rows.append((net, rates[best], net / rates[best], best))
    net, peak, share = (float(np.median([r[i] for r in rows])) for i in range(3))
    return {
        "network_gflops": net,
        "peak_gflops": peak,
        "share": share,
        "mm_sizes": list(sizes),
        "pairs": rows,
    }


def markdown(result: dict) -> str:
    """The result as a Markdown table (one row per pipeline) and the roofline lines."""
    lines = [
        "| pipeline | frames | NFE | s/frame | frames/s | mean Dice | max region rel. diff | GFLOP/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["pipelines"].items():
        lines.append(
            f"| {name} | {r['frames']} | {r['nfe']} | {r['seconds_per_frame']:.3f} | "
            f"{r['frames_per_s']:.3f} | {r['fidelity']['mean_dice']['mean']:.3f} | "
            f"{r['region_max_rel_diff']:.3f} | {r['achieved_gflops']:.1f} |"
        )
    lines.append("")
    for k, v in result["ratios"].items():
        lines.append(f"- {k}: {v:.1f}x frames/s")
    peak = result["peak_gflops"]
    lines.append(
        f"- network: {result['flops_per_forward'] / 1e9:.2f} GFLOP per forward; peak mm "
        f"{peak['fp32']:.0f} GFLOP/s fp32, "
        + (f"{peak['bf16']:.0f} GFLOP/s bf16" if peak.get("bf16") else "bf16 not measured")
        + " (measured now)"
    )
    roof = result["ours_network_share_of_peak"]
    lines.append(
        f"- ours' network: {roof['network_gflops']:.0f} GFLOP/s = "
        f"{100 * roof['share']:.0f} % of the {roof['precision']} mm peak measured beside each "
        f"forward ({roof['peak_gflops']:.0f} GFLOP/s, the best of "
        f"{'/'.join(str(p) for p in roof['mm_sizes'])}-cubed products; median of "
        f"{len(roof['pairs'])} "
        "pairs)"
    )
    if result["ours_label_cache"]:
        lines.append(
            f"- ours' label cache: the SPADE heads ({result['flops_label_part'] / 1e9:.2f} GFLOP "
            f"per image) run once per mask batch ({result['ours_label_part_runs']} run(s) in the "
            f"timed run; {result['ours_label_part_s_per_image'] * 1e3:.1f} ms per image), each "
            f"step runs {result['flops_per_step'] / 1e9:.2f} GFLOP"
        )
    if result["ours_share_outside_network"] is not None:
        step = "step" if result["ours_label_cache"] else "forward"
        lines.append(
            f"- ours: {step} {result['ours_forward_s_per_image'] * 1e3:.1f} ms per image; "
            f"{100 * result['ours_share_outside_network']:.0f} % of its time is outside the network"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Any) -> None:
    """frames/s (log) against mean Dice, one point per pipeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tte2tee_fast.fsutil import staged_file

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, r in result["pipelines"].items():
        ax.scatter(r["frames_per_s"], r["fidelity"]["mean_dice"]["mean"], s=40)
        ax.annotate(
            f"{name} ({r['nfe']} NFE)", (r["frames_per_s"], r["fidelity"]["mean_dice"]["mean"])
        )
    ax.set_xscale("log")
    ax.set_xlabel("frames / s (this machine)")
    ax.set_ylabel("mean Dice (segmenter vs mask)")
    ax.set_title("tte2tee bench e2e")
    fig.tight_layout()
    with staged_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_outputs(result: dict, out: Any) -> dict[str, str]:
    """``OUT/e2e.json``, ``OUT/e2e.md`` and ``OUT/e2e.png``."""
    from pathlib import Path

    from tte2tee_fast.fsutil import write_json_atomic, write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "e2e.json", "md": out / "e2e.md", "png": out / "e2e.png"}
    write_json_atomic(files["json"], result)
    write_text_atomic(files["md"], markdown(result))
    plot(result, files["png"])
    return {k: str(v) for k, v in files.items()}
