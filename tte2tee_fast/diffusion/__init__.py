"""Diffusion: noise schedule, samplers (plain functions), guidance and counter-based noise."""

from tte2tee_fast.diffusion.guidance import GuidedEps, NFECounter, cfg_eps_fn
from tte2tee_fast.diffusion.noise import NoiseSource, frame_noise
from tte2tee_fast.diffusion.samplers import SAMPLERS, get_sampler
from tte2tee_fast.diffusion.schedule import NoiseSchedule

__all__ = [
    "SAMPLERS",
    "GuidedEps",
    "NFECounter",
    "NoiseSchedule",
    "NoiseSource",
    "cfg_eps_fn",
    "frame_noise",
    "get_sampler",
]
