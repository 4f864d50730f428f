"""Counter-based noise: the noise of frame ``i`` at sampler step ``k`` depends only on
``(seed, i, k)``, never on the batch it is generated in, its position there, the shard or the
backend.

Scheme (simple and exact, one definition for torch and numpy): one numpy ``Philox`` generator per
(frame, step), keyed with a 63-bit SplitMix64 hash of ``(seed, i, k)``, draws
``standard_normal(shape, float32)`` on the host; the torch path wraps those very numbers
(``torch.from_numpy``), then casts to the requested dtype and moves them to the device. So the
torch pipeline and the torch-free runtime (``tte2tee_fast.export.runtime``, numpy only) start
from the same bits on every machine and backend. Step ``-1`` is the initial noise ``x_T``; step
``k >= 0`` the fresh noise of sampler step ``k``. This module imports torch only inside the
torch functions.

Cost: one small host generation per frame and step (well under 1 ms per 128x128 frame); for stochastic
samplers inside a captured CUDA graph, copy ``NoiseSource(...)(k, x)`` into a static buffer
between replays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tte2tee_fast.errors import InputError

if TYPE_CHECKING:
    import torch

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


def _as_index_list(frame_indices: Any) -> list[int]:
    if hasattr(frame_indices, "detach"):  # a torch tensor
        frame_indices = frame_indices.detach().cpu().numpy()
    idx = np.asarray(frame_indices)
    if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
        raise InputError(
            f"frame_indices must be a 1-D integer tensor, got shape {tuple(idx.shape)} "
            f"and dtype {idx.dtype}"
        )
    out = [int(v) for v in idx.tolist()]
    if any(v < 0 for v in out):
        raise InputError(f"frame indices must be >= 0, got {min(out)}")
    return out


def frame_noise_np(
    seed: int, frame_indices: Sequence[int] | np.ndarray, shape: Sequence[int], step: int = -1
) -> np.ndarray:
    """Standard normal noise ``[B, *shape]`` float32, row ``b`` a function of
    ``(seed, frame_indices[b], step)`` only (numpy Philox, no torch)."""
    shape = tuple(int(d) for d in shape)
    out = np.empty(
        (0, *shape) if not len(frame_indices) else (len(frame_indices), *shape), np.float32
    )
    for b, f in enumerate(_as_index_list(frame_indices)):
        gen = np.random.Generator(np.random.Philox(key=frame_seed(seed, f, step)))
        out[b] = gen.standard_normal(shape, dtype=np.float32)
    return out


def frame_noise(
    seed: int,
    frame_indices: torch.Tensor | Sequence[int],
    shape: Sequence[int],
    step: int = -1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """:func:`frame_noise_np` as a torch tensor (the same bits in float32), cast to ``dtype``
    (default float32) on ``device``."""
    import torch

    z = torch.from_numpy(frame_noise_np(seed, _as_index_list(frame_indices), shape, step))
    return z.to(device=device, dtype=dtype or torch.float32)


@dataclass(frozen=True)
class NoiseSource:
    """Counter-based noise for one batch of frames; pass it to a sampler as ``noise=``.

    ``source.initial(shape)`` is the starting noise ``x_T`` ``[B, *shape]`` (step -1);
    ``source(k, like)`` the fresh noise of sampler step ``k``, shaped like ``like`` ``[B, ...]``.
    """

    seed: int
    frame_indices: tuple[int, ...]

    def __init__(self, seed: int, frame_indices: Any) -> None:
        object.__setattr__(self, "seed", int(seed))
        object.__setattr__(self, "frame_indices", tuple(_as_index_list(frame_indices)))

    def initial(
        self,
        shape: Sequence[int],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
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
