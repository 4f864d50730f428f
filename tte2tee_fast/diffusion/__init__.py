"""Diffusion: noise schedule, samplers (plain functions), guidance and counter-based noise.

The names below are imported on first use (PEP 562), so the torch-free modules of this package
(:mod:`~tte2tee_fast.diffusion.spacing`, :mod:`~tte2tee_fast.diffusion.plans`,
:mod:`~tte2tee_fast.diffusion.dense`, :mod:`~tte2tee_fast.diffusion.noise`) import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SAMPLERS": "samplers",
    "get_sampler": "samplers",
    "GuidedEps": "guidance",
    "NFECounter": "guidance",
    "cfg_eps_fn": "guidance",
    "NoiseSource": "noise",
    "frame_noise": "noise",
    "NoiseSchedule": "schedule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
