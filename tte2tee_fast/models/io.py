"""Checked save / load of SemanticUNet folders (diffusers layout) and a stable weight hash.

A model folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors``, exactly what
``SemanticUNet.save_pretrained`` writes, so ``SemanticUNet.from_pretrained`` reads it too.
:func:`load_model` adds the checks a user needs: every failure is an :class:`InputError` that
names the folder, the file or the first tensor at fault.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import staged_folder
from tte2tee_fast.models.unet import SemanticUNet

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def _read_config(folder: Path) -> dict:
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise InputError(f"model folder {folder} has no {CONFIG_NAME}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{cfg_path} is not valid JSON: {err}") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}")
    name = cfg.get("_class_name", SemanticUNet.__name__)
    if name != SemanticUNet.__name__:
        raise InputError(f"{cfg_path} describes a {name!r}, not a {SemanticUNet.__name__}")
    return cfg


def _read_weights(weights: Path) -> dict[str, torch.Tensor]:
    if not weights.is_file():
        raise InputError(f"model folder {weights.parent} has no {WEIGHTS_NAME}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            # clone: fresh, aligned storage, so kernels (and results) match a model built in memory
            return {k: _as_fp32(f.get_tensor(k)).clone() for k in f.keys()}
    except Exception as err:  # safetensors raises several types for truncated / foreign files
        raise InputError(
            f"{weights} is not a readable safetensors file (truncated or corrupt?): {err}"
        ) from None


def _as_fp32(t: torch.Tensor) -> torch.Tensor:
    """Half-precision storage (fp16 / bf16 files) is upcast: models always compute from fp32."""
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


def _check_against(model: SemanticUNet, state: dict[str, torch.Tensor], weights: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} expects {list(expected[k])} but the file has {list(state[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches, first: {mismatched[0]}")
        if missing:
            parts.append(f"{len(missing)} tensors missing, first: {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors, first: {unexpected[0]}")
        raise InputError(
            f"weights {weights} do not match {weights.parent / CONFIG_NAME} (config of another "
            f"preset or size?): " + "; ".join(parts)
        )
    for k in sorted(state):
        t = state[k]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InputError(f"weights {weights} hold non-finite values (NaN/Inf) in tensor {k}")


def load_model(path: str | os.PathLike) -> SemanticUNet:
    """Load a SemanticUNet folder with checks; returns the model in eval mode on the CPU.

    Raises :class:`InputError` for a missing folder, a missing or invalid ``config.json``, a
    missing / truncated / non-safetensors weights file, weights whose names or shapes do not
    match the config (e.g. the config of another preset), or non-finite weights.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"model folder {folder} does not exist (or is not a folder)")
    cfg = _read_config(folder)
    weights = folder / WEIGHTS_NAME
    state = _read_weights(weights)
    try:
        with torch.device("meta"):  # no allocation: the loaded tensors are assigned below
            model = SemanticUNet.from_config(cfg)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"{folder / CONFIG_NAME} is not a valid SemanticUNet config: {err}"
        ) from None
    _check_against(model, state, weights)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def save_model(
    model: SemanticUNet,
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """Write ``model`` to folder ``path`` (config.json + safetensors) atomically.

    The folder is written under a temporary name beside ``path`` and renamed when complete;
    an existing folder at ``path`` is replaced only after the new one is fully written.
    ``dtype`` (``torch.float16`` / ``torch.bfloat16``) stores the floating weights at that
    precision, half the size (the packaged weights); :func:`load_model` upcasts them to fp32.
    Weights that do not fit the storage type (overflow to inf) are refused. ``extra``: more
    files (name -> bytes) written into the same folder before it appears.
    """
    if any("lora_" in k for k in model.state_dict()):
        raise InputError("model carries LoRA adapter layers: merge or unload them before saving")
    if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InputError(f"weights can be stored as float32, float16 or bfloat16, not {dtype}")
    stored = model
    if dtype not in (None, torch.float32):
        stored = copy.deepcopy(model)
        for t in (*stored.parameters(), *stored.buffers()):  # not .to(): diffusers warns there
            if t.is_floating_point():
                t.data = t.data.to(dtype)
        for k, t in stored.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise InputError(f"tensor {k} overflows {dtype}: store this model as float32")
    dest = Path(path)
    with staged_folder(dest) as tmp:
        stored.save_pretrained(str(tmp), safe_serialization=True)
        for name, data in (extra or {}).items():
            (tmp / name).write_bytes(data)
    return dest


def _update(h: hashlib._Hash, name: str, t: torch.Tensor) -> None:
    t = _as_fp32(t.detach().to("cpu")).contiguous()  # a half-stored file hashes as it loads
    h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def model_hash(model_or_path: SemanticUNet | str | os.PathLike) -> str:
    """Stable sha256 (hex) over the sorted tensor names, dtypes, shapes and bytes.

    Accepts a model, a model folder or a ``.safetensors`` file; a saved model and the model it
    was saved from hash the same (half-precision files hash as their fp32 upcast, i.e. as the
    model :func:`load_model` returns). Adapters record it as their base-model hash.
    """
    h = hashlib.sha256()
    if isinstance(model_or_path, torch.nn.Module):
        state = model_or_path.state_dict()
        for k in sorted(state):
            _update(h, k, state[k])
        return h.hexdigest()
    p = Path(model_or_path)
    weights = p / WEIGHTS_NAME if p.is_dir() else p
    if not weights.is_file():
        raise InputError(f"no weights to hash at {weights}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            for k in sorted(f.keys()):
                _update(h, k, f.get_tensor(k))
    except Exception as err:
        raise InputError(f"{weights} is not a readable safetensors file: {err}") from None
    return h.hexdigest()


def export_weights(
    model_dir: str | os.PathLike, out: str | os.PathLike, dtype: str = "float16"
) -> tuple[Path, int]:
    """Copy model folder ``model_dir`` to ``out`` with its weights stored as ``dtype``.

    Also copies ``maskr2.json`` and ``training.json`` when the folder has them, and, for a
    training run's ``ema/``, writes ``training.json`` from the run's ``train_config.json`` and
    the last line of its ``train_log.jsonl`` (how the weights were made) and takes the run's
    ``maskr2.json``. Returns the folder and the size of its weights file in bytes.
    """
    src, dest = Path(model_dir), Path(out)
    model = load_model(src)
    extra = {
        n: (src / n).read_bytes() for n in ("maskr2.json", "training.json") if (src / n).is_file()
    }
    run = src.parent
    if not (src / "training.json").is_file() and (run / "train_config.json").is_file():
        log = run / "train_log.jsonl"
        lines = log.read_text().splitlines() if log.is_file() else []
        provenance = {
            "train_config": json.loads((run / "train_config.json").read_text()),
            "last_log": json.loads(lines[-1]) if lines else None,
            "weights": f"EMA, stored as {dtype} by `tte2tee export weights`",
        }
        extra["training.json"] = (json.dumps(provenance, indent=2) + "\n").encode()
        if "maskr2.json" not in extra and (run / "maskr2.json").is_file():
            extra["maskr2.json"] = (run / "maskr2.json").read_bytes()
    save_model(model, dest, getattr(torch, dtype), extra)
    return dest, (dest / WEIGHTS_NAME).stat().st_size
