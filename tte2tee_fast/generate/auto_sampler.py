"""``--sampler auto``: the plan made for the model being run, else unipc.

The choice is measured, not assumed (``benchmarks/RESULTS.md``, "Where the ODE starts"): on the
packaged base + ``phantom-tee`` the 4-NFE plan scores within 1 Dice point of ancestral DDPM
1000 on the same frames (93.6 against 94.4, 8 frames), keeps every region mean within 10 % of
the phantom's and is 2.5x faster than unipc 10; the 2- and 3-NFE plans are faster still but
were not chosen (NFE 2: a region 12 % off; NFE 3: 6 % from the ODE against plan 4's 3 %). A
plan only fits the network it was tuned on, so one is picked only when its recorded
``source.model.merged_hash`` (and guidance) matches; any other model gets unipc at the
configured steps on the configured grid.

A distilled student (``tte2tee distill``) carries its own plan as ``plan.json`` in its adapter
folder: the student was trained for that plan, so ``auto`` takes it first (whatever its NFE)
when its recorded hash matches the network being run.
"""

from __future__ import annotations

from pathlib import Path

AUTO = "auto"
AUTO_NFE = 4  # the packaged plan size picked by `auto` (module docstring)
FALLBACK = "unipc"
ADAPTER_PLAN = "plan.json"  # the plan a distilled adapter folder carries


def _made_for(path: Path, merged_hash: str, guidance: float) -> bool:
    from tte2tee_fast.diffusion.dense import load_plan

    made_for = (load_plan(path).source or {}).get("model") or {}
    return made_for.get("merged_hash") == merged_hash and made_for.get("guidance") == guidance


def packaged_plan_for(merged_hash: str, nfe: int, guidance: float = 1.0) -> str | None:
    """Name of the packaged ``nfe``-step plan tuned for the network of ``merged_hash`` at
    ``guidance``, or None."""
    from tte2tee_fast.packaged import packaged_plans, plan_file

    for name in packaged_plans():
        if name.endswith(f"-nfe{nfe}") and _made_for(plan_file(name), merged_hash, guidance):
            return name
    return None


def auto_sampler(
    merged_hash: str | None, guidance: float = 1.0, adapter_dir: str | Path | None = None
) -> str:
    """``plan:FILE`` of the plan in ``adapter_dir`` (a distilled student's), else ``plan:NAME``
    of the packaged :data:`AUTO_NFE`-step plan, made for the network of ``merged_hash`` at
    ``guidance``; else :data:`FALLBACK`."""
    if merged_hash is None:
        return FALLBACK
    if adapter_dir is not None:
        own = Path(adapter_dir) / ADAPTER_PLAN
        if own.is_file() and _made_for(own, merged_hash, guidance):
            return f"plan:{own}"
    name = packaged_plan_for(merged_hash, AUTO_NFE, guidance)
    return FALLBACK if name is None else f"plan:{name}"
