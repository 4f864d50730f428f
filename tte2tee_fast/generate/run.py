"""``tte2tee generate``: mass generation into a resumable, sharded dataset folder.

Frame ``i`` is a pure function of (configuration, seed, i): its mask comes from the mask
source's ``mask(i)`` and its noise from ``(seed, i)`` inside the frame function, so it does not
depend on the batch size, shard size, split, worker count or resumes. The pipeline per runner:

    mask thread (phantom / files, augment)  --queue-->  frame_fn (denoiser, main thread)
        --queue-->  writer thread (PNG encoding, shard file, fsync, rename, manifest line)

Both queues are bounded, so memory does not grow with ``--n``.

>>> from tte2tee_fast.generate.backends import FrameConfig  # doctest: +SKIP
>>> report = generate_dataset("runs/tee-64", DatasetConfig(n=64), FrameConfig())  # doctest: +SKIP
>>> report.complete, report.generated_frames  # doctest: +SKIP
(True, 64)
"""

from __future__ import annotations

import dataclasses
import errno
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tte2tee_fast.errors import InputError
from tte2tee_fast.generate.distribute import Split, check_against_manifest, resolve_split
from tte2tee_fast.generate.shards import (
    CARD,
    FolderState,
    Shard,
    commit_shard,
    finalize,
    identity,
    open_output,
    plan_shards,
    read_manifest,
    shard_files,
    temp_path,
)
from tte2tee_fast.generate.sources import check_masks, open_mask_source, require_schema
from tte2tee_fast.generate.writers import (
    FORMATS,
    NpzShardWriter,
    PngShardWriter,
    TarShardWriter,
    encode_sample,
)

# FrameConfig fields that never change a frame's bytes, or that the resolved engine info
# (model_hash, adapter_hash, backend, precision) identifies better than the option text
_NOT_HASHED = ("batch_size", "model", "adapter", "backend", "precision", "engine")
_QUEUE_DEPTH = 2  # batches in flight between the threads


@dataclass(frozen=True)
class DatasetConfig:
    """What to generate and how to store it (the frame side is the backend's ``FrameConfig``)."""

    masks: str = "phantom:tee"
    n: int = 64
    format: str = "wds"
    shard_size: int = 32
    augment: bool = False
    schema: str | None = None  # mask folders: the masks' label schema (else card.json)
    value_map: tuple[tuple[str, str | int], ...] | None = None  # {stored value: label} pairs

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"unknown --format {self.format!r}; choose one of {list(FORMATS)}")
        if not isinstance(self.n, int) or self.n < 1:
            raise InputError(f"--n must be an integer >= 1, got {self.n!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise InputError(f"--shard-size must be an integer >= 1, got {self.shard_size!r}")
        if not isinstance(self.masks, str) or not self.masks:
            raise InputError("--masks must name a mask source, e.g. phantom:tee or a folder")

    @staticmethod
    def value_map_pairs(value_map: Mapping | None) -> tuple[tuple[str, str | int], ...] | None:
        """A parsed JSON value map as sorted pairs (hashable, canonical)."""
        if value_map is None:
            return None
        if not isinstance(value_map, Mapping):
            raise InputError('a value map is a JSON object like {"0": "outside", ...}')
        return tuple(sorted((str(k), v) for k, v in value_map.items()))


@dataclass
class GenerateReport:
    """What a run found and did."""

    out: Path
    split: Split
    shards: int
    recorded: int  # shards verified on entry
    bad: list[str]  # recorded shards that failed verification (regenerated)
    missing: list[Shard]  # shards of this runner still to generate on entry
    removed_temps: int
    generated_frames: int = 0
    seconds: float = 0.0
    complete: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.generated_frames / self.seconds if self.seconds > 0 else 0.0


def configuration(
    dataset: DatasetConfig, frame_config: Any, info: Mapping[str, Any], masks_sha256: str
) -> dict[str, Any]:
    """The hashed configuration: dataset options, frame options that change frames, the
    resolved engine info and the mask source's fingerprint."""
    frame = {k: v for k, v in dataclasses.asdict(frame_config).items() if k not in _NOT_HASHED}
    engine = identity(info)
    data = dataclasses.asdict(dataset)
    data["value_map"] = None if dataset.value_map is None else dict(dataset.value_map)
    return {"dataset": data, "frame": frame, "engine": engine, "masks_sha256": masks_sha256}


class _Pipe:
    """A bounded queue fed by a background thread; its exception is re-raised to the reader."""

    _END = object()

    def __init__(self, produce: Callable[[Callable[[Any], None]], None], depth: int) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None

        def run() -> None:
            try:
                produce(self._put)
            except BaseException as err:  # handed to the reader
                self._error = err
            finally:
                self._put(self._END, force=True)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def _put(self, item: Any, force: bool = False) -> None:
        while True:
            if self._stop.is_set() and not force:
                raise _Stopped
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set():
                    if force:
                        return
                    raise _Stopped from None

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._q.get()
            if item is self._END:
                if self._error is not None and not isinstance(self._error, _Stopped):
                    raise self._error
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _Stopped(Exception):
    pass


def _mask_batches(source, shards: list[Shard], batch_size: int, put) -> None:
    for shard in shards:
        for start in range(shard.start, shard.stop, batch_size):
            stop = min(shard.stop, start + batch_size)
            drawn = [source.mask(i) for i in range(start, stop)]
            labels = np.stack([m for m, _ in drawn])  # [b, S, S] uint8
            put((shard, np.arange(start, stop, dtype=np.int64), labels, [i for _, i in drawn]))


def _open_writer(state: FolderState, shard: Shard):
    if state.fmt == "wds":
        return TarShardWriter(temp_path(state.out / shard.name))
    if state.fmt == "npz":
        return NpzShardWriter(temp_path(state.out / shard.name))
    return PngShardWriter(state.out, temp_path)


def _write_error(err: OSError, shard: Shard, state: FolderState) -> InputError:
    what = "disk full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    return InputError(
        f"cannot write {shard.name} in {state.out} ({what}); no partial shard was kept, rerun "
        "the same command to resume"
    )


def run_shards(
    state: FolderState,
    shards: list[Shard],
    frame_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    source,
    meta: Mapping[str, Any],
    batch_size: int,
    split: str,
    on_frames: Callable[[int], None] = lambda k: None,
) -> int:
    """Generate, write and commit ``shards`` (whole shards, in order); returns frames written.

    Masks are drawn in a background thread and PNG encoding + writing happens in another,
    both behind bounded queues, so they overlap the denoiser.
    """
    size = int(source.size)
    masks = _Pipe(lambda put: _mask_batches(source, shards, batch_size, put), _QUEUE_DEPTH)

    jobs: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
    done = {"frames": 0}
    error: list[BaseException] = []

    def discard(writer) -> None:  # an unfinished shard: close and remove its temporaries
        writer.abort()
        for p in writer.paths:
            p.unlink(missing_ok=True)

    def writer_loop() -> None:
        writer, current = None, None
        try:
            while (job := jobs.get()) is not None:
                shard, frames, labels, ids, images = job
                if current is not shard:
                    writer, current = _open_writer(state, shard), shard
                for i, image, mask, mask_id in zip(frames, images, labels, ids, strict=True):
                    frame_meta = {**meta, "index": int(i), "mask_id": mask_id}
                    writer.add(encode_sample(int(i), image, mask, frame_meta))
                if int(frames[-1]) == shard.stop - 1:
                    writer.close()
                    finals = getattr(writer, "final_paths", None) or shard_files(
                        state.out, shard, state.fmt
                    )
                    commit_shard(state, shard, list(writer.paths), finals, split)
                    writer, current = None, None
                done["frames"] += len(frames)
                on_frames(len(frames))
            if writer is not None:  # the denoiser side stopped mid-shard
                discard(writer)
        except BaseException as err:
            error.append(err)
            if writer is not None:
                discard(writer)
            if isinstance(err, OSError) and current is not None:
                error[-1] = _write_error(err, current, state)
            while jobs.get() is not None:  # drain so the producer never blocks
                pass

    thread = threading.Thread(target=writer_loop, daemon=True)
    thread.start()
    try:
        for shard, frames, labels, ids in masks:
            if error:
                break
            images = np.asarray(frame_fn(labels, frames))  # [b, S, S] uint8
            if images.shape != (len(frames), size, size) or images.dtype != np.uint8:
                raise InputError(
                    f"the frame function returned {images.dtype} {images.shape}, "
                    f"expected uint8 {(len(frames), size, size)}"
                )
            jobs.put((shard, frames, labels, ids, images))
    finally:
        masks.close()
        jobs.put(None)
        thread.join()
    if error:
        raise error[0]
    return done["frames"]


def _frame_meta(frame_config: Any, info: Mapping[str, Any], source) -> dict:
    """The JSON of every frame (plus its index and mask id): what made it, not how it is
    stored, so a frame's bytes are the same whatever the format's shard layout."""
    meta = identity(info)
    meta.update({"seed": int(frame_config.seed), "mask_source": source.description})
    return meta


def _write_card(state: FolderState, source) -> None:
    from tte2tee_fast.fsutil import write_json_atomic

    path = state.out / CARD
    if not path.is_file():
        write_json_atomic(
            path,
            {
                "schema": source.schema.name,
                "generator": "tte2tee generate",
                "layout": "images/ masks/ meta/",
            },
        )


def prepare(
    out: str | Path,
    dataset: DatasetConfig,
    frame_config: Any,
    frame_fn,
    create: bool = True,
):
    """Open the mask source for ``frame_fn``, check every mask, and open ``out``. Returns
    ``(source, configuration, state)``."""
    spec, size = frame_fn.spec, int(frame_fn.size)
    vmap = None if dataset.value_map is None else dict(dataset.value_map)
    source = open_mask_source(
        dataset.masks, size, int(frame_config.seed), dataset.augment, dataset.schema, vmap
    )
    require_schema(source, spec, dataset.masks)
    digest = check_masks(source)
    conf = configuration(dataset, frame_config, frame_fn.info, digest)
    shards = plan_shards(dataset.n, dataset.shard_size, dataset.format)
    state = open_output(out, dataset.format, conf, shards, clean=create, create=create)
    return source, conf, state


def generate_dataset(
    out: str | Path,
    dataset: DatasetConfig,
    frame_config: Any,
    frame_fn=None,
    split: Split | None = None,
    plan: bool = False,
    progress: bool = True,
    ray: Mapping[str, Any] | None = None,
    frame_fn_factory: Callable[[], Any] | None = None,
) -> GenerateReport:
    """Generate the shards of ``dataset`` that this runner owns and are missing from ``out``.

    ``frame_fn``: the frame function (default ``build_frame_fn(frame_config)``); tests inject
    a fake. ``split``: this runner's share (default: ``--shard`` absent, the launcher's
    variables). ``plan``: report what is missing and write nothing. ``ray``:
    ``{"address": str | None, "workers": int}`` runs the shards on Ray actors, each building its
    frame function with ``frame_fn_factory`` (default ``build_frame_fn(frame_config)``).
    """
    try:
        return _generate(
            out, dataset, frame_config, frame_fn, split, plan, progress, ray, frame_fn_factory
        )
    except OSError as err:  # unreadable or unwritable paths: one line, no traceback
        where = err.filename or out
        raise InputError(f"{where}: {err.strerror or err}") from None


def _generate(
    out: str | Path,
    dataset: DatasetConfig,
    frame_config: Any,
    frame_fn=None,
    split: Split | None = None,
    plan: bool = False,
    progress: bool = True,
    ray: Mapping[str, Any] | None = None,
    frame_fn_factory: Callable[[], Any] | None = None,
) -> GenerateReport:
    from functools import partial

    if int(getattr(frame_config, "batch_size", 1)) < 1:
        raise InputError(f"--batch-size must be >= 1, got {frame_config.batch_size}")
    split = split or resolve_split(None)
    plan_shards(dataset.n, dataset.shard_size, dataset.format)  # option errors before loading
    if frame_fn_factory is None and (frame_fn is None or ray is not None):
        from tte2tee_fast.generate.backends import build_frame_fn

        frame_fn_factory = partial(build_frame_fn, frame_config)
    if frame_fn is None:
        frame_fn = frame_fn_factory()
    source, conf, state = prepare(out, dataset, frame_config, frame_fn, create=not plan)
    check_against_manifest(split, read_manifest(state.out))
    mine = [s for s in state.missing if split.owns(s.index)]
    report = GenerateReport(
        state.out, split, len(state.shards), len(state.done), state.bad, mine, state.removed_temps
    )
    if plan:
        return report
    if dataset.format == "png":
        _write_card(state, source)
    meta = _frame_meta(frame_config, frame_fn.info, source)
    start = time.perf_counter()
    if mine and ray is not None:
        from tte2tee_fast.generate.ray_runner import run_on_ray

        report.generated_frames = run_on_ray(
            state, mine, frame_fn_factory, dataset, frame_config, meta, split.text, **ray
        )
    elif mine:
        from tqdm.auto import tqdm

        total = sum(s.count for s in mine)
        with tqdm(total=total, unit="frame", desc="generating", disable=not progress) as bar:
            report.generated_frames = run_shards(
                state,
                mine,
                frame_fn,
                source,
                meta,
                int(frame_config.batch_size),
                split.text,
                bar.update,
            )
    report.seconds = time.perf_counter() - start
    report.complete = finalize(state, conf)
    return report
