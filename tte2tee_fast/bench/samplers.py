"""Sampler benchmark: error against a high-accuracy ODE reference, per NFE, and time per frame.

For every sampler and NFE budget, the same frames (same masks, same counter-based initial noise
``x_T``, same per-step noise for the stochastic samplers) are sampled through the plain loop
:func:`~tte2tee_fast.generate.sample.sample_batch`, and compared with a reference solution of the
same probability-flow ODE (same model, guidance, precision and ``x_T``), computed once per run.

NFE: one network evaluation of the whole batch (:class:`~tte2tee_fast.diffusion.NFECounter`); a
guided call (cond + uncond in one forward) costs 2. The step count of a sampler is the largest
whose cost fits the budget: ``steps = calls`` for single-evaluation samplers and
``steps = (calls + 1) // 2`` for Heun (``2 steps - 1`` evaluations, its last step is Euler), with
``calls = nfe // cost_per_call``; the NFE reported is the one counted while sampling, so Heun at
an even budget reports the odd NFE it really used.

Error (as in the DPM-Solver papers' comparisons against a converged solution)::

    rel_rmse = ||x - x_ref||_2 / ||x_ref||_2

over the whole batch (all frames and pixels flattened, float64), on the raw sampler output
(not clamped to [-1, 1] at the end).

Which ODE: by default the plain probability-flow ODE from ``t_max = 979`` (every run and the
reference start there, from the same ``x_T``). Not from t = 999, diffusers' start: there the
capped cosine schedule has alpha = 4.9e-5, a solver's first step multiplies the network's ε
error by alpha_next / alpha (~3e3 for a 10-step grid), and a trained ε-network's ODE solutions
are saturated noise at any NFE (measured on the tiny phantom model at 1,500 steps: every
sampler ~40 % rel-RMSE, the 200-NFE reference 19 % from the 100-NFE one; from t = 979 the same
reference is within 0.18 % of its 100-NFE self and dpmpp_2m converges 14 % -> 4.9 % -> 2.1 %
at 5 / 10 / 20 NFE). DPM-Solver cuts the cosine schedule the same way (t = 0.9946). That was
the phase-1 ε-network; the packaged v-prediction model converges from 999 as well, and
``tte2tee generate`` starts there (from 979 pure noise lacks the frame's mean and biases it
bright: RESULTS.md, 'Where the ODE starts'); ``t_max=999`` measures generate's ODE. ``clip``
solves instead the ODE whose data prediction is clamped to [-1, 1] (the thresholded ODE of the
DPM-Solver++ paper, how ``tte2tee sample`` samples; :mod:`tte2tee_fast.diffusion.clip`).

The reference is ``reference_sampler`` at ``reference_nfe`` (trailing spacing, the finest
uniform grid); its own error is estimated by the same formula between the
reference at half that NFE and the reference itself (an upper estimate for a convergent
high-order method). With ``bf16`` the model runs under bf16 autocast in every run, the reference
included: errors are then measured against the same-precision reference.

Stochastic samplers (``ddpm``, ``dpmpp_2m_sde``) do not solve the ODE: their rows are reported
against the same reference but marked stochastic and left out of the verdict (the deterministic
sampler reaching ``rel_rmse <= threshold`` at the fewest NFE). The paper's 1000-step ancestral
``ddpm`` is an extra row at 1000 NFE only when asked (``ddpm_full``): it costs more than all the
other rows together at the default budgets.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tte2tee_fast.diffusion import SAMPLERS, NFECounter, NoiseSchedule, cfg_eps_fn
from tte2tee_fast.diffusion.samplers import STOCHASTIC
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import staged_file, write_json_atomic, write_text_atomic
from tte2tee_fast.generate.sample import SampleConfig, sample_batch

DEFAULT_NFES = (5, 10, 20, 50)
# spacings whose first timestep is T - 1 (or t_max) for every step count: runs of different NFE
# then start from the same x_T at the same noise level (``leading`` does not: refused)
SPACINGS = ("trailing", "linspace", "karras")
REFERENCE_SAMPLERS = tuple(n for n in SAMPLERS if n not in STOCHASTIC)
REFERENCE_SPACING = "trailing"
DDPM_FULL_STEPS = 1000
FILES = {
    "json": "sampler_bench.json",
    "markdown": "sampler_bench.md",
    "plot": "error_vs_nfe.png",
    "grid": "samples_grid.png",
}


@dataclass(frozen=True)
class SamplerBenchConfig:
    """What to run: samplers, NFE budgets, the reference, sampling options."""

    samplers: tuple[str, ...] = tuple(SAMPLERS)
    nfes: tuple[int, ...] = DEFAULT_NFES
    spacing: str = "trailing"
    guidance: float = 1.0
    reference_sampler: str = "dpmpp_3m"
    reference_nfe: int = 500
    ddpm_full: bool = False  # extra ddpm row at 1000 NFE (the paper's ancestral sampling)
    bf16: bool = False
    seed: int = 0
    batch_size: int = 16
    threshold: float = 0.02  # rel-RMSE of the verdict
    grid_frames: int = 2  # frames per cell of the image grid
    clip: bool = False  # solve the ODE with the clamped data prediction (module docstring)
    t_max: int | None = 979  # first timestep of every run (None: T - 1); see module docstring
    rho: float = 7.0  # karras spacing of the benchmarked runs (the reference is trailing)
    t_min: int | None = None  # karras only: last grid timestep of the benchmarked runs; None: 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "samplers", tuple(self.samplers))
        object.__setattr__(self, "nfes", tuple(sorted(set(int(v) for v in self.nfes))))
        if not self.samplers:
            raise InputError("no samplers to benchmark")
        for name in self.samplers:
            _check_sampler(name, tuple(SAMPLERS), "sampler")
        _check_sampler(self.reference_sampler, REFERENCE_SAMPLERS, "reference sampler")
        if not self.nfes:
            raise InputError("no NFE budgets given")
        if self.nfes[0] < 1:
            raise InputError(f"NFE budgets must be >= 1, got {self.nfes[0]}")
        if self.spacing not in SPACINGS:
            raise InputError(
                f"spacing {self.spacing!r} is not supported by the sampler benchmark; choose one "
                f"of {list(SPACINGS)} (they start every step count at t_max, so all runs "
                "solve the same ODE from the same x_T)"
            )
        if not self.rho > 0.0:
            raise InputError(f"karras rho must be > 0, got {self.rho}")
        if self.t_min is not None and self.spacing != "karras":
            raise InputError(f"t_min applies to karras spacing only, not {self.spacing!r}")
        if not self.guidance >= 0.0:
            raise InputError(f"guidance scale must be >= 0, got {self.guidance}")
        if self.reference_nfe <= self.nfes[-1]:
            raise InputError(
                f"reference NFE {self.reference_nfe} must exceed the largest benchmarked NFE "
                f"{self.nfes[-1]} (use several times it, e.g. 500)"
            )
        if self.batch_size < 1 or self.grid_frames < 1:
            raise InputError("batch size and grid frames must be >= 1")
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"threshold must be a fraction in (0, 1), got {self.threshold}")


@dataclass(frozen=True)
class BenchRow:
    """One (sampler, NFE budget) measurement."""

    sampler: str
    target_nfe: int
    steps: int
    nfe: int  # counted while sampling (per batch; the same for every chunk)
    stochastic: bool
    rel_rmse: float
    ms_per_frame: float
    seconds: float


@dataclass(frozen=True)
class ReferenceInfo:
    """The reference solution: how it was computed and its own error estimate."""

    sampler: str
    spacing: str
    nfe: int
    steps: int
    half_nfe: int
    error_estimate: float  # rel_rmse(reference at half the NFE, reference)
    seconds: float


@dataclass(frozen=True)
class SamplerBenchResult:
    config: SamplerBenchConfig
    rows: tuple[BenchRow, ...]
    reference: ReferenceInfo
    best: BenchRow | None
    verdict: str
    machine: dict
    num_frames: int
    # the first grid_frames frames of every row, [k, 1, H, W] each, and of the reference
    frames: dict[tuple[str, int], torch.Tensor] = field(repr=False, compare=False)
    reference_frames: torch.Tensor = field(repr=False, compare=False)


def _check_sampler(name: str, valid: Sequence[str], what: str) -> None:
    if name not in valid:
        raise InputError(f"unknown {what} {name!r}; choose one of {list(valid)}")


def parse_samplers(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma list (``"heun,dpmpp_2m"``) -> sampler names; InputError on unknowns."""
    if text.strip() == "all":
        return tuple(SAMPLERS)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise InputError(f"--samplers {text!r}: give 'all' or a comma list of {list(SAMPLERS)}")
    for name in names:
        _check_sampler(name, tuple(SAMPLERS), "sampler")
    return names


def parse_nfes(text: str) -> tuple[int, ...]:
    """``"5,10,20,50"`` -> ``(5, 10, 20, 50)``; InputError naming a bad entry or one < 1."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = int(part)
        except ValueError:
            raise InputError(f"--nfe {text!r}: {part!r} is not an integer") from None
        if value < 1:
            raise InputError(f"--nfe {text!r}: NFE must be >= 1, got {value}")
        out.append(value)
    return tuple(out)


def nfe_per_call(guidance: float) -> int:
    """Cost of one eps call: 2 with classifier-free guidance (cond + uncond rows), else 1."""
    return cfg_eps_fn(_no_model, torch.zeros(1), guidance).nfe_per_call


def _no_model(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    raise AssertionError("nfe_per_call never calls the model")


def model_calls(sampler: str, steps: int) -> int:
    """Eps calls a sampler makes for ``steps`` steps (Heun: ``2 steps - 1``)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def steps_for_nfe(sampler: str, nfe: int, guidance: float, num_train_timesteps: int) -> int:
    """The largest step count whose cost fits ``nfe``; InputError if none or too many."""
    cost = nfe_per_call(guidance)
    calls = nfe // cost
    steps = (calls + 1) // 2 if sampler == "heun" else calls
    if steps < 1:
        raise InputError(
            f"NFE {nfe} is below the cost of one {sampler} step ({cost} NFE per call with "
            f"guidance {guidance})"
        )
    if steps > num_train_timesteps:
        raise InputError(
            f"NFE {nfe} needs {steps} {sampler} steps, more than the "
            f"{num_train_timesteps} timesteps from t_max down"
        )
    return steps


def rel_rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``||x - ref||_2 / ||ref||_2`` over all elements, in float64."""
    if x.shape != ref.shape:
        raise InputError(f"shapes differ: {tuple(x.shape)} vs reference {tuple(ref.shape)}")
    xd, rd = x.double().flatten(), ref.double().flatten()
    return float(torch.linalg.vector_norm(xd - rd) / torch.linalg.vector_norm(rd))


def sync(device: torch.device | str) -> None:
    """Wait for ``device``'s queued work (CUDA); nothing elsewhere. Before reading a clock."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def run_sampler(
    model: torch.nn.Module,
    cond: torch.Tensor,
    name: str,
    steps: int,
    config: SamplerBenchConfig,
    schedule: NoiseSchedule,
    spacing: str | None = None,
) -> tuple[torch.Tensor, int, float]:
    """Sample all frames ``[N, 1, H, W]`` (raw, float32, CPU) with ``steps`` steps of ``name``.

    Returns the frames, the NFE counted per batch and the wall time in seconds (frames stay on
    the device until the clock stops). ``cond`` ``[N, C, H, W]`` on the model's device.
    """
    spacing = spacing or config.spacing
    sconf = SampleConfig(
        sampler=name,
        steps=steps,
        spacing=spacing,
        guidance=config.guidance,
        seed=config.seed,
        clip=config.clip,  # the same ODE in every run, the reference included
        t_max=config.t_max,
        rho=config.rho,
        t_min=config.t_min if spacing == "karras" else None,  # the trailing reference ends at 0
        batch_size=config.batch_size,
        bf16=config.bf16,
    )
    n = cond.shape[0]
    outs, counted = [], set()
    sync(cond.device)
    start = time.perf_counter()
    for lo in range(0, n, config.batch_size):
        counter: list[NFECounter] = []

        def wrap(eps_fn, counter=counter):
            counter.append(NFECounter(eps_fn))
            return counter[0]

        hi = min(lo + config.batch_size, n)
        idx = torch.arange(lo, hi)  # frame indices: the counter-based noise of frames lo..hi-1
        outs.append(sample_batch(model, cond[lo:hi], idx, sconf, schedule, wrap, clamp=False))
        counted.add(counter[0].nfe)
    sync(cond.device)
    seconds = time.perf_counter() - start
    if len(counted) != 1:
        raise RuntimeError(f"{name}: batches of one run counted different NFEs {sorted(counted)}")
    return torch.cat(outs).float().cpu(), counted.pop(), seconds


def _plan(config: SamplerBenchConfig, T: int) -> list[tuple[str, int, int]]:
    """(sampler, target NFE, steps) of every row, in table order."""
    plan = [
        (name, nfe, steps_for_nfe(name, nfe, config.guidance, T))
        for name in config.samplers
        for nfe in config.nfes
    ]
    if config.ddpm_full and "ddpm" in config.samplers:  # every timestep from t_max down
        full = min(DDPM_FULL_STEPS, T)
        cost = nfe_per_call(config.guidance)
        plan.append(("ddpm", full * cost, full))
    return plan


def _verdict(
    rows: Sequence[BenchRow], reference: ReferenceInfo, threshold: float
) -> tuple[BenchRow | None, str]:
    ok = [r for r in rows if not r.stochastic and r.rel_rmse <= threshold]
    pct = f"{100 * threshold:g} %"
    if ok:
        best = min(ok, key=lambda r: (r.nfe, r.rel_rmse))
        ties = sorted({r.sampler for r in ok if r.nfe == best.nfe} - {best.sampler})
        text = (
            f"fewest NFE reaching rel-RMSE <= {pct}: {best.sampler} at {best.nfe} NFE "
            f"({100 * best.rel_rmse:.3g} %)"
        )
        if ties:
            text += f"; also at {best.nfe} NFE: {', '.join(ties)}"
    else:
        best = None
        text = f"no deterministic sampler reached rel-RMSE <= {pct} at the NFE budgets tested"
    if reference.error_estimate > threshold / 10:
        text += (
            f" (caution: the reference's own error estimate is "
            f"{100 * reference.error_estimate:.3g} %, not small against {pct}; "
            "raise the reference NFE)"
        )
    return best, text


def machine_info(device: torch.device) -> dict:
    """Torch version, device, CPU count and thread count of this run."""
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = platform.processor() or platform.machine()
    return info


@torch.no_grad()
def sampler_bench(
    model: torch.nn.Module,
    cond: torch.Tensor,
    config: SamplerBenchConfig,
    schedule: NoiseSchedule | None = None,
    progress: bool = True,
) -> SamplerBenchResult:
    """Run the benchmark for one-hot conditioning ``cond`` ``[N, C, H, W]`` (frames 0..N-1).

    ``model(x, t, cond) -> eps`` on ``cond``'s device (any callable module of that signature).
    """
    schedule = schedule or NoiseSchedule.cosine(1000)
    # the timesteps a run can use: 0 .. t_max
    T = schedule.num_train_timesteps if config.t_max is None else config.t_max + 1
    plan = _plan(config, T)
    ref_steps = steps_for_nfe(config.reference_sampler, config.reference_nfe, config.guidance, T)
    half_steps = steps_for_nfe(
        config.reference_sampler, config.reference_nfe // 2, config.guidance, T
    )
    n, k = cond.shape[0], min(config.grid_frames, cond.shape[0])
    bar = tqdm(total=len(plan) + 2, desc="sampler bench", disable=None if progress else True)

    # warm-up (lazy init, allocator, kernels): one step, not timed
    run_sampler(model, cond[:1], "ddim", 1, replace(config, batch_size=1), schedule)
    # reference at full and half resolution: the same ODE, solved finely
    ref_args = (model, cond, config.reference_sampler)
    bar.set_postfix_str(f"reference {config.reference_sampler} x{ref_steps}")
    ref, ref_nfe, ref_sec = run_sampler(*ref_args, ref_steps, config, schedule, REFERENCE_SPACING)
    bar.update()
    half, half_nfe, _ = run_sampler(*ref_args, half_steps, config, schedule, REFERENCE_SPACING)
    bar.update()
    reference = ReferenceInfo(
        sampler=config.reference_sampler,
        spacing=REFERENCE_SPACING,
        nfe=ref_nfe,
        steps=ref_steps,
        half_nfe=half_nfe,
        error_estimate=rel_rmse(half, ref),
        seconds=ref_sec,
    )
    frames: dict[tuple[str, int], torch.Tensor] = {}
    rows = []
    for name, target, steps in plan:
        bar.set_postfix_str(f"{name} {target} NFE")
        x, nfe, sec = run_sampler(model, cond, name, steps, config, schedule)
        expected = model_calls(name, steps) * nfe_per_call(config.guidance)
        if nfe != expected:
            raise RuntimeError(f"{name}: planned {expected} NFE for {steps} steps, counted {nfe}")
        rows.append(
            BenchRow(
                sampler=name,
                target_nfe=target,
                steps=steps,
                nfe=nfe,
                stochastic=name in STOCHASTIC,
                rel_rmse=rel_rmse(x, ref),
                ms_per_frame=1000.0 * sec / n,
                seconds=sec,
            )
        )
        frames[(name, target)] = x[:k]
        bar.update()
    bar.close()
    best, verdict = _verdict(rows, reference, config.threshold)
    return SamplerBenchResult(
        config=config,
        rows=tuple(rows),
        reference=reference,
        best=best,
        verdict=verdict,
        machine=machine_info(cond.device),
        num_frames=n,
        frames=frames,
        reference_frames=ref[:k],
    )


def markdown_table(result: SamplerBenchResult) -> str:
    """Rows = samplers, columns = NFE budgets; cells ``rel-RMSE % / ms per frame``."""
    cfg, ref = result.config, result.reference
    targets = sorted({r.target_nfe for r in result.rows})
    by_key = {(r.sampler, r.target_nfe): r for r in result.rows}
    lines = [
        "| sampler | " + " | ".join(f"NFE {t}" for t in targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for name in dict.fromkeys(r.sampler for r in result.rows):
        cells = []
        for t in targets:
            r = by_key.get((name, t))
            if r is None:
                cells.append("")
                continue
            cell = f"{100 * r.rel_rmse:.3g} % / {r.ms_per_frame:.3g} ms"
            cells.append(cell + (f" ({r.nfe} NFE)" if r.nfe != r.target_nfe else ""))
        label = f"{name} (stochastic)" if name in STOCHASTIC else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    m = result.machine
    spacing = cfg.spacing
    if cfg.spacing == "karras":
        spacing = f"karras (rho {cfg.rho:g}, down to t = {cfg.t_min or 0})"
    notes = [
        "",
        "Cells: rel-RMSE against the reference (||x - x_ref||_2 / ||x_ref||_2 over the batch) / "
        "wall time per frame. A cell's real NFE is shown where it differs from the budget "
        "(Heun: 2 steps - 1).",
        f"Reference: {ref.sampler} ({ref.spacing}) at {ref.nfe} NFE; its own error estimate "
        f"(vs. {ref.half_nfe} NFE) {100 * ref.error_estimate:.3g} %.",
        f"{result.num_frames} frames, spacing {spacing}, guidance {cfg.guidance:g}, "
        f"{'bf16 autocast (reference too)' if cfg.bf16 else 'fp32'}, "
        f"{'clamped data prediction (reference too)' if cfg.clip else 'plain ODE'}, "
        f"seed {cfg.seed}; "
        f"torch {m['torch']} on {m['device']} ({m['device_name']}), {m['cpu_count']} CPUs.",
        "",
        f"Verdict: {result.verdict}.",
    ]
    return "\n".join(lines + notes) + "\n"


def result_json(result: SamplerBenchResult) -> dict:
    """Everything but the frames, as JSON data."""
    return {
        "config": asdict(result.config),
        "machine": result.machine,
        "num_frames": result.num_frames,
        "metric": "rel_rmse = ||x - x_ref||_2 / ||x_ref||_2 over all frames and pixels "
        "(float64, unclamped sampler output)",
        "nfe_convention": "one NFE = one network evaluation of the batch; guided calls cost 2",
        "reference": asdict(result.reference),
        "rows": [asdict(r) for r in result.rows],
        "best": None if result.best is None else asdict(result.best),
        "verdict": result.verdict,
    }


def _check_out(out: str | os.PathLike) -> Path:
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {folder} exists and is not a folder")
    return folder


def write_outputs(result: SamplerBenchResult, out: str | os.PathLike) -> dict[str, Path]:
    """Write the JSON, Markdown table, error plot and image grid into folder ``out``."""
    from tte2tee_fast.bench.plots import plot_error_vs_nfe, plot_image_grid

    folder = _check_out(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {key: folder / name for key, name in FILES.items()}
    write_json_atomic(paths["json"], result_json(result))
    write_text_atomic(paths["markdown"], markdown_table(result))
    series = {}
    for r in result.rows:
        series.setdefault(r.sampler, []).append((r.nfe, r.rel_rmse))
    with staged_file(paths["plot"]) as tmp:
        plot_error_vs_nfe(
            tmp,
            series,
            stochastic=set(STOCHASTIC),
            threshold=result.config.threshold,
            reference_error=result.reference.error_estimate,
        )
    targets = sorted({r.target_nfe for r in result.rows})
    samplers = list(dict.fromkeys(r.sampler for r in result.rows))
    columns = [f"NFE {t}" for t in targets] + ["reference"]
    cells = {(name, f"NFE {t}"): x for (name, t), x in result.frames.items()}
    cells.update({(name, "reference"): result.reference_frames for name in samplers})
    with staged_file(paths["grid"]) as tmp:
        plot_image_grid(tmp, samplers, columns, cells)
    return paths


def bench_samplers(
    model_path: str | os.PathLike | None,
    masks: str,
    n: int,
    config: SamplerBenchConfig,
    out: str | os.PathLike,
    remap: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> tuple[SamplerBenchResult, dict[str, Path]]:
    """The ``tte2tee bench samplers`` job: load the model and masks, run, write the outputs.

    ``model_path`` None = the packaged weights; ``masks`` ``phantom-tte`` / ``phantom-tee`` or
    a folder (loaded at the model's sample size); ``remap`` a MaskR² spec (file or built-in
    name), default the identity of the masks' schema.
    """
    from tte2tee_fast.condition.maskr2 import MaskR2Spec, load_spec, remap_one_hot
    from tte2tee_fast.generate.masks import load_masks
    from tte2tee_fast.models import load_model
    from tte2tee_fast.packaged import resolve_model_path

    _check_out(out)  # before the long run
    try:
        dev = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        )
    except RuntimeError:
        raise InputError(
            f"--device {device!r} is not a device (auto, cpu, cuda, cuda:1, ...)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    model = load_model(resolve_model_path(model_path)).to(dev)
    batch = load_masks(masks, n=n, size=model.config.sample_size, seed=config.seed)
    spec = MaskR2Spec.identity(batch.schema) if remap is None else load_spec(remap)
    if spec.source.name != batch.schema.name:
        raise InputError(
            f"MaskR² spec {spec.name!r} reads {spec.source.name} masks but {masks} holds "
            f"{batch.schema.name} masks"
        )
    if spec.num_channels != model.config.label_channels:
        raise InputError(
            f"masks {masks} ({batch.schema.name}, spec {spec.name!r}) give {spec.num_channels} "
            f"channels but the model expects {model.config.label_channels}; pass --remap"
        )
    spec.check_labels(batch.labels, source=str(masks))
    cond = remap_one_hot(batch.labels.to(dev), spec)  # [N, C, H, W]
    result = sampler_bench(model, cond, config, progress=progress)
    return result, write_outputs(result, out)
