"""Shard writers: WebDataset tar, NPZ and PNG-folder shards, byte-identical across reruns.

A *sample* is one frame: ``key`` (``frame_000000123``: no dots, WebDataset splits a name at its
first dot), the image and mask (uint8 ``[S, S]``; the mask in the source schema's values) and a
JSON-able ``meta`` dict. Every writer is opened on temporary paths, fed samples in frame order
(``add``) and ``close``d; the caller renames the temporaries into place (:mod:`.shards`).

* ``wds``: one tar per shard, members ``{key}.image.png``, ``{key}.json``, ``{key}.mask.png``
  (key-sorted), USTAR headers with mtime 0, uid/gid 0, empty owner names, mode 0644.
* ``npz``: one zip per shard (stored, fixed timestamps) holding ``images`` ``[n, S, S]``,
  ``masks`` ``[n, S, S]``, ``frames`` ``[n]`` int64, ``keys`` ``[n]`` and ``meta`` ``[n]``
  (JSON strings); ``numpy.load`` reads it.
* ``png``: the folder reader's layout: ``images/{key}.png``, ``masks/{key}.png``,
  ``meta/{key}.json`` beside a ``card.json`` naming the schema, so ``tte2tee train --data``,
  ``adapt`` and ``evaluate`` read generated data back.

PNGs are encoded by PIL with a fixed compression level and no metadata chunks, so equal pixels
give equal bytes.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("wds", "png", "npz")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_PNG_LEVEL = 6


def frame_key(index: int) -> str:
    """The sample key of frame ``index``: zero-padded so lexicographic order is frame order."""
    return f"frame_{int(index):09d}"


def encode_png(array: np.ndarray) -> bytes:
    """uint8 gray ``[H, W]`` -> PNG bytes (deterministic: pixels only, no metadata)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(
        buf, format="PNG", compress_level=_PNG_LEVEL
    )
    return buf.getvalue()


def encode_json(meta: dict[str, Any]) -> bytes:
    """Canonical JSON bytes (sorted keys, compact, one trailing newline)."""
    return (json.dumps(meta, sort_keys=True, separators=(",", ":")) + "\n").encode()


@dataclass(frozen=True)
class Sample:
    """One encoded frame: key, frame index, PNG bytes of image and mask, JSON bytes of meta."""

    key: str
    index: int
    image: np.ndarray  # uint8 [S, S]
    mask: np.ndarray  # uint8 [S, S]
    image_png: bytes
    mask_png: bytes
    meta_json: bytes


def encode_sample(index: int, image: np.ndarray, mask: np.ndarray, meta: dict) -> Sample:
    """Encode frame ``index`` (the expensive part: two PNGs), ready for any writer."""
    key = frame_key(index)
    return Sample(
        key, int(index), image, mask, encode_png(image), encode_png(mask), encode_json(meta)
    )


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TarShardWriter:
    """A WebDataset tar shard streamed to ``path`` (one sample in memory at a time)."""

    def __init__(self, path: Path) -> None:
        self.paths = [Path(path)]
        self._file = open(path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def add(self, sample: Sample) -> None:
        members = {
            f"{sample.key}.image.png": sample.image_png,
            f"{sample.key}.mask.png": sample.mask_png,
            f"{sample.key}.json": sample.meta_json,
        }
        for name in sorted(members):
            self._member(name, members[name])

    def close(self) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        self._file.close()


class NpzShardWriter:
    """An NPZ shard: arrays gathered for the shard (bounded by ``--shard-size``), zipped on close."""

    def __init__(self, path: Path) -> None:
        self.paths = [Path(path)]
        self._samples: list[Sample] = []

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)

    def close(self) -> None:
        s = self._samples
        arrays = {
            "images": np.stack([x.image for x in s]).astype(np.uint8),  # [n, S, S]
            "masks": np.stack([x.mask for x in s]).astype(np.uint8),  # [n, S, S]
            "frames": np.array([x.index for x in s], dtype=np.int64),  # [n]
            "keys": np.array([x.key for x in s]),  # [n] unicode
            "meta": np.array([x.meta_json.decode().strip() for x in s]),  # [n] unicode
        }
        with open(self.paths[0], "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())
        _fsync_file(self.paths[0])
        self._samples = []

    def abort(self) -> None:
        self._samples = []


class PngShardWriter:
    """A PNG shard: three files per frame under ``images/``, ``masks/``, ``meta/``; written to
    hidden temporary names (``tmp_name`` maps a final path to its temporary)."""

    def __init__(self, out: Path, tmp_name) -> None:
        self.out, self._tmp_name = Path(out), tmp_name
        self.paths: list[Path] = []  # temporaries, in the order of `final_paths`
        self.final_paths: list[Path] = []

    def add(self, sample: Sample) -> None:
        for sub, ext, data in (
            ("images", "png", sample.image_png),
            ("masks", "png", sample.mask_png),
            ("meta", "json", sample.meta_json),
        ):
            final = self.out / sub / f"{sample.key}.{ext}"
            tmp = self._tmp_name(final)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.paths.append(tmp)
            self.final_paths.append(final)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
