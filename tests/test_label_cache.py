"""The label cache on its own (a stand-in label part that records its calls): hits by value,
least-recently-used order, the dropped batch's memory handed back, capacity per call, the
warning past its limit, and the memory limit."""

import warnings

import numpy as np
import pytest
from tte2tee_fast.export import label_cache
from tte2tee_fast.export.label_cache import LabelCache, cache_limit

EPS = {"variant": "eps"}


def _cache(limit: int) -> tuple[LabelCache, list]:
    calls: list = []

    def run(labels: np.ndarray, recycled: dict | None) -> dict:
        calls.append((int(labels[0, 0, 0]), recycled))
        return {"f": labels.astype(np.float32) * 2}

    return LabelCache(run, limit), calls


def _labels(v: int) -> np.ndarray:
    return np.full((2, 4, 4), v, dtype=np.int64)


def test_hits_by_value_not_by_identity() -> None:
    cache, _ = _cache(4)
    a = _labels(1)
    first = cache.lookup(a)
    assert cache.lookup(a.copy()) is first and cache.runs == 1
    a[0, 0, 0] = 7  # the caller reuses its array: the kept copy does not follow
    assert cache.lookup(a) is not first and cache.runs == 2
    np.testing.assert_array_equal(cache.lookup(a)["f"], a * 2)


def test_least_recently_used_and_recycled_memory() -> None:
    """Two batches per call: A|B, A|C, A|B keeps A (read by every call): 4 runs, FIFO 5."""
    cache, calls = _cache(4)
    cache.fit(2)
    a, b, c = _labels(1), _labels(2), _labels(3)
    kept = {}
    for second in (b, c, b):
        for y in (a, second):
            kept[int(y[0, 0, 0])] = cache.lookup(y)
    assert cache.runs == 4 and [v for v, _ in calls] == [1, 2, 3, 2]
    assert calls[2][1]["f"][0, 0, 0] == 4  # C overwrote B's memory (least recent then)
    assert calls[3][1]["f"][0, 0, 0] == 6  # B overwrote C's
    assert calls[0][1] is None and calls[1][1] is None  # room left: new memory


def test_fit_call_counts_engine_batches() -> None:
    cache, _ = _cache(4)
    sample = np.zeros((5, 1, 4, 4), np.float32)
    cache.fit_call(EPS, sample, None, batch=2)
    assert cache.capacity == 3  # 5 rows in batches of 2
    with pytest.warns(UserWarning, match="5 engine batches"):
        cache.fit_call(EPS, sample, 2.0, batch=2)
    assert cache.capacity == 4  # [labels; null]: 10 rows, 5 batches, at most the limit of 4
    cache.fit_call({"variant": "guided"}, sample, 2.0, batch=5)
    assert cache.capacity == 1  # a guided engine makes its null rows inside the graph
    cache.fit_call(EPS, np.zeros(3), None, batch=2)  # malformed: left to the runner's check
    assert cache.capacity == 1


def test_warns_once_past_its_limit() -> None:
    cache, _ = _cache(1)
    with pytest.warns(UserWarning, match="more than the label cache keeps"):
        cache.fit(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        cache.fit(3)
    assert cache.capacity == 1 and cache.warned


def test_cache_limit(monkeypatch) -> None:
    assert cache_limit(4, 2**20, "e.onnx") == 4
    assert cache_limit(0, 2**20, "e.onnx") == 0
    monkeypatch.setattr(label_cache, "LABEL_CACHE_BYTES", 3 * 2**20)
    assert cache_limit(4, 2**20, "e.onnx") == 3
    with pytest.warns(UserWarning, match="e.onnx: the label features .* whole graph"):
        assert cache_limit(4, 4 * 2**20, "e.onnx") == 0
