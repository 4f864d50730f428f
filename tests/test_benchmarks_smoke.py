"""CI smoke of the pytest-benchmark suites in ``benchmarks/`` (issue 16, item 6), in one
subprocess: every suite collects (the fixed-size ones are then deselected), ``--benchmark-only``
is accepted over the project's ``--benchmark-disable`` addopts, the size-aware suites (backends,
samplers, e2e) run one round each at the smoke size (a micro model, 32², batch 2) and the JSON
carries each group's ratios to its baseline. No timing assertions. ``tte2tee bench e2e
--quick`` has its own smoke run on a micro model in tests/test_bench_e2e.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ONE_ROUND = ("--benchmark-min-rounds=1", "--benchmark-max-time=0", "--benchmark-warmup=off")


def test_suites_run_at_smoke_size(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env |= {
        "TTE2TEE_BENCH_SIZE": "smoke",
        "TTE2TEE_BENCH_DEVICE": "cpu",
        "TTE2TEE_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    report = tmp_path / "bench.json"
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-q", "-rs", "-p", "no:cacheprovider",
         "--benchmark-only", *ONE_ROUND, f"--benchmark-json={report}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = res.stdout[-4000:] + res.stderr[-3000:]
    assert res.returncode == 0, out
    assert " passed" in res.stdout and "deselected" in res.stdout, out
    rows = json.loads(report.read_text())["benchmarks"]
    groups = {r["group"] for r in rows}
    assert {"backends", "samplers", "e2e"} <= groups, groups
    for group in groups:
        base = [r for r in rows if r["group"] == group and r["extra_info"].get("baseline")]
        assert len(base) == 1 and base[0]["extra_info"]["vs_baseline"] == 1.0, group
        assert all(r["extra_info"]["vs_baseline"] > 0 for r in rows if r["group"] == group)
