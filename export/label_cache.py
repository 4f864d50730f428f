"""The label cache of a split engine: the label part's outputs for the last few label batches.

A split engine (:mod:`~tte2tee_fast.export.ov_split` for OpenVINO,
:mod:`~tte2tee_fast.export.onnx_split` for ONNX Runtime) runs its label part once per label
batch and its step part at every call. A sampler calls with the same labels at every step, so
the runner keeps the label part's outputs of as many label batches as one call has engine
batches (classifier-free guidance: two, the labels and the null labels), least recently used
dropped, at most ``limit`` batches and at most :data:`LABEL_CACHE_BYTES` in all. Labels are
compared by value against a copy, so a caller may reuse its array.

Example::

    cache = LabelCache(lambda labels, recycled: run_label_part(labels), limit=4)
    cache.fit_call(meta, sample, guidance, batch)  # as many batches as this call runs
    features = cache.lookup(labels)        # {name: array}, run now unless kept
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from tte2tee_fast.export.engine_io import stacks_null_rows

LABEL_CACHE_BYTES = 2 << 30  # 2 GiB: at most this much label features kept per runner

# (labels [B, H, W], the features of a dropped batch to overwrite or None) -> {name: features}
LabelRun = Callable[[np.ndarray, "dict | None"], dict]


def cache_limit(label_cache: int, nbytes: int, path: str) -> int:
    """How many label batches of ``nbytes`` to keep: at most ``label_cache``, at most
    :data:`LABEL_CACHE_BYTES` in all; 0 (with a warning) when one batch is over that."""
    limit = min(int(label_cache), LABEL_CACHE_BYTES // max(1, nbytes))
    if label_cache > 0 and limit < 1:
        warnings.warn(
            f"{path}: the label features of one engine batch take {nbytes / 2**20:.1f} MiB, "
            f"more than the label cache's {LABEL_CACHE_BYTES / 2**20:.1f} MiB: the whole graph "
            "runs at every call",
            UserWarning,
            stacklevel=3,
        )
    return max(0, limit)


class LabelCache:
    """The label part's outputs for the last ``capacity`` label batches, least recently used
    dropped. :meth:`fit` sets ``capacity`` to the engine batches of one call, at most
    ``limit``; ``run(labels, recycled)`` computes one batch's features (``recycled``: those of
    the batch it replaces, whose memory it may overwrite, or None)."""

    def __init__(self, run: LabelRun, limit: int) -> None:
        self.run, self.limit, self.capacity = run, int(limit), 1
        self.entries: list[tuple[np.ndarray, dict]] = []  # (labels copy, features)
        self.runs = 0  # label-part runs so far
        self.warned = False

    def fit(self, chunks: int, stacklevel: int = 3) -> None:
        """Keep ``chunks`` label batches from now on (at most ``limit``); the least recent beyond
        that are dropped at the next :meth:`lookup` (not here: the batch a shrinking call needs
        may be among them)."""
        if chunks > self.limit and not self.warned:
            self.warned = True
            warnings.warn(
                f"a call of {chunks} engine batches is more than the label cache keeps "
                f"({self.limit}): the label part runs at every step (raise label_cache, or "
                "call with fewer rows)",
                UserWarning,
                stacklevel=stacklevel,
            )
        self.capacity = max(1, min(chunks, self.limit))

    def fit_call(self, meta: dict, sample: Any, guidance: float | None, batch: int) -> None:
        """:meth:`fit` to the engine batches (of static size ``batch``) of a call on ``sample``
        ``[B, 1, H, W]`` (with ``[labels; null]`` rows where the engine stacks them); a
        malformed sample is left to the runner's error line."""
        if getattr(sample, "ndim", 0) == 4:
            rows = sample.shape[0] * (2 if stacks_null_rows(meta, guidance) else 1)
            self.fit(-(-rows // batch), stacklevel=4)  # the runner's caller

    def lookup(self, labels: np.ndarray) -> dict:
        """``{name: features}`` of ``labels`` (``[B, H, W]``), run now unless kept."""
        for i, (kept, features) in enumerate(self.entries):
            if kept.shape == labels.shape and np.array_equal(kept, labels):
                self.entries.append(self.entries.pop(i))
                del self.entries[: max(0, len(self.entries) - self.capacity)]
                return features
        recycled: dict[str, Any] | None = None
        if len(self.entries) >= self.capacity:
            recycled = self.entries[0][1]  # the least recent: its memory may be reused
            del self.entries[: len(self.entries) - self.capacity + 1]
        features = self.run(labels, recycled)
        self.runs += 1
        self.entries.append((np.array(labels, copy=True), features))
        return features
