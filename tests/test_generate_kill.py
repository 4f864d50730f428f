"""kill -9 in the middle of a shard, rerun: the dataset is byte-identical to an uninterrupted
run (the killed shard's temporary is removed, committed shards are verified and kept)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_generate_fakes import FakeFrameFn, fake_config, read_tree

from tte2tee_fast.generate.distribute import Split
from tte2tee_fast.generate.run import DatasetConfig, generate_dataset

TESTS = Path(__file__).resolve().parent
SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_generate_fakes import FakeFrameFn, fake_config
from tte2tee_fast.generate.distribute import Split
from tte2tee_fast.generate.run import DatasetConfig, generate_dataset
generate_dataset({out!r}, DatasetConfig(n=12, shard_size=4), fake_config(batch_size=1),
                 frame_fn=FakeFrameFn(delay=0.1), split=Split(0, 1, "t"), progress=False)
"""


def _wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_sigkill_mid_shard_then_rerun_is_byte_identical(tmp_path):
    dataset = DatasetConfig(n=12, shard_size=4)
    kw = {"split": Split(0, 1, "t"), "progress": False}
    reference = tmp_path / "ref"
    generate_dataset(reference, dataset, fake_config(), frame_fn=FakeFrameFn(), **kw)

    out = tmp_path / "killed"
    code = SCRIPT.format(tests=str(TESTS), out=str(out))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        manifest = out / "manifest.jsonl"
        _wait_for(lambda: manifest.is_file() and manifest.read_text().count("\n") >= 1)
        _wait_for(lambda: any(out.glob(".shard-000001.tar.tmp-*")))  # inside shard 1
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert any(out.glob(".shard-000001.tar.tmp-*")) and not (out / "shard-000001.tar").exists()
    assert not (out / "dataset.json").exists()

    fn = FakeFrameFn()
    report = generate_dataset(out, dataset, fake_config(), frame_fn=fn, **kw)
    assert report.removed_temps >= 1 and report.recorded >= 1
    assert min(f for call in fn.calls for f in call) >= 4  # shard 0 was kept, not redone
    assert read_tree(out) == read_tree(reference)
