"""A cheap, deterministic stand-in for the backend's frame function (the generation tests'
fake), and tests that it is a fair stand-in: a pure function of (seed, frame index, mask).

Other ``test_generate_*`` files import ``FakeFrameFn``, ``fake_config`` and ``read_tree`` from
here (pytest puts the tests folder on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from tte2tee_fast.condition.maskr2 import builtin_spec
from tte2tee_fast.generate.backends import FrameConfig


def fake_config(**overrides) -> FrameConfig:
    return FrameConfig(**{"backend": "fake", "precision": "fp32", **overrides})


class FakeFrameFn:
    """images[b] = bytes of sha256(seed, frame index, mask) tiled to ``[size, size]``."""

    def __init__(self, seed: int = 0, size: int = 32, schema: str = "tee", delay: float = 0.0):
        self.seed, self.size, self.delay = int(seed), int(size), float(delay)
        self.spec = builtin_spec("tee->tte" if schema == "tee" else f"{schema}->{schema}")
        self.info = {
            "backend": "fake",
            "precision": "fp32",
            "sampler": "unipc",
            "steps": 10,
            "model_hash": "0" * 64,
            "adapter_hash": None,
        }
        self.calls: list[list[int]] = []

    def __call__(self, labels: np.ndarray, frames: np.ndarray) -> np.ndarray:
        assert labels.shape[1:] == (self.size, self.size) and labels.dtype == np.uint8
        self.calls.append([int(f) for f in frames])
        if self.delay:
            time.sleep(self.delay)
        out = np.empty((len(frames), self.size, self.size), np.uint8)
        for b, (mask, i) in enumerate(zip(labels, frames, strict=True)):
            h = hashlib.sha256(f"{self.seed}:{int(i)}:".encode() + mask.tobytes()).digest()
            tile = np.frombuffer(h, np.uint8)  # [32]
            out[b] = np.resize(tile, (self.size, self.size)) // 2 + mask * 20
        return out


def fake_factory(seed: int = 0, size: int = 32, delay: float = 0.0):
    return FakeFrameFn(seed, size, delay=delay)


def read_tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    root = Path(root)
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_fake_is_a_pure_function_of_seed_index_and_mask():
    masks = np.random.default_rng(0).integers(0, 6, (4, 32, 32), dtype=np.uint8)
    frames = np.array([5, 6, 7, 8])
    a = FakeFrameFn(seed=1)(masks, frames)
    # one frame at a time, in another order: the same images
    b = np.stack(
        [FakeFrameFn(seed=1)(masks[k : k + 1], frames[k : k + 1])[0] for k in (2, 0, 3, 1)]
    )
    np.testing.assert_array_equal(a[[2, 0, 3, 1]], b)
    assert not np.array_equal(a, FakeFrameFn(seed=2)(masks, frames))
    assert not np.array_equal(a[0], FakeFrameFn(seed=1)(masks[:1], frames[1:2])[0])
