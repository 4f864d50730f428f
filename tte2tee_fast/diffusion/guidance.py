"""Classifier-free guidance and model-evaluation counting.

``cfg_eps_fn(model_fn, cond, scale)`` turns the conditional network ``model_fn(x, t, cond)`` into
the ``eps_fn(x, t)`` every sampler takes: ``eps = eps_u + scale * (eps_c - eps_u)`` with the null
label ``zeros_like(cond)`` (what training's mask dropout feeds). Conditional and unconditional
halves go through the network in ONE batched forward (``2B`` rows); ``scale == 1`` is the plain
conditional model (one forward of ``B`` rows) and ``scale == 0`` the plain unconditional one.

NFE convention (:class:`NFECounter`): one *NFE* is one network evaluation of the whole batch, so
the count does not depend on batch size; a guided call that runs cond and uncond together costs
2 NFE (it is twice the network work of an unguided call), an unguided call 1. ``rows`` counts
the network rows actually processed (``B`` or ``2B`` per call), for throughput.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tte2tee_fast.errors import InputError

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t, cond) -> eps


@dataclass(frozen=True)
class GuidedEps:
    """``eps_fn(x, t)`` of a guided (or plain) conditional model; ``nfe_per_call`` is its cost."""

    model_fn: ModelFn
    cond: torch.Tensor  # [B, ...]
    scale: float
    both: torch.Tensor | None  # [2B, ...] cond then null label, built once; None if unguided
    null: torch.Tensor | None = None  # [B, ...] the null label (scale 0); None: zeros_like(cond)

    @property
    def nfe_per_call(self) -> int:
        return 1 if self.both is None else 2

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.both is None:
            null = torch.zeros_like(self.cond) if self.null is None else self.null
            c = self.cond if self.scale != 0.0 else null
            return self.model_fn(x, t, c)
        # one forward over [cond; uncond] rows
        eps_c, eps_u = self.model_fn(torch.cat([x, x]), torch.cat([t, t]), self.both).chunk(2)
        # extrapolate from the unconditional towards the conditional prediction
        return eps_u + self.scale * (eps_c - eps_u)


def cfg_eps_fn(
    model_fn: ModelFn, cond: torch.Tensor, scale: float, null: torch.Tensor | None = None
) -> GuidedEps:
    """Classifier-free guidance ``eps_u + scale (eps_c - eps_u)``; ``scale`` 1 = no guidance.

    ``null``: the unconditional input, default ``zeros_like(cond)`` (the all-zero one-hot); a
    model fed raw label maps takes a map of a value no spec maps (``-1``) instead."""
    scale = float(scale)
    if not scale >= 0.0:
        raise InputError(f"guidance scale must be >= 0, got {scale}")
    null = torch.zeros_like(cond) if null is None else null
    guided = scale not in (0.0, 1.0)
    both = torch.cat([cond, null]) if guided else None
    return GuidedEps(model_fn, cond, scale, both, null)


@dataclass
class NFECounter:
    """Wraps an ``eps_fn`` and counts its cost (see the module docstring for the convention)."""

    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    calls: int = field(default=0)
    nfe: int = field(default=0)
    rows: int = field(default=0)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cost = int(getattr(self.eps_fn, "nfe_per_call", 1))
        self.calls += 1
        self.nfe += cost
        self.rows += cost * x.shape[0]
        return self.eps_fn(x, t)

    def reset(self) -> None:
        self.calls = self.nfe = self.rows = 0
