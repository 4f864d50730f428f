"""``tte2tee bench fewstep``: few-step samplers against unipc 10 and DDPM 1000 on held-out masks
and noise, with the converged ODE solution, structural fidelity, realism and region means.

Methods are named ``SAMPLER:STEPS`` (``unipc:4``: the grid of ``tte2tee generate``, trailing
from t = 999; ``ddpm:1000``: ancestral, trailing from t = 999 as the base papers sample)
or ``plan:FILE|NAME`` (a learned plan, ``tte2tee tune-plan``) or ``student:DIR`` (a distilled
student, ``tte2tee distill``: its adapter in place of the teacher's, run with its own plan; its
``rel_rmse`` is against the *teacher's* converged ODE). Every method runs on the same
backend, masks (phantom cases of ``mask_seed``, not those a plan was tuned on) and
counter-based noise. Per method:

- ``rel_rmse``: ``||x - x*|| / ||x*||`` of the raw sampler output against the converged solution
  ``x*`` of the same clamped ODE from the same ``x_T`` (the teacher of
  :mod:`tte2tee_fast.training.plan_tune`, unipc 200 steps); for DDPM (stochastic, another
  process) it is reported but is not an ODE error;
- fidelity: per-structure Dice of the packaged segmenter of the masks' schema against the
  conditioning masks, with the phantom's own frames of the same masks as the ceiling row;
- realism: KID on the segmenter's encoder features against phantom frames of other cases;
- region means: the largest relative difference of a structure's mean gray value from the
  phantom's frames of the same masks (outside the cone excluded);
- seconds per frame on this machine's backend (DDPM runs ``n_ddpm`` frames only).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.masks import to_uint8

BASELINES = ("ddpm:1000", "unipc:10")
FEW_NFES = (2, 3, 4, 6)


def default_methods(adapter: str | None) -> tuple[str, ...]:
    """DDPM 1000, unipc 10, and unipc plus the packaged learned plan and distilled student
    (``<model>-distill<K>``) of the packaged model (``phantom-tee`` adapter, or the bare
    ``phantom-tte`` base) at each of :data:`FEW_NFES`."""
    from tte2tee_fast.packaged import ASSETS, packaged_plans

    model = "phantom-tee" if adapter is not None else "phantom-tte"
    have = set(packaged_plans())
    plans = [f"plan:{model}-nfe{k}" for k in FEW_NFES if f"{model}-nfe{k}" in have]
    students = [
        f"student:{model}-distill{k}"
        for k in FEW_NFES
        if (ASSETS / f"{model}-distill{k}" / "plan.json").is_file()
    ]
    return (*BASELINES, *(f"unipc:{k}" for k in FEW_NFES), *plans, *students)


@dataclass(frozen=True)
class FewStepConfig:
    """What ``tte2tee bench fewstep`` runs."""

    methods: tuple[str, ...] = BASELINES
    n: int = 32  # held-out frames of every method but DDPM
    n_ddpm: int = 8  # frames of ddpm (1000 forwards each)
    n_real: int = 64  # phantom frames of other cases: the realism reference
    model: str | None = None
    adapter: str | None = "phantom-tee"
    mask_seed: int = 7  # phantom cases of the masks (plans are tuned on seed 1000)
    seed: int = 7  # noise seed
    teacher_steps: int = 200
    backend: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    segmenter: str | None = None
    teacher_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        for m in self.methods:
            parse_method(m)
        if self.n < 2 or not 1 <= self.n_ddpm <= self.n or self.n_real < 2:
            raise InputError("need n >= 2, 1 <= n_ddpm <= n and n_real >= 2 frames")


def parse_method(text: str) -> tuple[str, int | None]:
    """``("unipc", 4)``, ``("ddpm", 1000)``, ``("plan:FILE", None)`` or ``("student:DIR", None)``."""
    if text.startswith(("plan:", "student:")):
        return text, None
    name, _, steps = text.partition(":")
    from tte2tee_fast.diffusion import SAMPLERS

    if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
        raise InputError(
            f"method {text!r}: expected SAMPLER:STEPS (samplers: {', '.join(SAMPLERS)}), "
            "plan:FILE or student:DIR"
        )
    return name, int(steps)


def sample_config(method: str, seed: int, batch_size: int) -> Any:
    """The :class:`~tte2tee_fast.generate.sample.SampleConfig` of ``method`` (module docstring):
    ``tte2tee generate``'s grid for the deterministic samplers and plans."""
    from tte2tee_fast.generate.backends import FrameConfig
    from tte2tee_fast.generate.sample import SampleConfig

    name, steps = parse_method(method)
    if name == "ddpm":
        return SampleConfig("ddpm", steps, seed=seed, batch_size=batch_size)
    if name.startswith("student:"):
        name = f"plan:{student_plan_file(name)}"
    frame = FrameConfig(sampler=name, seed=seed, batch_size=batch_size)
    return (frame if steps is None else dataclasses.replace(frame, steps=steps)).sample_config()


def student_plan_file(method: str) -> Path:
    """The plan a ``student:DIR`` method runs: ``DIR/plan.json`` (refused when absent)."""
    from tte2tee_fast.generate.auto_sampler import ADAPTER_PLAN
    from tte2tee_fast.packaged import resolve_asset

    path = resolve_asset(method[len("student:") :]) / ADAPTER_PLAN
    if not path.is_file():
        raise InputError(f"{method}: {path} not found (not a folder written by tte2tee distill)")
    return path


def method_nfe(method: str) -> int:
    from tte2tee_fast.diffusion.dense import load_plan

    name, steps = parse_method(method)
    if name.startswith("student:"):
        return load_plan(student_plan_file(name)).nfe
    if steps is None:
        return load_plan(name[len("plan:") :]).nfe
    from tte2tee_fast.bench.samplers import model_calls

    return model_calls(name, steps)


def packaged_segmenter(schema: str) -> str:
    """The packaged segmenter of ``schema`` (``segmenter-tee``, ``segmenter-tte``)."""
    from tte2tee_fast.packaged import ASSETS

    name = f"segmenter-{schema}"
    if not (ASSETS / name / "config.json").is_file():
        raise InputError(
            f"no packaged segmenter for {schema!r} frames: train one (tte2tee evaluate segmenter "
            f"--data phantom-{schema} --schema {schema} --out DIR) and pass --segmenter DIR"
        )
    return name


def student_denoiser(config: FewStepConfig, method: str, teacher: dict) -> Any:
    """The denoiser of a ``student:DIR`` method on the bench's backend; refuses a student
    distilled from another network than the bench's (``teacher``: its identity)."""
    from tte2tee_fast.diffusion.dense import load_plan
    from tte2tee_fast.generate.backends import build_denoiser

    folder = method[len("student:") :]
    made = ((load_plan(student_plan_file(method)).source or {}).get("teacher") or {}).get("model")
    if (made or {}).get("merged_hash") != teacher.get("merged_hash"):
        raise InputError(
            f"{method}: distilled from another teacher (merged hash "
            f"{str((made or {}).get('merged_hash'))[:12]}) than the benched model "
            f"({str(teacher.get('merged_hash'))[:12]})"
        )
    return build_denoiser(
        config.model, folder, config.backend, config.precision, batch=config.batch_size
    )


def bench_fewstep(config: FewStepConfig, progress: bool = True) -> dict:
    """Run every method of ``config`` (module docstring) and return the result dict."""
    from tte2tee_fast.bench.e2e import fidelity_summary, phantom_pairs
    from tte2tee_fast.bench.samplers import machine_info
    from tte2tee_fast.evaluate.intensity import compare_regions, worst_region
    from tte2tee_fast.evaluate.realism import encoder_features, kernel_inception_distance
    from tte2tee_fast.evaluate.segment import load_segmenter
    from tte2tee_fast.generate.backends import build_denoiser, sample_frames
    from tte2tee_fast.generate.plan_fit import teacher_folder
    from tte2tee_fast.generate.shards import identity
    from tte2tee_fast.training.plan_tune import TeacherConfig, rel_rmse, teacher_trajectories

    den = build_denoiser(
        config.model, config.adapter, config.backend, config.precision, batch=config.batch_size
    )
    schema = den.spec.source
    masks, phantom = phantom_pairs(schema.name, den.size, config.n, config.mask_seed)
    _, real = phantom_pairs(schema.name, den.size, config.n_real, config.mask_seed + 1)
    seg = load_segmenter(config.segmenter or packaged_segmenter(schema.name))
    real_feats = encoder_features(seg, real)
    ident = identity(den.info)
    students = {  # built first: a student of another teacher is refused before any work
        m: student_denoiser(config, m, ident) for m in config.methods if m.startswith("student:")
    }

    teacher = TeacherConfig(
        steps=config.teacher_steps, seed=config.seed, batch_size=config.batch_size
    )
    labels = masks.astype(np.int64)
    folder = config.teacher_dir or teacher_folder(ident, teacher, labels)
    ode = teacher_trajectories(den, labels, teacher, folder, ident, progress).solution

    m = config.n_ddpm

    def row(name: str, family: str, nfe: int, images: np.ndarray, n: int, sec: float) -> dict:
        regions = compare_regions(images, phantom[:n], masks[:n], schema)
        kid = kernel_inception_distance(real_feats, encoder_features(seg, images), 50, 50)
        return {
            "method": name,
            "family": family,
            "nfe": nfe,
            "frames": n,
            "seconds_per_frame": sec / n,
            "fidelity": fidelity_summary(seg, images, masks[:n], schema, name),
            # the same frames as DDPM's (the first n_ddpm): the paired comparison with it
            "fidelity_ddpm_frames": fidelity_summary(seg, images[:m], masks[:m], schema, name)[
                "mean_dice"
            ],
            "kid": {"mean": kid[0], "std": kid[1]},
            "region_max_rel_diff": worst_region(regions),
            "regions": {k: v["generated"] for k, v in regions.items()},
        }

    rows = [row("phantom", "real", 0, phantom, config.n, 0.0)]
    rows[0]["rel_rmse"] = None
    for method in config.methods:
        name, _ = parse_method(method)
        n = config.n_ddpm if name == "ddpm" else config.n
        nfe = method_nfe(method)
        if progress:
            print(f"bench fewstep: {method} ({n} frames, {nfe} NFE)", flush=True)
        scfg = sample_config(method, config.seed, config.batch_size)
        run = students.get(method, den)
        lab = torch.from_numpy(labels[:n])
        t0 = time.perf_counter()
        raw = sample_frames(run, lab, torch.arange(n), scfg, clamp=False)  # [n, 1, S, S]
        sec = time.perf_counter() - t0
        family = "learned plan" if name.startswith("plan:") else f"{name} (trailing)"
        if name == "ddpm":
            family = "ddpm (ancestral)"
        elif name.startswith("student:"):
            family = "distilled student"
        r = row(method, family, nfe, to_uint8(raw.clamp(-1.0, 1.0)), n, sec)
        r["rel_rmse"] = rel_rmse(raw[:, 0].numpy(), ode[:n])
        r["stochastic"] = name in ("ddpm", "dpmpp_2m_sde")
        rows.append(r)
    return {
        "config": dataclasses.asdict(config),
        "machine": machine_info(torch.device("cpu")),
        "backend": den.info,
        "teacher": {"folder": str(folder), **dataclasses.asdict(teacher)},
        "rows": rows,
        "notes": [
            f"DDPM ran {config.n_ddpm} of the {config.n} frames: its fidelity is a smaller sample",
            f"rel_rmse: against the converged clamped ODE (unipc {config.teacher_steps}, "
            "trailing) from the same x_T; "
            "for DDPM, a stochastic sampler, it is not an ODE error",
            "KID: segmenter encoder features, against phantom frames of other cases",
        ],
    }


def markdown(result: dict) -> str:
    """One row per method: NFE, s/frame, rel-RMSE, Dice (mean and per structure), KID, regions."""
    rows = result["rows"]
    classes = list(rows[0]["fidelity"]["per_class"])
    head = ["method", "NFE", "frames", "s/frame", "rel-RMSE %", "mean Dice", *classes]
    head += [f"Dice on DDPM's {result['config']['n_ddpm']} frames"]
    head += ["KID x1e3", "max region rel. diff"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        rmse = "" if r["rel_rmse"] is None else f"{100 * r['rel_rmse']:.2f}"
        if r.get("stochastic"):
            rmse += " (stoch.)"
        cells = [
            r["method"],
            str(r["nfe"]),
            str(r["frames"]),
            f"{r['seconds_per_frame']:.3f}",
            rmse,
            f"{100 * r['fidelity']['mean_dice']['mean']:.1f}",
        ]
        cells += [f"{100 * r['fidelity']['per_class'][c]:.1f}" for c in classes]
        cells += [f"{100 * r['fidelity_ddpm_frames']['mean']:.1f}"]
        cells += [f"{1e3 * r['kid']['mean']:.2f} ± {1e3 * r['kid']['std']:.2f}"]
        cells += [f"{r['region_max_rel_diff']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Any) -> None:
    """Mean Dice against NFE per method family; DDPM 1000, unipc 10 and the phantom as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tte2tee_fast.fsutil import staged_file

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    families: dict[str, list[dict]] = {}
    for r in result["rows"]:
        families.setdefault(r["family"], []).append(r)
    for family, rs in families.items():
        rs = sorted(rs, key=lambda r: r["nfe"])
        dice = [100 * r["fidelity"]["mean_dice"]["mean"] for r in rs]
        if family == "real" or rs[0]["nfe"] >= 100:
            label = f"{rs[0]['method']} ({rs[0]['nfe']} NFE)" if family != "real" else "phantom"
            ax.axhline(dice[0], ls="--" if family == "real" else ":", lw=1, label=label, c="gray")
            continue
        ax.plot([r["nfe"] for r in rs], dice, marker="o", label=family)
    ax.set_xlabel("network evaluations per frame")
    ax.set_ylabel("mean Dice (segmenter vs mask)")
    ax.set_title("tte2tee bench fewstep")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with staged_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_outputs(result: dict, out: str | Path) -> dict[str, str]:
    """``OUT/fewstep.json``, ``OUT/fewstep.md`` and ``OUT/fidelity_vs_nfe.png``."""
    from tte2tee_fast.fsutil import write_json_atomic, write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "json": out / "fewstep.json",
        "md": out / "fewstep.md",
        "png": out / "fidelity_vs_nfe.png",
    }
    write_json_atomic(files["json"], result)
    write_text_atomic(files["md"], markdown(result))
    plot(result, files["png"])
    return {k: str(v) for k, v in files.items()}
