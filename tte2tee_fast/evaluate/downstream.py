"""The downstream experiment of 2508.13077: does synthetic TEE improve segmentation when real
TEE frames are scarce?

Protocol (one call of :func:`run_downstream`):

1. **Split by case.** The real frames are grouped by case (a frame's case is its name up to the
   first ``"__"``, else the whole name: one frame per case, as for phantom frames); the cases
   are shuffled with ``split_seed`` and the first ``n_test`` frames' worth of cases form the
   fixed test set. No case is on both sides, and the test set is the same for every arm.
2. **Arms.** For each ``n_real`` and each synthetic ratio ``r``: ``n_real`` real training
   frames plus ``r * n_real`` synthetic frames (``r = 0``: real only). ``n_real = 0`` is the
   synthetic-only arm (``n_synthetic_only`` synthetic frames).
3. **Seeds.** Each arm is trained once per seed; seed ``s`` draws the real subset (nested: the
   first ``n_real`` of one seeded permutation of the training pool), the synthetic subset and
   the segmenter's own randomness, so arms of one seed share their real frames and the
   difference real+synthetic − real-only is *paired*.
4. **Scores.** Per-class Dice (LA, LV, RA, RV for TEE) on the test frames, mean ± std over seeds,
   and per paired difference its mean and 95 % t interval over seeds.

The synthetic frames keep their own (raw TEE) masks; both sets must be in one schema.
Outputs: ``report.json``, ``report.md`` (the table) and ``dice.png`` (bar plot) in one folder,
beside ``arms.jsonl``: every finished arm, appended as it finishes, so a killed run (the full
experiment is hours on 2 cores) continues where it stopped. The file's first line keys the
experiment (data bytes and every setting an arm's result depends on); a rerun into the same
folder reuses the arms of the same key (also to add seeds) and refuses a file of another key.

>>> run_downstream("phantom-tee", "runs/gen-tee", "runs/downstream", quick=True)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from tte2tee_fast.errors import InputError
from tte2tee_fast.evaluate.frames import Frames, load_frames
from tte2tee_fast.evaluate.segment import (
    SegmenterConfig,
    dice_per_class,
    predict,
    structure_names,
    train_segmenter,
)


@dataclass(frozen=True)
class DownstreamConfig:
    """Arms, seeds and the segmenter of the experiment (defaults: the full run)."""

    n_real: tuple[int, ...] = (0, 25, 50, 100, 200)
    ratios: tuple[int, ...] = (0, 1, 4)  # synthetic frames per real frame
    seeds: tuple[int, ...] = (0, 1, 2)
    n_test: int = 100
    n_synthetic_only: int = 200
    split_seed: int = 0
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)


QUICK = DownstreamConfig(
    n_real=(0, 25, 50),
    ratios=(0, 1, 4),
    seeds=(0, 1, 2),
    n_test=50,
    n_synthetic_only=100,
    segmenter=SegmenterConfig(size=64, steps=300),
)


def case_of(name: str) -> str:
    """The case a frame belongs to: its name up to the first ``"__"`` (else the whole name)."""
    return name.split("__", 1)[0]


def split_by_case(names: tuple[str, ...], n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``: whole cases, shuffled with ``seed``, go to the test set until it
    holds at least ``n_test`` frames."""
    cases = sorted({case_of(n) for n in names})
    order = np.random.default_rng(seed).permutation(len(cases))
    of_case = np.array([case_of(n) for n in names])
    test_cases: set[str] = set()
    count = 0
    for i in order:
        if count >= n_test:
            break
        test_cases.add(cases[i])
        count += int((of_case == cases[i]).sum())
    is_test = np.isin(of_case, sorted(test_cases))
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    if len(test) == 0 or len(train) == 0:
        raise InputError(
            f"cannot split {len(names)} real frames ({len(cases)} cases) into a test set of "
            f"{n_test} frames and a non-empty training pool"
        )
    return train, test


def _check_inputs(real: Frames, synthetic: Frames, cfg: DownstreamConfig) -> None:
    if (real.schema.names, real.schema.values) != (synthetic.schema.names, synthetic.schema.values):
        raise InputError(
            f"{synthetic.source}: synthetic frames are in schema {synthetic.schema.name!r}, the "
            f"real frames {real.source} in {real.schema.name!r}; both must share one schema"
        )
    a, b = Path(real.source), Path(synthetic.source)
    if a.exists() and b.exists() and a.resolve() == b.resolve():
        raise InputError(f"{synthetic.source}: the synthetic folder is the real folder")


def check_disjoint(train_names: list[str], test_names: list[str], where: str) -> None:
    """No case on both sides of the split."""
    both = sorted({case_of(n) for n in train_names} & {case_of(n) for n in test_names})
    if both:
        raise InputError(
            f"{where}: case {both[0]!r} is in the test set and in the real training set "
            f"({len(both)} shared cases); a test case must not be trained on"
        )


def _interval(diffs: np.ndarray) -> tuple[float, float, float, float]:
    """Mean, std and 95 % t interval over seeds of ``diffs [S]`` (NaN ignored)."""
    from scipy import stats

    d = diffs[np.isfinite(diffs)]
    if d.size == 0:
        return (float("nan"),) * 4
    mean = float(d.mean())
    if d.size < 2:
        return mean, float("nan"), float("nan"), float("nan")
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, d.size - 1)) * sd / np.sqrt(d.size)
    return mean, sd, mean - half, mean + half


def arms(cfg: DownstreamConfig) -> list[tuple[int, int]]:
    """``(n_real, ratio)`` of every arm: synthetic only for ``n_real = 0``, else each ratio."""
    out = []
    for n in cfg.n_real:
        out += [(0, -1)] if n == 0 else [(n, r) for r in cfg.ratios]
    return out


SYNTHETIC_SEED = 300  # phantom masks + noise of the embedded default's synthetic set


def synthetic_needed(cfg: DownstreamConfig) -> int:
    """Synthetic frames the arms of ``cfg`` draw at most (the pool they sample from)."""
    return max(cfg.n_synthetic_only, max(cfg.n_real) * max(cfg.ratios))


def default_synthetic(out: str | Path, cfg: DownstreamConfig, progress: bool = True) -> Path:
    """The embedded default's synthetic set: ``tte2tee generate --format png`` of the packaged
    base + ``phantom-tee`` on phantom TEE masks of seed 300 (other cases than the "real" seeds
    100 / 101), into ``out`` (resumable: a rerun reuses the finished shards)."""
    from tte2tee_fast.generate.backends import FrameConfig
    from tte2tee_fast.generate.run import DatasetConfig, generate_dataset

    dataset = DatasetConfig(masks="phantom:tee", n=synthetic_needed(cfg), format="png")
    generate_dataset(out, dataset, FrameConfig(seed=SYNTHETIC_SEED), progress=progress)
    return Path(out)


def run_downstream(
    real: str | Path,
    synthetic: str | Path,
    out: str | Path,
    quick: bool = False,
    cfg: DownstreamConfig | None = None,
    test: str | Path | None = None,
    schema: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run the experiment (module docstring) and write ``out/report.{json,md}`` + ``dice.png``.

    ``real``: a folder of image/mask pairs, or ``phantom-tee`` (phantom cases of seed 100: the test
    split plus twice the largest arm). ``synthetic``: a folder (``tte2tee generate --format png`` or
    ``tte2tee sample`` output). ``test``: a separate real test set (folder, or ``phantom-tee``:
    cases of seed 101) instead of the split of ``real``; no case may be in both.
    """
    from tte2tee_fast.fsutil import staged_folder, write_json_atomic, write_text_atomic

    cfg = cfg or (QUICK if quick else DownstreamConfig())
    size = cfg.segmenter.size
    syn_set = load_frames(synthetic, schema)
    # phantom "real" frames are drawn at the synthetic frames' size, so both reach the segmenter
    # through the same resize (a phantom rendered at 64 px has another speckle scale than a
    # 128 px frame shrunk to 64); the pool is twice the largest arm, so seeds draw other frames
    drawn = max(int(syn_set.images.shape[1]), 64)
    need = cfg.n_test + 2 * max(cfg.n_real)
    real_set = load_frames(
        real,
        schema,
        default_schema=syn_set.schema.name,
        n=None if Path(str(real)).exists() else need,
        seed=100,
        size=drawn,
    )
    cfg = replace(cfg, segmenter=replace(cfg.segmenter, schema=real_set.schema.name))
    _check_inputs(real_set, syn_set, cfg)
    if test is None:
        train_idx, test_idx = split_by_case(real_set.names, cfg.n_test, cfg.split_seed)
    else:  # a separate test folder: the real folder is all training pool
        test_set = load_frames(
            test,
            real_set.schema.name,
            n=None if Path(str(test)).exists() else cfg.n_test,
            seed=101,
            size=drawn,
        )
        _check_inputs(test_set, syn_set, cfg)
        check_disjoint(list(real_set.names), list(test_set.names), test_set.source)
        real_set = Frames(
            np.concatenate([_at(real_set.images, test_set.images.shape[1]), test_set.images]),
            np.concatenate([_at(real_set.masks, test_set.images.shape[1], True), test_set.masks]),
            real_set.names + test_set.names,
            real_set.schema,
            real_set.source,
        )
        n_pool = len(real_set) - len(test_set)
        train_idx, test_idx = np.arange(n_pool), np.arange(n_pool, len(real_set))
    check_disjoint(
        [real_set.names[i] for i in train_idx],
        [real_set.names[i] for i in test_idx],
        real_set.source,
    )
    if max(cfg.n_real) > len(train_idx):
        raise InputError(
            f"{real_set.source}: {len(train_idx)} real training frames after the test split, "
            f"the arms need up to {max(cfg.n_real)}"
        )
    structures = structure_names(real_set.schema)
    arms_path = Path(out) / ARMS_FILE
    key = experiment_key(cfg, real_set, syn_set)
    done = read_arms(arms_path, key)
    arms_path.parent.mkdir(parents=True, exist_ok=True)
    # rewritten whole, so a torn last line of a killed run is gone before the next append
    write_text_atomic(
        arms_path, "".join(json.dumps(r) + "\n" for r in [{"key": key}, *done.values()])
    )
    results = []
    total, count = len(cfg.seeds) * len(arms(cfg)), 0
    for seed in cfg.seeds:
        rng = np.random.default_rng([seed, 0xD0])
        real_order = train_idx[rng.permutation(len(train_idx))]
        syn_order = rng.permutation(len(syn_set))
        for n_real, ratio in arms(cfg):
            n_syn = cfg.n_synthetic_only if ratio < 0 else n_real * ratio
            n_syn = min(n_syn, len(syn_set))
            r_idx, s_idx = real_order[:n_real], syn_order[:n_syn]
            if n_real + n_syn == 0:
                raise InputError(f"arm n_real={n_real}, ratio={ratio}: empty training set")
            count += 1
            if (int(seed), n_real, ratio) in done:
                results.append(done[(int(seed), n_real, ratio)])
                continue
            t0 = time.perf_counter()
            images = np.concatenate(
                [_at(real_set.images[r_idx], size), _at(syn_set.images[s_idx], size)]
            )
            masks = np.concatenate(
                [_at(real_set.masks[r_idx], size, True), _at(syn_set.masks[s_idx], size, True)]
            )
            seg = train_segmenter(images, masks, replace(cfg.segmenter, seed=int(seed)))
            dice = dice_per_class(
                predict(seg, real_set.images[test_idx]), real_set.masks[test_idx], real_set.schema
            )
            row = {
                "seed": int(seed),
                "n_real": n_real,
                "ratio": ratio,
                "n_synthetic": n_syn,
                "dice": {s: float(np.nanmean(dice[:, k])) for k, s in enumerate(structures)},
                "real_frames": [real_set.names[i] for i in r_idx],
                "seconds": round(time.perf_counter() - t0, 3),
            }
            _append_line(arms_path, row)
            results.append(row)
            if log is not None:
                log(
                    f"[{count}/{total}] seed {seed} n_real {n_real} synthetic {n_syn}: "
                    + " ".join(f"{s} {100 * v:.1f}" for s, v in row["dice"].items())
                )
    report = _summarise(results, structures, cfg)
    report.update(
        {
            "real": real_set.source,
            "synthetic": syn_set.source,
            "schema": real_set.schema.name,
            "n_real_pool": len(train_idx),
            "n_test": len(test_idx),
            "n_synthetic_pool": len(syn_set),
            "test_cases": sorted({case_of(real_set.names[i]) for i in test_idx}),
            "config": asdict(cfg),
            "quick": bool(quick),
            "seconds": sum(
                float(r.get("seconds", 0.0)) for r in results
            ),  # every arm's, resumed too
            "resumed_arms": sum(1 for r in results if (r["seed"], r["n_real"], r["ratio"]) in done),
            "runs": results,
        }
    )
    with staged_folder(out) as tmp:
        tmp.mkdir()
        shutil.copyfile(arms_path, tmp / ARMS_FILE)
        write_json_atomic(tmp / "report.json", report)
        write_text_atomic(tmp / "report.md", format_markdown(report))
        plot_report(report, tmp / "dice.png")
    return report


ARMS_FILE = "arms.jsonl"


def experiment_key(cfg: DownstreamConfig, real: Frames, synthetic: Frames) -> dict:
    """What one arm's result depends on, besides its seed and its (n_real, ratio): the bytes and
    names of both sets and every setting except the lists of seeds, n_real and ratios."""
    h = hashlib.sha256()
    for arr in (real.images, real.masks, synthetic.images, synthetic.masks):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(json.dumps([list(real.names), list(synthetic.names)]).encode())
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("seeds", "n_real", "ratios")}
    return {"data_sha256": h.hexdigest(), "settings": settings}


def read_arms(path: Path, key: dict) -> dict[tuple[int, int, int], dict]:
    """Finished arms of ``path`` keyed ``(seed, n_real, ratio)``; a missing file gives none, a
    file of another experiment is refused, a torn last line (a killed write) is dropped."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    try:
        head = json.loads(lines[0])["key"] if lines else None
    except (ValueError, KeyError, TypeError):
        head = None
    if head != json.loads(json.dumps(key)):
        raise InputError(
            f"{path}: holds arms of another experiment (other frames or settings); "
            "remove it or choose another --out"
        )
    done = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except ValueError:
            break
        done[(row["seed"], row["n_real"], row["ratio"])] = row
    return done


def _append_line(path: Path, obj: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _at(arr: np.ndarray, size: int, labels: bool = False) -> np.ndarray:
    """Frames ``[N, H, W]`` resized to ``size`` (labels nearest, images bilinear), uint8."""
    from tte2tee_fast.evaluate.segment import prepare

    if arr.shape[1:] == (size, size) or len(arr) == 0:
        return arr.reshape(len(arr), size, size) if len(arr) == 0 else arr
    if labels:
        _, lab = prepare(np.zeros_like(arr), arr, size)
        return lab.numpy().astype(np.uint8)
    (img,) = prepare(arr, None, size)
    return np.clip(np.rint(img[:, 0].numpy() * 255.0), 0, 255).astype(np.uint8)


def _summarise(results: list[dict], structures: list[str], cfg: DownstreamConfig) -> dict:
    """Per arm: Dice mean ± std over seeds; per real+synthetic arm: paired difference."""
    table, diffs = [], []
    for n_real, ratio in arms(cfg):
        rows = [r for r in results if r["n_real"] == n_real and r["ratio"] == ratio]
        entry = {
            "n_real": n_real,
            "ratio": ratio,
            "n_synthetic": rows[0]["n_synthetic"],
            "seeds": len(rows),
        }
        for s in structures:
            v = np.array([r["dice"][s] for r in rows])
            entry[s] = {
                "mean": float(np.nanmean(v)),
                "std": float(np.nanstd(v, ddof=1)) if len(v) > 1 else float("nan"),
            }
        table.append(entry)
        if n_real > 0 and ratio > 0:
            base = {r["seed"]: r for r in results if r["n_real"] == n_real and r["ratio"] == 0}
            d_entry = {"n_real": n_real, "ratio": ratio}
            for s in structures:
                d = np.array(
                    [r["dice"][s] - base[r["seed"]]["dice"][s] for r in rows if r["seed"] in base]
                )
                mean, sd, lo, hi = _interval(d)
                d_entry[s] = {"mean": mean, "std": sd, "ci95": [lo, hi]}
            diffs.append(d_entry)
    return {"structures": structures, "table": table, "paired_difference": diffs}


def _arm_label(n_real: int, ratio: int) -> str:
    if ratio < 0:
        return "synthetic only"
    return "real only" if ratio == 0 else f"real + synthetic 1:{ratio}"


def format_markdown(report: dict) -> str:
    """The report's tables (Dice in %) as Markdown."""
    s = report["structures"]
    lines = [
        f"# Downstream segmentation: {report['real']} + {report['synthetic']}",
        "",
        f"Test set: {report['n_test']} real frames ({len(report['test_cases'])} cases, none in "
        f"training); seeds per arm: {len(report['config']['seeds'])}; Dice in % (mean ± std over seeds).",
        "",
        "| n_real | arm | synthetic frames | " + " | ".join(x.upper() for x in s) + " |",
        "|---|---|---|" + "---|" * len(s),
    ]
    for e in report["table"]:
        cells = [f"{100 * e[x]['mean']:.1f} ± {100 * e[x]['std']:.1f}" for x in s]
        lines.append(
            f"| {e['n_real']} | {_arm_label(e['n_real'], e['ratio'])} | "
            f"{e['n_synthetic']} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "Paired difference (real + synthetic − real only, same seed), Dice points, "
        "mean [95 % t interval over seeds]:",
        "",
        "| n_real | ratio | " + " | ".join(x.upper() for x in s) + " |",
        "|---|---|" + "---|" * len(s),
    ]
    for d in report["paired_difference"]:
        cells = [
            f"{100 * d[x]['mean']:+.1f} [{100 * d[x]['ci95'][0]:+.1f}, {100 * d[x]['ci95'][1]:+.1f}]"
            for x in s
        ]
        lines.append(f"| {d['n_real']} | 1:{d['ratio']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_report(report: dict, path: str | Path) -> None:
    """Grouped bars: Dice per structure for every arm, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, table = report["structures"], report["table"]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(table)), 3.5), dpi=100)
    width = 0.8 / len(s)
    x = np.arange(len(table))
    for k, name in enumerate(s):
        means = [100 * e[name]["mean"] for e in table]
        stds = [0 if np.isnan(e[name]["std"]) else 100 * e[name]["std"] for e in table]
        ax.bar(x + (k - (len(s) - 1) / 2) * width, means, width, yerr=stds, label=name.upper())
    ax.set_xticks(
        x,
        [
            f"{e['n_real']} real\n{_arm_label(e['n_real'], e['ratio']).replace('real + synthetic ', '+syn ')}"
            for e in table
        ],
        fontsize=7,
    )
    ax.set_ylabel("Dice (%)")
    low = min(100 * e[name]["mean"] for e in table for name in s)
    ax.set_ylim(max(0.0, 5.0 * np.floor(low / 5.0) - 5.0), 100)  # the differences stay visible
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
