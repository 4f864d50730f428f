"""``--sampler auto``: the packaged learned plan fitted to the model being run, else unipc.

The choice is measured, not assumed (``benchmarks/RESULTS.md``, "Where the ODE starts"): on the
packaged base + ``phantom-tee`` the 4-NFE plan scores within 1 Dice point of ancestral DDPM
1000 on the same frames (93.6 against 94.4, 8 frames), keeps every region mean within 10 % of
the phantom's and is 2.5x faster than unipc 10; the 2- and 3-NFE plans are faster still but
were not chosen (NFE 2: a region 12 % off; NFE 3: 6 % from the ODE against plan 4's 3 %). A
plan only fits the network it was tuned on, so one is picked only when its recorded
``source.model.merged_hash`` (and guidance) matches; any other model gets unipc at the
configured steps on the configured grid.
"""

from __future__ import annotations

AUTO = "auto"
AUTO_NFE = 4  # the packaged plan size picked by `auto` (module docstring)
FALLBACK = "unipc"


def auto_sampler(merged_hash: str | None, guidance: float = 1.0) -> str:
    """``plan:NAME`` of the packaged :data:`AUTO_NFE`-step plan tuned for the network of
    ``merged_hash`` at ``guidance``, else :data:`FALLBACK`."""
    from tte2tee_fast.diffusion.dense import load_plan
    from tte2tee_fast.packaged import packaged_plans, plan_file

    if merged_hash is None:
        return FALLBACK
    for name in packaged_plans():
        if not name.endswith(f"-nfe{AUTO_NFE}"):
            continue
        made_for = (load_plan(plan_file(name)).source or {}).get("model") or {}
        if made_for.get("merged_hash") == merged_hash and made_for.get("guidance") == guidance:
            return f"plan:{name}"
    return FALLBACK
