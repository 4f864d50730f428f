"""Training checkpoints (safetensors + JSON, no pickles), written atomically.

A checkpoint folder holds::

    model.safetensors       the trained tensors (every weight, or only an adapter's LoRA)
    ema.safetensors         their EMA
    optimizer.safetensors   the optimizer's tensors; optimizer.json the rest of its state
    state.json              step, config, elapsed seconds and what the run adds (data hash...)

Used by the training loop (:mod:`tte2tee_fast.training.loop`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import staged_folder, write_json_atomic
from tte2tee_fast.training.ema import EMA
from tte2tee_fast.training.trainable import Trainable


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors tensors and a JSON-able index."""
    tensors: dict[str, torch.Tensor] = {}
    index: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, pstate in state["state"].items():
        entry = {}
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value.detach().to("cpu").contiguous().clone()
                entry[name] = {"tensor": f"{pid}.{name}"}
            else:
                entry[name] = {"value": value}
        index["state"][str(pid)] = entry
    return tensors, index


def optimizer_from_flat(tensors: dict[str, torch.Tensor], index: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_flat`."""
    groups = []
    for g in index["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    state = {
        int(pid): {
            name: tensors[v["tensor"]] if "tensor" in v else v["value"] for name, v in entry.items()
        }
        for pid, entry in index["state"].items()
    }
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    out_dir: Path,
    model: torch.nn.Module | Trainable,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write ``out_dir/checkpoint`` atomically (a temporary folder renamed when complete).

    ``model.safetensors`` holds ``model.state_dict()``: every weight of a model, or only the
    trained tensors of a :class:`Trainable` (the LoRA weights of an adapter run). ``extra``:
    more named tensor sets a run keeps (``NAME.safetensors``, e.g. the best weights so far).
    """
    dest = out_dir / "checkpoint"
    with staged_folder(dest) as tmp:
        tmp.mkdir()
        save_file(_tensors(model.state_dict()), str(tmp / "model.safetensors"))
        save_file(_tensors(ema.state_dict()), str(tmp / "ema.safetensors"))
        opt_tensors, opt_index = optimizer_to_flat(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        write_json_atomic(tmp / "optimizer.json", opt_index)
        for name, tensors in (extra or {}).items():
            save_file(_tensors(tensors), str(tmp / f"{name}.safetensors"))
        write_json_atomic(tmp / "state.json", state)
    return dest


def read_checkpoint_state(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``checkpoint/state.json`` of a training folder, or None when it has no checkpoint."""
    path = Path(out_dir) / "checkpoint" / "state.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON (corrupt checkpoint?): {err}") from None


def load_checkpoint(
    ckpt: Path,
    trainable: Trainable,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    extra: tuple[str, ...] = (),
) -> dict[str, dict[str, torch.Tensor]]:
    """Restore ``trainable``, ``ema`` and ``optimizer`` from checkpoint folder ``ckpt``; returns
    the ``extra`` tensor sets by name (see :func:`save_checkpoint`)."""
    try:
        out = {name: load_file(str(ckpt / f"{name}.safetensors")) for name in extra}
        trainable.load_state_dict(load_file(str(ckpt / "model.safetensors")), where=str(ckpt))
        ema.load_state_dict(load_file(str(ckpt / "ema.safetensors")))
        index = json.loads((ckpt / "optimizer.json").read_text())
        tensors = load_file(str(ckpt / "optimizer.safetensors"))
        optimizer.load_state_dict(optimizer_from_flat(tensors, index))
        return out
    except InputError:
        raise
    except Exception as err:  # missing file, truncated safetensors, shape mismatch...
        raise InputError(f"checkpoint {ckpt} cannot be restored: {err}") from None
