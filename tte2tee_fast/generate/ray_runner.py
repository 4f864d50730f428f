"""Run the missing shards on Ray actors: one frame function per actor, whole-shard tasks.

The driver holds an explicit list of shard tasks and hands them to ``W`` actors through an
``ActorPool``; every task owns one whole shard and writes it exactly as a single process would
(temporary name, fsync, rename, manifest line with one appended write), so a retried or
repeated task rewrites the same bytes, and a driver crash is mended by rerunning the command
(the rerun verifies what was committed and generates the rest). Actors ask Ray for one GPU
each when the cluster has GPUs. Ray Data's ``map_batches`` + ``write_webdataset`` is not used:
its file names are random, its order is not fixed and repeated tasks duplicate rows.

>>> run_on_ray(state, shards, factory, dataset, frame_config, meta, "0/1", workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.shards import FolderState, Shard


class ShardWorker:
    """The body of a Ray actor: builds its frame function and mask source once, then writes
    whole shards on request."""

    def __init__(
        self,
        factory: Callable[[], Any],
        dataset: Any,
        frame_config: Any,
        out: str,
        fmt: str,
        config_hash: str,
        meta: Mapping[str, Any],
        split: str,
        threads: int | None = None,
    ) -> None:
        from tte2tee_fast.generate.sources import open_mask_source

        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.frame_fn = factory()
        vmap = None if dataset.value_map is None else dict(dataset.value_map)
        self.source = open_mask_source(
            dataset.masks,
            int(self.frame_fn.size),
            int(frame_config.seed),
            dataset.augment,
            dataset.schema,
            vmap,
        )
        self.state = FolderState(Path(out), fmt, config_hash, [], {}, [], 0)
        self.meta, self.split = dict(meta), split
        self.batch_size = int(frame_config.batch_size)

    def run(self, shard: Shard) -> int:
        from tte2tee_fast.generate.run import run_shards

        return run_shards(
            self.state, [shard], self.frame_fn, self.source, self.meta, self.batch_size, self.split
        )


def run_on_ray(
    state: FolderState,
    shards: list[Shard],
    factory: Callable[[], Any],
    dataset: Any,
    frame_config: Any,
    meta: Mapping[str, Any],
    split: str,
    address: str | None = None,
    workers: int = 2,
    threads: int | None = None,
) -> int:
    """Write ``shards`` on ``workers`` Ray actors (connecting to ``address``, or starting a local
    instance when Ray is not initialised); returns the frames written."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'tte2tee-fast[ray]'") from None
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    actor = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=2, max_task_retries=2)(ShardWorker)
    args = (factory, dataset, frame_config, str(state.out), state.fmt, state.config_hash)
    actors = [actor.remote(*args, dict(meta), split, threads) for _ in range(workers)]
    pool = ActorPool(actors)
    try:
        counts = list(pool.map_unordered(lambda a, s: a.run.remote(s), shards))
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, InputError):
            raise InputError(str(cause)) from None
        raise
    finally:
        for a in actors:
            ray.kill(a)
    return int(sum(counts))
