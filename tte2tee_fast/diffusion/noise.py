"""Counter-based noise: the noise of frame ``i`` at sampler step ``k`` depends only on
``(seed, i, k)``, never on the batch it is generated in, its position there, the shard or the
backend.

Scheme (simple and exact): one CPU ``torch.Generator`` per (frame, step), seeded with a 63-bit
SplitMix64 hash of ``(seed, i, k)``, draws ``torch.randn(shape)`` in float32; the result is then
cast to the requested dtype and moved to the device. CPU generation makes the numbers identical on
every machine and backend (CUDA generators are not bit-compatible with CPU ones). Step ``-1`` is
the initial noise ``x_T``; step ``k >= 0`` the fresh noise of sampler step ``k``.

Cost: one small host generation per frame and step (about 1 ms per 256x256 frame); for stochastic
samplers inside a captured CUDA graph, copy ``NoiseSource(...)(k, x)`` into a static buffer
between replays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tte2tee_fast.errors import InputError

_M64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def frame_seed(seed: int, frame: int, step: int = -1) -> int:
    """The generator seed of ``(seed, frame, step)``: a 63-bit hash, stable across versions."""
    h = _splitmix64(seed & _M64)
    h = _splitmix64(h ^ (frame & _M64))
    h = _splitmix64(h ^ ((step + 1) & _M64))
    return h >> 1


def _as_index_list(frame_indices: torch.Tensor | Sequence[int]) -> list[int]:
    idx = torch.as_tensor(frame_indices)
    if idx.ndim != 1 or idx.is_floating_point():
        raise InputError(
            f"frame_indices must be a 1-D integer tensor, got shape {tuple(idx.shape)} "
            f"and dtype {idx.dtype}"
        )
    out = [int(v) for v in idx.tolist()]
    if any(v < 0 for v in out):
        raise InputError(f"frame indices must be >= 0, got {min(out)}")
    return out


def frame_noise(
    seed: int,
    frame_indices: torch.Tensor | Sequence[int],
    shape: Sequence[int],
    step: int = -1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise ``[B, *shape]``, row ``b`` a function of ``(seed, frame_indices[b], step)``."""
    rows = []
    for f in _as_index_list(frame_indices):
        g = torch.Generator(device="cpu")
        g.manual_seed(frame_seed(seed, f, step))
        rows.append(torch.randn(tuple(shape), generator=g, dtype=torch.float32))
    out = torch.stack(rows) if rows else torch.empty((0, *shape))
    return out.to(device=device, dtype=dtype)


@dataclass(frozen=True)
class NoiseSource:
    """Counter-based noise for one batch of frames; pass it to a sampler as ``noise=``.

    ``source.initial(shape)`` is the starting noise ``x_T`` ``[B, *shape]`` (step -1);
    ``source(k, like)`` the fresh noise of sampler step ``k``, shaped like ``like`` ``[B, ...]``.
    """

    seed: int
    frame_indices: tuple[int, ...]

    def __init__(self, seed: int, frame_indices: torch.Tensor | Sequence[int]) -> None:
        object.__setattr__(self, "seed", int(seed))
        object.__setattr__(self, "frame_indices", tuple(_as_index_list(frame_indices)))

    def initial(
        self,
        shape: Sequence[int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        return frame_noise(self.seed, self.frame_indices, shape, -1, device, dtype)

    def __call__(self, step: int, like: torch.Tensor) -> torch.Tensor:
        if like.shape[0] != len(self.frame_indices):
            raise InputError(
                f"NoiseSource holds {len(self.frame_indices)} frames but the batch has "
                f"{like.shape[0]}"
            )
        return frame_noise(
            self.seed, self.frame_indices, like.shape[1:], step, like.device, like.dtype
        )
