"""``--sampler auto``: the plan made for the model being run, else unipc.

The choice is measured, not assumed: the fewest-NFE packaged plan that keeps structural
fidelity within 1 Dice point of ancestral DDPM 1000 (issue 16's "equal fidelity") on both
packaged models and every region mean within 10 % of the phantom's. That is plan 3
(``benchmarks/RESULTS.md``, "Few-step benchmark at 64 frames" and "Three steps by default"):
on DDPM 1000's 16 frames 94.0 against 94.6 (TEE adapter) and 94.4 against 94.7 (TTE base),
where plan 4 scored 93.7 and 94.2; on 200 frames of ``generate`` the same Dice as plan 4
(92.67 [92.32, 93.01] against 92.68 [92.31, 93.01]) at 1.37x the frames/s (one run each).
What it gives up: it is 5.9 % from the converged ODE (plan 4: 3.2 %), a little realism (KID
0.00047 against 0.00041 ± 0.00004), and its largest region-mean error on the 64-frame
benchmark is 9.9 % (plan 4: 7.1 %). Plan 2 was not chosen: a TEE region mean 16.5 % off and
twice plan 3's KID. A plan only fits the network it was tuned on, so one is picked only when
its recorded ``source.model.merged_hash`` (and guidance) matches; any other model gets unipc at
the configured steps on the configured grid.

A distilled student (``tte2tee distill``) carries its own plan as ``plan.json`` in its adapter
folder: the student was trained for that plan, so ``auto`` takes it first (whatever its NFE)
when its recorded hash matches the network being run.
"""

from __future__ import annotations

from pathlib import Path

AUTO = "auto"
AUTO_NFE = 3  # the packaged plan size picked by `auto` (module docstring)
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
