"""The Ray runner on a local Ray instance with 2 workers: the same bytes as one process."""

from __future__ import annotations

import functools
import sys

import pytest
from test_generate_fakes import FakeFrameFn, fake_config, fake_factory, read_tree

from tte2tee_fast.generate.distribute import Split
from tte2tee_fast.generate.run import DatasetConfig, generate_dataset

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    import ray.cloudpickle

    # the fake lives in a test module the workers cannot import: ship it by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[FakeFrameFn.__module__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_two_ray_workers_write_the_same_dataset_as_one_process(tmp_path, local_ray):
    dataset = DatasetConfig(n=10, shard_size=3)
    kw = {"split": Split(0, 1, "t"), "progress": False}
    one = tmp_path / "one"
    generate_dataset(one, dataset, fake_config(), frame_fn=FakeFrameFn(), **kw)
    on_ray = tmp_path / "ray"
    factory = functools.partial(fake_factory, 0, 32)
    report = generate_dataset(
        on_ray,
        dataset,
        fake_config(),
        frame_fn=FakeFrameFn(),  # the driver's copy only reads spec, size and info
        frame_fn_factory=factory,
        ray={"workers": 2},
        **kw,
    )
    assert report.complete and report.generated_frames == 10
    assert read_tree(one) == read_tree(on_ray)
    # a repeated run (a retried driver) finds everything and rewrites nothing
    again = generate_dataset(
        on_ray,
        dataset,
        fake_config(),
        frame_fn=FakeFrameFn(),
        frame_fn_factory=factory,
        ray={"workers": 2},
        **kw,
    )
    assert again.generated_frames == 0 and read_tree(one) == read_tree(on_ray)
