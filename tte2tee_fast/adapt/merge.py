"""Merge a LoRA adapter into the base weights, in fp32, like peft's LoRA layer merge without its
multi-adapter bookkeeping.

For every adapted layer with base weight ``W``, LoRA ``A``, ``B`` and scale ``s = alpha / r``::

    W' = W + s * reshape(flatten(B) @ flatten(A))          (computed in fp32, cast back to W's dtype)

Linear: ``A [r, in]``, ``B [out, r]``, so ``B @ A`` is ``[out, in]``. Conv2d (peft's conv LoRA is a
``k x k`` conv to ``r`` channels then a ``1 x 1`` conv): ``A [r, in, kh, kw]``, ``B [out, r, 1, 1]``,
and ``delta[o, i, h, w] = sum_r B[o, r] A[r, i, h, w]``, the same matrix product on the flattened
kernels (what peft computes as ``conv2d(A^T, B)^T``, and ``B @ A`` for 1x1 kernels).

A merged model is an ordinary SemanticUNet: :func:`merge_to_folder` writes it with
``save_model`` plus ``maskr2.json``, the adapter's MaskR² spec, so tools fed raw label maps of the
new modality remap them the same way; :func:`load_model_spec` reads it back (the identity TTE spec
for a folder without one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from tte2tee_fast.adapt.adapter import (
    Adapter,
    check_base,
    check_finite,
    check_targets,
    read_adapter,
)
from tte2tee_fast.condition.maskr2 import MaskR2Spec, load_spec
from tte2tee_fast.data.schemas import TTE
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import staged_folder
from tte2tee_fast.models.io import CONFIG_NAME, load_model, save_model

MASKR2_NAME = "maskr2.json"


def lora_delta(a: torch.Tensor, b: torch.Tensor, scaling: float, shape: torch.Size) -> torch.Tensor:
    """fp32 ``scaling * B @ A`` shaped like the base weight (``[out, in]`` or ``[out, in, kh, kw]``)."""
    delta = b.float().flatten(1) @ a.float().flatten(1)  # [out, r] @ [r, in*kh*kw]
    return delta.reshape(shape) * scaling


def _apply(model: nn.Module, adapter: Adapter, sign: float) -> None:
    """``W <- W + sign * delta`` on every adapted layer; all-or-nothing if a result is not finite."""
    new = {}
    for name, (a, b) in adapter.weights.items():
        w = model.get_submodule(name).weight
        merged = w.detach().float() + sign * lora_delta(
            a.to(w.device), b.to(w.device), adapter.scaling, w.shape
        )
        check_finite({f"{name}.weight": merged}, f"merging adapter {adapter.path}")
        new[name] = merged.to(w.dtype)
    with torch.no_grad():
        for name, w in new.items():
            model.get_submodule(name).weight.copy_(w)


def merge_adapter(base_model: nn.Module, adapter_dir: str | os.PathLike) -> nn.Module:
    """Merge the adapter in ``adapter_dir`` into ``base_model`` (in place) and return it.

    Refuses (InputError) an incomplete adapter folder, non-finite adapter weights or merged
    weights (the tensor is named), and a base whose hash differs from the adapter's.
    """
    adapter = read_adapter(adapter_dir)
    check_base(base_model, adapter)
    _apply(base_model, adapter, 1.0)
    return base_model


def unmerge_adapter(merged_model: nn.Module, adapter_dir: str | os.PathLike) -> nn.Module:
    """Subtract the adapter merged by :func:`merge_adapter` (in place); exact up to fp32
    rounding, so the result's hash may differ from the original base's."""
    adapter = read_adapter(adapter_dir)
    check_targets(merged_model, adapter)
    _apply(merged_model, adapter, -1.0)
    return merged_model


def merge_to_folder(
    base_dir: str | os.PathLike, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> Path:
    """Load the base model folder, merge the adapter, write a model folder with ``maskr2.json``.

    The output is written under a temporary name and renamed when complete.
    """
    adapter = read_adapter(adapter_dir)  # check the small folder before loading the model
    model = load_model(base_dir)
    check_base(model, adapter)
    _apply(model, adapter, 1.0)
    with staged_folder(out_dir) as tmp:
        save_model(model, tmp)
        adapter.meta.maskr2.save(tmp / MASKR2_NAME)
    return Path(out_dir)


def load_model_spec(model_dir: str | os.PathLike) -> MaskR2Spec:
    """The MaskR² spec that goes with a model folder: its ``maskr2.json`` (a merged adapter), or
    the identity spec of the TTE schema the base is trained on when the folder has none."""
    folder = Path(model_dir)
    cfg_path = folder / CONFIG_NAME
    try:
        channels = json.loads(cfg_path.read_text()).get("label_channels")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise InputError(f"model folder {folder}: cannot read {CONFIG_NAME}: {e}") from None
    path = folder / MASKR2_NAME
    spec = load_spec(path) if path.is_file() else MaskR2Spec.identity(TTE)
    if channels != spec.num_channels:
        where = path if path.is_file() else f"{folder} (no {MASKR2_NAME}: identity {TTE.name})"
        raise InputError(
            f"MaskR² spec {where} has {spec.num_channels} channels but the model in {folder} "
            f"takes {channels} label channels"
        )
    return spec
