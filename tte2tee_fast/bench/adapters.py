"""Structural fidelity and realism of each adapter of ``tte2tee adapt --ablate`` (issue 15,
item 6): the loss alone cannot say whether a target preset draws the right heart right.

Every adapter of the ablation folder is merged into its base and samples the same held-out
phantom masks from the same counter-based noise with one sampler (default unipc 10 on
``tte2tee generate``'s trailing grid from t = 999: no learned plan fits a freshly trained
adapter, and one sampler for all keeps the comparison about the adapters). Per preset: mean
and per-structure Dice of the packaged segmenter of the adapter's schema against the masks,
KID against phantom frames of other cases (segmenter-encoder features), and the generated
against the phantom mean gray per structure (the region means of the same masks).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tte2tee_fast.adapt.train import ABLATION_JSON, ABLATION_MD
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class AdapterEvalConfig:
    """How every adapter of an ablation is sampled and scored."""

    n: int = 32  # held-out frames per adapter
    n_real: int = 64  # phantom frames of other cases: the KID reference
    mask_seed: int = 7  # phantom cases (adapters train on the default phantom seeds, not 7)
    seed: int = 7  # noise
    sampler: str = "unipc"
    steps: int = 10
    backend: str = "auto"
    precision: str = "auto"
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.n < 2 or self.n_real < 2:
            raise InputError(
                f"need at least 2 frames and 2 real frames, got {self.n}, {self.n_real}"
            )


def evaluate_adapter(
    base: str | None,
    adapter: str | Path,
    config: AdapterEvalConfig,
    references: dict[tuple[str, int], tuple[Any, Any]] | None = None,
) -> dict:
    """Fidelity, KID and region means of ``adapter`` merged into ``base`` (module docstring).

    ``references``: the segmenter and the real frames' encoder features per (schema, size),
    filled on first use, so adapters of one ablation share them."""
    from tte2tee_fast.bench.e2e import fidelity_summary, phantom_pairs
    from tte2tee_fast.bench.fewstep import packaged_segmenter
    from tte2tee_fast.evaluate.intensity import compare_regions, worst_region
    from tte2tee_fast.evaluate.realism import encoder_features, kernel_inception_distance
    from tte2tee_fast.evaluate.segment import load_segmenter
    from tte2tee_fast.generate.backends import FrameConfig, build_frame_fn

    frame = FrameConfig(
        model=base,
        adapter=str(adapter),
        sampler=config.sampler,
        steps=config.steps,
        seed=config.seed,
        backend=config.backend,
        precision=config.precision,
        batch_size=config.batch_size,
    )
    fn = build_frame_fn(frame)
    schema = fn.spec.source
    masks, phantom = phantom_pairs(schema.name, fn.size, config.n, config.mask_seed)
    refs = {} if references is None else references
    key = (schema.name, fn.size)
    if key not in refs:
        seg = load_segmenter(packaged_segmenter(schema.name))
        _, real = phantom_pairs(schema.name, fn.size, config.n_real, config.mask_seed + 1)
        refs[key] = (seg, encoder_features(seg, real))
    seg, real_feats = refs[key]
    images = fn(masks.astype(np.uint8), np.arange(config.n))  # [n, S, S] uint8
    subset = min(50, config.n, config.n_real)
    kid = kernel_inception_distance(real_feats, encoder_features(seg, images), subset, 50)
    regions = compare_regions(images, phantom, masks, schema)
    return {
        "fidelity": fidelity_summary(seg, images, masks, schema, Path(adapter).name),
        "kid": {"mean": kid[0], "std": kid[1]},
        "region_max_rel_diff": worst_region(regions),
        "regions": {
            k: {"generated": v["generated"], "phantom": v["reference"]} for k, v in regions.items()
        },
        "backend": fn.info.get("backend"),
        "precision": fn.info.get("precision"),
    }


def ablation_quality(out_dir: str | Path, config: AdapterEvalConfig, progress: bool = True) -> dict:
    """Score every adapter of the ablation in ``out_dir`` (its ``ablation.json``), add the
    numbers to each row and rewrite ``ablation.json`` and ``ablation.md``."""
    out = Path(out_dir)
    path = out / ABLATION_JSON
    if not path.is_file():
        raise InputError(f"{out} holds no {ABLATION_JSON}: run tte2tee adapt --ablate first")
    table = json.loads(path.read_text())
    base, references = table["config"].get("base"), {}
    for row in table["rows"]:
        if progress:
            print(f"ablation fidelity: {row['targets']} ({config.n} frames)", flush=True)
        row["quality"] = evaluate_adapter(base, out / row["adapter"], config, references)
    table["quality_config"] = asdict(config)
    write_json_atomic(path, table)
    md = (out / ABLATION_MD).read_text() if (out / ABLATION_MD).is_file() else ""
    write_text_atomic(out / ABLATION_MD, md.split("\n## Fidelity")[0] + quality_markdown(table))
    return table


def quality_markdown(table: dict) -> str:
    """The fidelity / realism table of an ablation whose rows carry ``quality``."""
    rows = [r for r in table["rows"] if "quality" in r]
    if not rows:
        return ""
    c = table["quality_config"]
    classes = list(rows[0]["quality"]["fidelity"]["per_class"])
    regions = [k for k in rows[0]["quality"]["regions"] if k != "outside"]
    lines = [
        "",
        "## Fidelity and realism per preset",
        "",
        f"{c['n']} held-out phantom masks (seed {c['mask_seed']}), noise seed {c['seed']}, "
        f"{c['sampler']} {c['steps']} steps, the same for every adapter; Dice of the packaged "
        "segmenter (%), KID x1e3 against phantom frames of other cases, mean gray generated / "
        "phantom per structure.",
        "",
        "| targets | mean Dice | "
        + " | ".join(classes)
        + " | KID x1e3 | "
        + " | ".join(regions)
        + " | max region rel. diff |",
        "|---|" + "---:|" * (len(classes) + len(regions) + 3),
    ]
    for r in rows:
        q = r["quality"]
        fid = q["fidelity"]
        cells = [f"{100 * fid['mean_dice']['mean']:.1f}"]
        cells += [f"{100 * fid['per_class'][k]:.1f}" for k in classes]
        cells.append(f"{1e3 * q['kid']['mean']:.2f} ± {1e3 * q['kid']['std']:.2f}")
        cells += [
            f"{q['regions'][k]['generated']:.1f} / {q['regions'][k]['phantom']:.1f}"
            for k in regions
        ]
        cells.append(f"{q['region_max_rel_diff']:.3f}")
        lines.append(f"| {r['targets']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
