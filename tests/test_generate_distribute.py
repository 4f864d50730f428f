"""Splitting the shard list: --shard i/N, the launcher variables in their fixed order, and a
split that disagrees with the manifest refused."""

from __future__ import annotations

import pytest
from test_generate_fakes import FakeFrameFn, fake_config

from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.distribute import Split, parse_split, split_from_env
from tte2tee_fast.generate.run import DatasetConfig, generate_dataset


def test_splits_are_a_partition_of_the_shard_list():
    for count in (1, 2, 3, 7):
        owned = [[s for s in range(23) if Split(i, count, "t").owns(s)] for i in range(count)]
        assert sorted(s for part in owned for s in part) == list(range(23))


def test_parse_split_accepts_i_of_n_and_refuses_the_rest():
    assert (parse_split(" 2/5 ").index, parse_split("2/5").count) == (2, 5)
    for bad in ("5/5", "1/0", "-1/3", "a/b", "3", "1/2/3", ""):
        with pytest.raises(InputError):
            parse_split(bad)


def test_launcher_variables_are_read_in_a_fixed_order():
    both = {
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_ARRAY_TASK_COUNT": "4",
        "RANK": "1",
        "WORLD_SIZE": "2",
    }
    split = split_from_env(both)
    assert (split.index, split.count) == (3, 4) and split.origin.startswith("SLURM array")
    slurm_from_1 = {
        "SLURM_ARRAY_TASK_ID": "4",
        "SLURM_ARRAY_TASK_COUNT": "4",
        "SLURM_ARRAY_TASK_MIN": "1",
    }
    assert split_from_env(slurm_from_1).index == 3
    torchrun = split_from_env({"RANK": "1", "WORLD_SIZE": "2"})
    assert (torchrun.index, torchrun.count) == (1, 2) and "torchrun" in torchrun.origin
    k8s = split_from_env({"JOB_COMPLETION_INDEX": "0", "JOB_COMPLETIONS": "3"})
    assert (k8s.index, k8s.count) == (0, 3) and "Kubernetes" in k8s.origin
    assert split_from_env({}).count == 1
    with pytest.raises(InputError, match="JOB_COMPLETIONS is not"):
        split_from_env({"JOB_COMPLETION_INDEX": "0"})
    with pytest.raises(InputError, match="not an integer"):
        split_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(InputError, match="need 0 <= i < N"):
        split_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_a_split_that_disagrees_with_the_manifest_is_refused(tmp_path):
    out = tmp_path / "ds"
    kw = {"frame_config": fake_config(), "progress": False}
    dataset = DatasetConfig(n=12, shard_size=2)
    generate_dataset(out, dataset, frame_fn=FakeFrameFn(), split=Split(0, 3, "t"), **kw)
    with pytest.raises(InputError, match=r"split 1/2 disagrees with the manifest: .* runner 0/3"):
        generate_dataset(out, dataset, frame_fn=FakeFrameFn(), split=Split(1, 2, "t"), **kw)
    # the same N is fine, and a single runner may always finish the dataset
    generate_dataset(out, dataset, frame_fn=FakeFrameFn(), split=Split(1, 3, "t"), **kw)
    report = generate_dataset(out, dataset, frame_fn=FakeFrameFn(), split=Split(0, 1, "t"), **kw)
    assert report.complete and sorted(s.index for s in report.missing) == [2, 5]
