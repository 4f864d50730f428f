"""Conditioning-mask sources for sampling: the phantom (embedded default) or a data folder.

``load_masks("phantom-tee", n=8, size=128, seed=0)`` gives the label maps of phantom cases 0..7
of seed 0 together with the phantom's own images (a reference to compare generated frames
with); a folder path gives its first ``n`` pairs (``images/`` + ``masks/``, or CAMUS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tte2tee_fast.data.schemas import LabelSchema
from tte2tee_fast.errors import InputError

PHANTOM_SOURCES = ("phantom-tte", "phantom-tee")


@dataclass(frozen=True)
class MaskBatch:
    """``n`` label maps at one size, their schema, names and reference images."""

    labels: torch.Tensor  # [N, S, S] int64, values in `schema`
    images: torch.Tensor  # [N, 1, S, S] float in [-1, 1]: the real/phantom frames of these masks
    schema: LabelSchema
    names: tuple[str, ...]


def load_masks(source: str, n: int, size: int, seed: int = 0, view: str | None = None) -> MaskBatch:
    """The first ``n`` masks of ``source`` (``phantom-tte``, ``phantom-tee`` or a folder) at ``size``."""
    from tte2tee_fast.data.dataset import PairDataset, PhantomDataset, open_source

    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    if source in PHANTOM_SOURCES:
        dataset = PhantomDataset(source.split("-")[1], n=n, size=size, seed=seed, view=view)
        names = tuple(f"{source}_{seed}_{i:05d}" for i in range(n))
    else:
        src = open_source(source)
        if len(src) < n:
            raise InputError(f"{source}: holds {len(src)} pairs, fewer than --n {n}")
        dataset = PairDataset(src, size=size)
        names = tuple(src.names[:n])
    pairs = [dataset[i] for i in range(n)]
    images = torch.stack([p[0] for p in pairs])  # [N, 1, S, S]
    labels = torch.stack([p[1] for p in pairs])  # [N, S, S]
    return MaskBatch(labels=labels, images=images, schema=dataset.schema, names=names)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[N, 1, H, W]`` in [-1, 1] -> ``[N, H, W]`` uint8 (round half away, clipped)."""
    u8 = ((images[:, 0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return u8.cpu().numpy()
