"""Torch datasets of (image, label map) pairs from a folder, CAMUS or the phantom on the fly.

Every dataset yields ``(image FloatTensor [1, S, S] in [-1, 1], label LongTensor [S, S])`` at a
chosen size (image resized bilinear with antialiasing, labels nearest) and exposes its label
schema as ``.schema``. Augmentation (:mod:`tte2tee_fast.data.augment`) is drawn from a
generator seeded by ``(seed, index, epoch)``: an item is the same whatever the worker, batch
or order it is read in; call :meth:`set_epoch` to draw new transforms each epoch.

A *source* is anything with ``schema``, ``names``, ``__len__`` and
``load(i) -> (image uint8 [H, W], mask uint8 [H, W])``: :class:`~.folder.FolderSource`,
:class:`~.camus.CamusSource`. :func:`open_source` picks one from a path and
:func:`summarize` checks every pair of a source and counts sizes and label pixels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tte2tee_fast.data.augment import AugmentConfig, augment_pair
from tte2tee_fast.data.schemas import LabelSchema, get_schema
from tte2tee_fast.errors import InputError

FORMATS = ("auto", "folder", "camus")
_AUG_TAG = 0xA06  # separates augmentation streams from the phantom's case seeds


class PairSource(Protocol):
    schema: LabelSchema

    @property
    def names(self) -> list[str]: ...

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    if min(h, w) < 8:
        raise InputError(f"size {size!r} is too small; use at least 8 pixels")
    return int(h), int(w)


def fill_label(schema: LabelSchema) -> int:
    """The value written where augmentation leaves the frame: ``outside`` if the schema has it."""
    return schema.value_of("outside") if "outside" in schema.names else 0


def augment_rng(seed: int, index: int, epoch: int = 0) -> np.random.Generator:
    """The generator of item ``index`` in ``epoch``: a pure function of its arguments."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), int(epoch), _AUG_TAG])


def to_tensors(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8/float gray ``[H, W]`` (0..255) and labels ``[H, W]`` → ``[1, S, S]`` in [-1, 1], ``[S, S]``."""
    img = torch.from_numpy(np.asarray(image, dtype=np.float32))[None, None]  # [1, 1, H, W]
    lab = torch.from_numpy(np.asarray(mask, dtype=np.int64))  # [H, W]
    if size is not None and tuple(img.shape[-2:]) != size:
        img = F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False)
        lab = F.interpolate(lab[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return (img[0] / 127.5 - 1.0).clamp_(-1.0, 1.0), lab


def _resize_np(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    img, lab = to_tensors(image, mask, size)
    return ((img[0] + 1.0) * 127.5).numpy(), lab.numpy().astype(np.uint8)


class PairDataset(Dataset):
    """A source's pairs at ``size``, optionally augmented; ``repeats`` views per pair.

    >>> ds = PairDataset(FolderSource("runs/phantom-tee"), size=128,
    ...                  augment=AugmentConfig(), repeats=5)  # doctest: +SKIP
    >>> image, label = ds[0]  # [1, 128, 128] float in [-1, 1], [128, 128] long  # doctest: +SKIP
    """

    def __init__(
        self,
        source: PairSource,
        size: int | tuple[int, int] = 256,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        epoch: int = 0,
        repeats: int = 1,
    ) -> None:
        if repeats < 1:
            raise InputError(f"repeats must be >= 1, got {repeats}")
        self.source, self.size, self.augment = source, _size2(size), augment
        self.seed, self.epoch, self.repeats = int(seed), int(epoch), int(repeats)

    @property
    def schema(self) -> LabelSchema:
        return self.source.schema

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source) * self.repeats

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        image, mask = self.source.load(index % len(self.source))
        if self.augment is None:
            return to_tensors(image, mask, self.size)
        image, mask = _resize_np(image, mask, self.size)
        rng = augment_rng(self.seed, index, self.epoch)
        image, mask = augment_pair(image, mask, rng, self.augment, fill_label(self.schema))
        return to_tensors(image, mask, None)


class PhantomDataset(Dataset):
    """``n`` phantom frames drawn on the fly: item ``i`` is ``phantom_case(seed=case_seed(seed, i))``.

    >>> ds = PhantomDataset("tee", n=1000, size=128, seed=0)
    >>> ds.schema.name, ds[3][0].shape, ds[3][1].shape
    ('tee', torch.Size([1, 128, 128]), torch.Size([128, 128]))
    """

    def __init__(
        self,
        modality: str,
        n: int,
        size: int = 256,
        seed: int = 0,
        view: str | None = None,
        augment: AugmentConfig | None = None,
        epoch: int = 0,
    ) -> None:
        from tte2tee_fast.data.phantom import MAX_SIZE, MIN_SIZE, check_view

        if n < 1:
            raise InputError(f"n must be >= 1, got {n}")
        if not MIN_SIZE <= int(size) <= MAX_SIZE:
            raise InputError(f"phantom size {size} is out of range; use {MIN_SIZE}..{MAX_SIZE}")
        self.view = check_view(modality, view)
        self.modality, self.n, self.size = modality, int(n), int(size)
        self.seed, self.augment, self.epoch = int(seed), augment, int(epoch)
        self.schema = get_schema(modality)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from tte2tee_fast.data.phantom import case_seed, phantom_case

        if not 0 <= index < self.n:
            raise IndexError(index)
        case = phantom_case(self.modality, self.view, self.size, seed=case_seed(self.seed, index))
        image, mask = case.image, case.mask
        if self.augment is not None:
            rng = augment_rng(self.seed, index, self.epoch)
            image, mask = augment_pair(image, mask, rng, self.augment, fill_label(self.schema))
        return to_tensors(image, mask, None)


def detect_format(root: str | Path) -> str:
    """``folder`` when ``root`` looks like image/mask pairs, ``camus`` when it holds patients."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: data folder not found")
    if (root / "images").is_dir() or (root / "masks").is_dir() or any(root.glob("*_mask.*")):
        return "folder"
    if root.name.lower().startswith("patient") or next(root.rglob("patient*_gt.*"), None):
        return "camus"
    return "folder"


def open_source(
    root: str | Path,
    fmt: str = "auto",
    schema: str | None = None,
    value_map: Mapping[int | str, str | int] | None = None,
) -> PairSource:
    """A folder or CAMUS source for ``root``; CAMUS frames always come out in ``tte``."""
    from tte2tee_fast.data.camus import CamusSource
    from tte2tee_fast.data.folder import FolderSource

    if fmt not in FORMATS:
        raise InputError(f"unknown data format {fmt!r}; choose one of {list(FORMATS)}")
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt == "camus":
        if schema not in (None, "tte"):
            raise InputError(
                f"CAMUS frames are converted to the 'tte' schema; --schema {schema} does not apply"
            )
        return CamusSource(root, value_map=value_map)
    return FolderSource(root, schema, value_map)


@dataclass
class DataSummary:
    """What :func:`summarize` found: pair count, frame sizes, pixel count per label value."""

    schema: LabelSchema
    n: int = 0
    sizes: Counter = field(default_factory=Counter)  # (H, W) -> number of pairs
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))  # [256]

    def fractions(self) -> dict[str, float]:
        total = max(int(self.pixels.sum()), 1)
        return {
            n: float(self.pixels[v]) / total
            for n, v in zip(self.schema.names, self.schema.values, strict=True)
        }

    def describe(self) -> str:
        sizes = ", ".join(f"{h}x{w} ({c})" for (h, w), c in sorted(self.sizes.items()))
        lines = [f"schema: {self.schema.name}", f"pairs: {self.n}", f"sizes (HxW): {sizes}"]
        lines.append("label pixel fractions:")
        for (name, frac), value in zip(self.fractions().items(), self.schema.values, strict=True):
            lines.append(f"  {value} {name:<14s} {100.0 * frac:6.2f}%")
        return "\n".join(lines)


def summarize(source: PairSource) -> DataSummary:
    """Read and check every pair of ``source`` (raising on the first bad one), counting as it goes."""
    from tqdm import tqdm

    out = DataSummary(schema=source.schema)
    for i in tqdm(range(len(source)), desc="checking pairs", disable=None, leave=False):
        _, mask = source.load(i)
        out.n += 1
        out.sizes[tuple(mask.shape)] += 1
        out.pixels += np.bincount(mask.ravel(), minlength=256)[:256]
    return out
