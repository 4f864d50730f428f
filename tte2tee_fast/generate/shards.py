"""The dataset folder: shard layout, manifest, verification on rerun, commit and finalisation.

Shard ``s`` holds frames ``[s * shard_size, min(n, (s + 1) * shard_size))``. Its files are
written under hidden temporary names in the same folder, fsynced and renamed, the folder is
fsynced, and only then its line goes into ``manifest.jsonl`` (appended with one ``write``,
then fsync)::

    {"config": "<configuration sha256>", "count": 32, "name": "shard-000000.tar", "sha256": ...,
     "shard": 0, "split": "0/1", "start": 0, "stop": 32}

Before the first shard, ``config.json`` (the configuration) is written. When every shard is
present, the manifest is rewritten sorted by shard (without ``split``), then ``index.json``
(wids-style: ``shardlist`` of ``{"url", "nsamples"}``) and ``dataset.json`` (configuration,
software versions, totals) are written, atomically and last: a folder with ``dataset.json`` is
complete, and its bytes do not depend on how it was split, resumed or retried.

A rerun verifies every recorded shard against its sha256, deletes stale temporaries, refuses a
different configuration (naming the keys that differ) and foreign files, and reports the
missing shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import write_json_atomic, write_text_atomic

CONFIG, MANIFEST, DATASET, INDEX, CARD = (
    "config.json",
    "manifest.jsonl",
    "dataset.json",
    "index.json",
    "card.json",
)
PNG_DIRS = ("images", "masks", "meta")
_SHARD_FILE = re.compile(r"^shard-\d{6}\.(tar|npz)$")
_PNG_FILE = re.compile(r"^frame_\d{9}\.(png|json)$")
_TMP = re.compile(r"^\..+\.tmp(-[0-9a-f]{8})?$|^\..+\.[0-9a-f]{8}\.tmp$")
_SUFFIX = {"wds": ".tar", "npz": ".npz", "png": ""}


@dataclass(frozen=True)
class Shard:
    """One shard: its number, frame range and name (a file for wds/npz, a label for png)."""

    index: int
    start: int
    stop: int
    name: str

    @property
    def count(self) -> int:
        return self.stop - self.start


def plan_shards(n: int, shard_size: int, fmt: str) -> list[Shard]:
    """The shards of ``n`` frames, ``shard_size`` each (the last one may be shorter)."""
    if n < 1 or shard_size < 1:
        raise InputError(f"--n and --shard-size must be >= 1, got n={n}, shard_size={shard_size}")
    if fmt not in _SUFFIX:
        raise InputError(f"unknown format {fmt!r}; choose one of {sorted(_SUFFIX)}")
    count = -(-n // shard_size)
    if count > 999_999:
        raise InputError(f"{count} shards exceed the 999999 the names allow; raise --shard-size")
    return [
        Shard(s, s * shard_size, min(n, (s + 1) * shard_size), f"shard-{s:06d}{_SUFFIX[fmt]}")
        for s in range(count)
    ]


def config_hash(configuration: Any) -> str:
    """sha256 of the canonical JSON of ``configuration``."""
    text = json.dumps(configuration, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# engine info keys that say where or how fast, not what: kept out of hashes and frame JSON
# how frames are computed, not what they are: the label cache is exact in f32 (export/ov_split.py)
NOT_IDENTITY = ("batch_size", "engine", "label_cache")


def identity(info: Mapping[str, Any]) -> dict[str, Any]:
    """``info`` (a denoiser's or frame function's) without the keys of :data:`NOT_IDENTITY`:
    what makes the frames, the same on every machine."""
    return {k: v for k, v in dict(info).items() if k not in NOT_IDENTITY}


def temp_path(final: Path) -> Path:
    """A hidden, unique temporary name beside ``final`` (``.NAME.tmp-XXXXXXXX``)."""
    return final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")


def shard_files(out: Path, shard: Shard, fmt: str) -> list[Path]:
    """The final files of ``shard``, in the order their bytes are hashed."""
    if fmt != "png":
        return [out / shard.name]
    from tte2tee_fast.generate.writers import frame_key

    return [
        out / sub / f"{frame_key(i)}.{ext}"
        for i in range(shard.start, shard.stop)
        for sub, ext in (("images", "png"), ("masks", "png"), ("meta", "json"))
    ]


def hash_files(paths: Iterable[Path]) -> str:
    """sha256 over the concatenated bytes of ``paths`` (one file: its plain sha256)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b": value}`` (for naming the keys two configurations differ in)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_difference(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every key whose value differs (missing keys shown as absent)."""
    a, b = flatten(old), flatten(new)
    absent = "(absent)"
    return [
        f"{k}: {json.dumps(a.get(k, absent))} -> {json.dumps(b.get(k, absent))}"
        for k in sorted(set(a) | set(b))
        if a.get(k, absent) != b.get(k, absent)
    ]


def _foreign(out: Path, fmt: str) -> list[str]:
    allowed = {CONFIG, MANIFEST, DATASET, INDEX} | ({CARD} if fmt == "png" else set())
    found = []
    for path in sorted(out.iterdir()):
        name = path.name
        if _TMP.match(name) or (name in allowed and path.is_file()):
            continue
        if fmt != "png" and _SHARD_FILE.match(name) and path.is_file():
            continue
        if fmt == "png" and name in PNG_DIRS and path.is_dir():
            found += [
                f"{name}/{p.name}"
                for p in sorted(path.iterdir())
                if not (_TMP.match(p.name) or (_PNG_FILE.match(p.name) and p.is_file()))
            ]
            continue
        found.append(name + ("/" if path.is_dir() else ""))
    return found


def _remove_temps(out: Path) -> int:
    removed = 0
    for folder in [out] + [out / d for d in PNG_DIRS if (out / d).is_dir()]:
        for path in folder.iterdir():
            if _TMP.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def read_manifest(out: Path) -> dict[int, dict]:
    """The last valid manifest line of every shard (a torn last line is ignored)."""
    path = out / MANIFEST
    records: dict[int, dict] = {}
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            records[int(rec["shard"])] = rec
        except (ValueError, KeyError, TypeError):
            continue
    return records


@dataclass
class FolderState:
    """What :func:`open_output` found: verified shards, the ones to (re)generate, clean-ups."""

    out: Path
    fmt: str
    config_hash: str
    shards: list[Shard]
    done: dict[int, dict]  # shard index -> its verified manifest record
    bad: list[str]  # recorded shards whose files are missing or fail their sha256
    removed_temps: int

    @property
    def missing(self) -> list[Shard]:
        return [s for s in self.shards if s.index not in self.done]


def open_output(
    out: str | os.PathLike,
    fmt: str,
    configuration: dict[str, Any],
    shards: list[Shard],
    verify: bool = True,
    clean: bool = True,
    create: bool = True,
) -> FolderState:
    """Check ``out`` for a run of ``configuration`` (refusing foreign files and a different
    configuration), verify the recorded shards, remove stale temporaries (``clean``), write
    ``config.json`` when new. ``create=False`` (``--plan``) only reads."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    digest = config_hash(configuration)
    if out.is_dir():
        foreign = _foreign(out, fmt)
        if foreign:
            shown = ", ".join(foreign[:5]) + (
                f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            )
            raise InputError(
                f"--out {out} holds files that are not part of a generated dataset ({shown}); "
                "use an empty or new folder"
            )
        cfg_path = out / CONFIG
        if cfg_path.is_file():
            try:
                old = json.loads(cfg_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise InputError(f"{cfg_path}: cannot read ({err})") from None
            old_conf = old.get("configuration") if isinstance(old, dict) else None
            if not isinstance(old_conf, dict):
                raise InputError(f"{cfg_path}: not a tte2tee generate configuration")
            diff = config_difference(old_conf, configuration)
            if diff:
                raise InputError(
                    f"--out {out} holds a dataset of another configuration; differing keys: "
                    f"{'; '.join(diff)}. Use another --out or the same options"
                )
        elif (out / MANIFEST).exists():
            raise InputError(f"{out}: {MANIFEST} without {CONFIG}; not a resumable dataset")
    if not create:
        done = _verified(out, fmt, digest, shards, verify) if out.is_dir() else ({}, [])
        return FolderState(out, fmt, digest, shards, done[0], done[1], 0)
    out.mkdir(parents=True, exist_ok=True)
    removed = _remove_temps(out) if clean else 0
    if not (out / CONFIG).is_file():
        write_json_atomic(out / CONFIG, {"config_hash": digest, "configuration": configuration})
    done, bad = _verified(out, fmt, digest, shards, verify)
    return FolderState(out, fmt, digest, shards, done, bad, removed)


def _verified(
    out: Path, fmt: str, digest: str, shards: list[Shard], verify: bool
) -> tuple[dict[int, dict], list[str]]:
    done: dict[int, dict] = {}
    bad: list[str] = []
    by_index = {s.index: s for s in shards}
    for index, rec in read_manifest(out).items():
        shard = by_index.get(index)
        if shard is None or rec.get("config") != digest or rec.get("name") != shard.name:
            continue
        files = shard_files(out, shard, fmt)
        if not all(p.is_file() for p in files):
            bad.append(f"{shard.name}: files missing")
        elif verify and hash_files(files) != rec.get("sha256"):
            bad.append(f"{shard.name}: sha256 mismatch")
        else:
            done[index] = rec
    return done, bad


def commit_shard(
    state: FolderState, shard: Shard, temps: list[Path], finals: list[Path], split: str
) -> dict:
    """Rename a written shard's temporaries into place, fsync the folder(s), append its line
    to the manifest (one write + fsync). Returns the record."""
    digest = hash_files(temps)
    for tmp, final in zip(temps, finals, strict=True):
        os.replace(tmp, final)
    for folder in dict.fromkeys(p.parent for p in finals):
        _fsync_dir(folder)
    record = {
        "config": state.config_hash,
        "count": shard.count,
        "name": shard.name,
        "sha256": digest,
        "shard": shard.index,
        "split": split,
        "start": shard.start,
        "stop": shard.stop,
    }
    append_manifest(state.out, record)
    state.done[shard.index] = record
    return record


def append_manifest(out: Path, record: dict) -> None:
    """Append one manifest line with a single ``write`` and fsync (safe for several writers)."""
    line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
    fd = os.open(out / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def software_versions() -> dict[str, str]:
    """Versions of the packages that make the frames (those installed), without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("tte2tee-fast", "torch", "numpy", "pillow", "onnxruntime", "openvino"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def finalize(state: FolderState, configuration: dict[str, Any], extra: dict | None = None) -> bool:
    """When every shard is recorded: rewrite the manifest sorted (no ``split``), write
    ``index.json`` and ``dataset.json`` last. Returns whether the dataset is complete."""
    records = read_manifest(state.out)
    complete = all(
        s.index in records
        and records[s.index].get("config") == state.config_hash
        and all(p.is_file() for p in shard_files(state.out, s, state.fmt))
        for s in state.shards
    )
    if not complete:
        return False
    lines = []
    for s in state.shards:
        rec = {k: v for k, v in records[s.index].items() if k != "split"}
        lines.append(json.dumps(rec, sort_keys=True, separators=(",", ":")))
    write_text_atomic(state.out / MANIFEST, "\n".join(lines) + "\n")
    write_json_atomic(
        state.out / INDEX,
        {
            "__kind__": "wids-shard-index-v1",
            "wids_version": 1,
            "shardlist": [{"url": s.name, "nsamples": s.count} for s in state.shards],
        },
    )
    dataset = {
        "config_hash": state.config_hash,
        "configuration": configuration,
        "software": software_versions(),
        "totals": {
            "frames": sum(s.count for s in state.shards),
            "shards": len(state.shards),
            "format": state.fmt,
        },
    }
    dataset.update(extra or {})
    write_json_atomic(state.out / DATASET, dataset)
    return True
