"""pytest-benchmark setup of the ``benchmarks/`` suites: collection, the size switch, ratios.

    pytest benchmarks --benchmark-only                           # full size (packaged model)
    TTE2TEE_BENCH_SIZE=smoke pytest benchmarks --benchmark-only  # micro model, 32², batch 2
    TTE2TEE_BENCH_SIZE=smoke pytest benchmarks --benchmark-disable -q   # CI: each body once

- Collection: files named ``bench_*.py`` are test modules here (pytest's default pattern is
  ``test_*.py``), and ``--benchmark-only`` wins over the ``--benchmark-disable`` of the
  project's ``addopts`` (pytest-benchmark refuses the two together).
- Size (``TTE2TEE_BENCH_SIZE``): ``full`` (default) runs the packaged ``phantom-tte`` base with
  the ``phantom-tee`` adapter at its 128², batch 8, 10 NFE, 8 frames; ``smoke`` a ``micro``
  model with random weights (32², identity TTE spec, no adapter), batch 2, 4 NFE, 2 frames, one
  torch thread and a throw-away engine cache. In ``smoke`` the tests that do not take the
  ``bench_size`` fixture (fixed sizes: bench_model, bench_phantom, bench_kernels*) are
  deselected: they are collected (their imports checked) but not run.
- Device (``TTE2TEE_BENCH_DEVICE``): ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
- Ratios: a test sets ``benchmark.group`` and, for the group's baseline,
  ``benchmark.extra_info["baseline"] = True``; at the end every benchmark of the group gets
  ``extra_info["vs_baseline"]`` = baseline min time / its min time (> 1: faster than the
  baseline), measured in this process, in the ``--benchmark-json`` file and on the terminal.
  Never a timing assertion.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

SIZES = ("smoke", "full")
SIZE = os.environ.get("TTE2TEE_BENCH_SIZE", "full")
if SIZE not in SIZES:
    raise pytest.UsageError(f"TTE2TEE_BENCH_SIZE={SIZE!r}: choose one of {list(SIZES)}")
if SIZE == "smoke":
    # micro tensors are tiny: more threads only add OpenMP barrier stalls on a busy machine
    torch.set_num_threads(1)
    os.environ.setdefault("TTE2TEE_CACHE", tempfile.mkdtemp(prefix="tte2tee-bench-cache-"))


@dataclass(frozen=True)
class BenchSize:
    """What one size runs: the model (``None``: the packaged base), adapter, batch, NFE, frames."""

    name: str
    model: str | None
    adapter: str | None
    batch: int
    nfe: int
    frames: int
    device: str
    rounds: int  # rounds of the slow suites (benchmark.pedantic)
    warmup: int  # their warm-up rounds

    def sync(self) -> None:
        """Wait for the device, so a timed call includes its kernels."""
        from tte2tee_fast.bench.samplers import sync

        sync(self.device)


def bench_device() -> str:
    """``TTE2TEE_BENCH_DEVICE``: auto (CUDA when present), cpu or cuda."""
    device = os.environ.get("TTE2TEE_BENCH_DEVICE", "auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise pytest.UsageError(f"TTE2TEE_BENCH_DEVICE={device}: no CUDA device is available")
    return device


@pytest.fixture(scope="session")
def bench_size(tmp_path_factory) -> BenchSize:
    device = bench_device()
    if SIZE == "full":
        return BenchSize("full", None, "phantom-tee", 8, 10, 8, device, 3, 1)
    from tte2tee_fast.bench.denoiser import load_bench_model
    from tte2tee_fast.models import save_model

    model, _ = load_bench_model(None, "micro")  # random weights, zero layers re-drawn
    folder = save_model(model, tmp_path_factory.mktemp("bench") / "micro")
    return BenchSize("smoke", str(folder), None, 2, 4, 2, device, 1, 0)


@pytest.fixture(scope="session")
def bench_labels(bench_size):
    """``labels(spec, n, size)``: ``n`` label maps ``[n, size, size]`` int64 of the spec's source
    schema (random values: the timing does not depend on anatomy), the same every call."""

    def labels(spec, n: int, size: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        values = torch.tensor(sorted(spec.source.values))
        return values[torch.randint(0, len(values), (n, size, size), generator=gen)]

    return labels


# ----------------------------------------------------------------------------- collection


def pytest_collect_file(file_path: Path, parent):
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)  # given on the command line: collected
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config) -> None:
    if config.getoption("benchmark_only", False):
        config.option.benchmark_enable = True  # over the addopts' --benchmark-disable


def pytest_collection_modifyitems(config, items) -> None:
    if SIZE != "smoke":
        return
    fixed = [i for i in items if "bench_size" not in getattr(i, "fixturenames", ())]
    if fixed:
        config.hook.pytest_deselected(items=fixed)
        items[:] = [i for i in items if i not in fixed]


# ----------------------------------------------------------------------------- ratios


def _ratios(benchmarks) -> dict[str, dict[str, float]]:
    """``{group: {name: baseline min / min}}`` for the groups that have a baseline."""
    out: dict[str, dict[str, float]] = {}
    for group in {b.group for b in benchmarks}:
        members = [b for b in benchmarks if b.group == group and b.stats and b.stats.min > 0]
        base = [b for b in members if b.extra_info.get("baseline")]
        if len(base) != 1:
            continue
        out[group] = {b.name: base[0].stats.min / b.stats.min for b in members}
    return out


def _set_ratios(config) -> dict[str, dict[str, float]]:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return {}
    ratios = _ratios(session.benchmarks)
    for b in session.benchmarks:
        if b.name in ratios.get(b.group, {}):
            b.extra_info["vs_baseline"] = round(ratios[b.group][b.name], 4)
    return ratios


def pytest_benchmark_update_json(config, benchmarks, output_json) -> None:
    ratios = _set_ratios(config)
    for row in output_json.get("benchmarks", []):
        value = ratios.get(row.get("group"), {}).get(row.get("name"))
        if value is not None:
            row.setdefault("extra_info", {})["vs_baseline"] = round(value, 4)


def pytest_terminal_summary(terminalreporter, config) -> None:
    ratios = _set_ratios(config)
    if not ratios:
        return
    terminalreporter.section("ratios to each group's baseline (min times, this process)")
    for group in sorted(ratios):
        for name, value in sorted(ratios[group].items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{group:<10} {name:<60} {value:8.3f}x")
