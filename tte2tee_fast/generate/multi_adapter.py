"""Mixed-adapter sampling: several LoRA adapters served unmerged, side by side in one batch.

Every adapter is fused into the base's ``nn.Linear`` layers at once
(:func:`fuse_adapter_folders`: one
:class:`~tte2tee_fast.kernels.fused_lora.FusedLoRALinear` per target serves all K adapters,
the fused Triton kernel on CUDA, the pure-torch reference elsewhere). Then, in a run:

- frame ``i`` is drawn with adapter ``i % K`` (round-robin in the order the adapters are
  given; ``i`` is the frame's index in the run, so the assignment never depends on the batch
  size), through :func:`~tte2tee_fast.kernels.fused_lora.adapter_rows`;
- frame ``i`` is conditioned through *its adapter's own* MaskR² spec (``tte2tee.json`` of the
  adapter folder): each row of a batch is remapped with the spec of the row's adapter.

So frame ``i`` equals frame ``i`` of the same run on the merged model of adapter ``i % K``
(same seed, same masks; ``tests/test_multi_adapter.py`` checks it, guided and unguided).

Limits (refused with an :class:`InputError`):

- one mask schema: every adapter's spec must take masks of the same source schema, since a run
  reads one set of masks. Adapters for different modalities need separate runs for now;
- one base: each adapter must have been trained on the given base (weight hash, target
  shapes), as :func:`~tte2tee_fast.adapt.adapter.check_base` checks;
- ``nn.Linear`` targets only (the ``mlp`` preset): conv adapters (``attn``, ``conv``,
  ``spade``, ``all``) must be merged (``tte2tee merge``) instead.

Classifier-free guidance runs the network once on ``cat([x, x])`` with ``[cond; null]``
(``2B`` rows). ``FusedLoRALinear`` tiles a ``[B]`` index for a 2-D input of ``2B`` rows
(``idx.repeat(2)``), so the unconditional half of frame ``i`` also runs adapter ``i % K`` -- what
the merged model of that adapter computes. The only ``nn.Linear`` layers of the SemanticUNet are
the time MLP and the ResBlock embedding projections, whose inputs are 2-D ``[rows, features]``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tte2tee_fast.adapt.adapter import check_base, load_adapter_meta, read_adapter
from tte2tee_fast.condition.maskr2 import MaskR2Spec, remap_one_hot
from tte2tee_fast.errors import InputError
from tte2tee_fast.kernels.fused_lora import adapter_rows, fuse_adapters


@dataclass(frozen=True)
class MixedAdapters:
    """K adapters fused into one model: their folders and MaskR² specs, in index order."""

    paths: tuple[Path, ...]
    specs: tuple[MaskR2Spec, ...]

    @property
    def num_adapters(self) -> int:
        return len(self.specs)

    @property
    def source_schema(self) -> str:
        """The mask schema every adapter takes."""
        return self.specs[0].source.name

    def adapter_of(self, frames: torch.Tensor) -> torch.Tensor:
        """Adapter index of every frame: ``frame % K`` (int64, same shape)."""
        return frames.long() % self.num_adapters

    def remap(self, labels: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """One-hot conditioning ``[b, C, H, W]`` of label maps ``[b, H, W]``, each row through the
        spec of its frame's adapter (``frames`` ``[b]``, host tensor of frame indices)."""
        if labels.shape[0] != frames.numel():
            raise InputError(f"{labels.shape[0]} label maps but {frames.numel()} frame indices")
        which = self.adapter_of(frames.cpu()).tolist()
        b, h, w = labels.shape
        c = self.specs[0].num_channels
        cond = torch.empty((b, c, h, w), dtype=torch.float32, device=labels.device)
        rows_of: dict[MaskR2Spec, list[int]] = {}  # adapters sharing a spec share one remap
        for row, k in enumerate(which):
            rows_of.setdefault(self.specs[k], []).append(row)
        for spec, rows in rows_of.items():
            idx = torch.tensor(rows, device=labels.device)
            cond[idx] = remap_one_hot(labels[idx], spec)  # [n_k, C, H, W]
        return cond

    @contextlib.contextmanager
    def rows(self, model: nn.Module, frames: torch.Tensor) -> Iterator[torch.Tensor]:
        """Run ``model`` inside the block with frame ``frames[j]``'s adapter on batch row ``j``."""
        with adapter_rows(model, self.adapter_of(frames)) as idx:
            yield idx


def parse_adapter_list(text: str) -> tuple[str, ...]:
    """``"a,b, c"`` -> ``("a", "b", "c")``; at least one folder."""
    folders = tuple(part.strip() for part in text.split(",") if part.strip())
    if not folders:
        raise InputError(f"--adapters {text!r} names no adapter folder (give A1,A2,...)")
    return folders


def adapter_specs(
    adapter_dirs: Sequence[str | os.PathLike], label_channels: int
) -> tuple[MaskR2Spec, ...]:
    """The MaskR² spec of every adapter folder, checked to share one mask schema and to produce
    ``label_channels`` channels (``tte2tee.json`` only: the weights are read when fused)."""
    specs = tuple(load_adapter_meta(d).maskr2 for d in adapter_dirs)
    sources = {s.source.name for s in specs}
    if len(sources) > 1:
        listing = ", ".join(
            f"{d}: {s.source.name}" for d, s in zip(adapter_dirs, specs, strict=True)
        )
        raise InputError(
            f"the adapters take masks of different schemas ({listing}); a mixed run reads one "
            "set of masks, so every adapter must take the same schema: sample them in "
            "separate runs"
        )
    for d, spec in zip(adapter_dirs, specs, strict=True):
        if spec.num_channels != label_channels:
            raise InputError(
                f"adapter {d}: its MaskR² spec {spec.name!r} produces {spec.num_channels} "
                f"channels but the model takes {label_channels}"
            )
    return specs


def fuse_adapter_folders(model: nn.Module, adapter_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """:func:`fuse_adapters` from adapter folders (``tte2tee adapt`` output): each is read and
    checked against ``model`` (base hash, targets, shapes) first, and used at its own scale
    (alpha / r). Adapter i of the folders is index i in ``adapter_rows``."""
    adapters = [read_adapter(d) for d in adapter_dirs]
    for adapter in adapters:
        check_base(model, adapter)
    return fuse_adapters(model, [a.weights for a in adapters], [a.scaling for a in adapters])


def fuse_mixed_adapters(
    model: nn.Module, adapter_dirs: Sequence[str | os.PathLike]
) -> MixedAdapters:
    """Fuse the adapter folders into ``model`` (in place, unmerged) for mixed sampling.

    Checks, in this order, each naming the adapter at fault: folders complete, one mask schema,
    channel counts, then (while fusing) base hash, target shapes and ``nn.Linear``-only targets.
    """
    if not adapter_dirs:
        raise InputError("no adapter folders given")
    specs = adapter_specs(adapter_dirs, int(model.config.label_channels))
    fuse_adapter_folders(model, adapter_dirs)
    return MixedAdapters(tuple(Path(d) for d in adapter_dirs), specs)
