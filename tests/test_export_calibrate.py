"""Calibration data for int8: U-Net inputs recorded across the timesteps of real sampling runs,
checked against the sampler's own timestep grid, the counter-based initial noise and the phantom
masks; deterministic from the seed; the .npz round trip and its checks."""

from __future__ import annotations

import numpy as np
import pytest
from test_adapter import micro_base
from tte2tee_fast.export.calibrate import (
    CalibConfig,
    calibration_batches,
    load_calibration,
    phantom_labels,
    record_calibration,
    save_calibration,
)

from tte2tee_fast.condition.maskr2 import builtin_spec
from tte2tee_fast.data.phantom import phantom_case
from tte2tee_fast.data.schemas import TEE
from tte2tee_fast.diffusion import NoiseSchedule, NoiseSource
from tte2tee_fast.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = CalibConfig(n=12, steps=3, batch=2, seed=5)


@pytest.fixture(scope="module")
def recorded():
    return record_calibration(micro_base(), builtin_spec("tee->tte"), CONFIG)


def test_rows_shapes_and_dtypes(recorded):
    assert recorded["sample"].shape == (12, 1, 32, 32) and recorded["sample"].dtype == np.float32
    assert recorded["timestep"].shape == (12,) and recorded["timestep"].dtype == np.int64
    assert recorded["labels"].shape == (12, 32, 32) and recorded["labels"].dtype == np.int64
    assert np.isfinite(recorded["sample"]).all()
    assert recorded["meta"]["recorded"] == 12  # 4 frames x 3 steps: every call taken


def test_rows_cover_every_timestep_of_the_run(recorded):
    grid = NoiseSchedule.cosine(1000).timesteps(CONFIG.steps, "trailing").numpy()
    values, counts = np.unique(recorded["timestep"], return_counts=True)
    np.testing.assert_array_equal(values, np.sort(grid))
    assert (counts == 4).all()  # each of the 4 frames at each step


def test_first_step_rows_are_the_frames_initial_noise(recorded):
    first = recorded["timestep"] == recorded["timestep"].max()
    got = recorded["sample"][first]  # [4, 1, H, W], frames 0..3 in order
    want = NoiseSource(CONFIG.seed, range(4)).initial((1, 32, 32)).numpy()
    np.testing.assert_array_equal(got, want)


def test_labels_are_phantom_masks_of_the_source_schema(recorded):
    assert set(np.unique(recorded["labels"])) <= set(TEE.values)
    big = phantom_case("tee", size=64, seed=CONFIG.seed).mask  # frame 0, drawn at 64
    first = recorded["labels"][recorded["timestep"] == recorded["timestep"].max()][0]
    np.testing.assert_array_equal(first, big[1::2, 1::2])  # nearest resize 64 -> 32


def test_deterministic_from_the_seed(recorded):
    again = record_calibration(micro_base(), builtin_spec("tee->tte"), CONFIG)
    for k in ("sample", "timestep", "labels"):
        np.testing.assert_array_equal(again[k], recorded[k])


def test_fewer_rows_are_spread_over_frames_and_steps():
    data = record_calibration(
        micro_base(), builtin_spec("tee->tte"), CalibConfig(n=3, steps=3, batch=1, seed=1)
    )
    assert len(np.unique(data["timestep"])) == 3
    other = phantom_labels("tee", 32, 1, 2)
    assert not np.array_equal(data["labels"][0], other[0])


def test_npz_round_trip_and_checks(recorded, tmp_path):
    path = save_calibration(tmp_path / "c.npz", recorded)
    back = load_calibration(path)
    for k in ("sample", "timestep", "labels"):
        np.testing.assert_array_equal(back[k], recorded[k])
    assert back["meta"]["seed"] == CONFIG.seed
    bad = dict(recorded, timestep=recorded["timestep"].astype(np.float32))
    save_calibration(tmp_path / "bad.npz", bad)
    with pytest.raises(InputError, match=r"timestep must be int64 \[12\], got float32"):
        load_calibration(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="does not exist"):
        load_calibration(tmp_path / "none.npz")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_batches_for_a_fixed_batch_engine(recorded):
    feeds = calibration_batches(recorded, 5)
    assert len(feeds) == 2 and all(f["sample"].shape[0] == 5 for f in feeds)
    np.testing.assert_array_equal(feeds[1]["timestep"], recorded["timestep"][5:10])
    with pytest.raises(InputError, match="fewer than the engine's batch 16"):
        calibration_batches(recorded, 16)


def test_refuses_a_schema_without_phantoms():
    with pytest.raises(InputError, match="no phantom generator for schema 'camus'"):
        phantom_labels("camus", 32, 1, 0)
    with pytest.raises(InputError, match=">= 1"):
        CalibConfig(n=0)
