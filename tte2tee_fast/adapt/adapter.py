"""The adapter folder: a standard peft LoRA adapter plus what tte2tee needs to use it safely.

Layout (peft itself loads the first two: ``PeftModel.from_pretrained(base, folder)``)::

    adapter_config.json          peft LoraConfig (target_modules, r, lora_alpha, ...)
    adapter_model.safetensors    base_model.model.<module>.lora_A.weight / .lora_B.weight
    tte2tee.json                 {"format_version": 1, "base_model_hash": sha256 of the base
                                  (models.model_hash), "maskr2": MaskR² spec JSON,
                                  "source_schema": "tee", "target_preset": "mlp", "rank": 1,
                                  "alpha": 1.0, "trainable_parameters": 98048}

:func:`save_adapter` writes the folder atomically (temporary folder, then rename);
:func:`load_adapter_meta` and :func:`read_adapter` check it and raise :class:`InputError` naming
the file at fault; :func:`attach_adapter` puts the LoRA layers on a base model (through peft)
after checking that the base is the one the adapter was trained on. Only plain LoRA is part of
the format (no DoRA, no LoRA bias, no per-layer rank or alpha patterns): that is what the merge
in :mod:`tte2tee_fast.adapt.merge` implements.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tte2tee_fast.adapt.targets import TARGET_PRESETS, lora_shapes, resolve_targets
from tte2tee_fast.condition.maskr2 import MaskR2Spec
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import staged_folder
from tte2tee_fast.models.io import model_hash

FORMAT_VERSION = 1
META_NAME = "tte2tee.json"
CONFIG_NAME = "adapter_config.json"  # peft.utils.CONFIG_NAME
WEIGHTS_NAME = "adapter_model.safetensors"  # peft.utils.SAFETENSORS_WEIGHTS_NAME
KEY_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before module names
_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "base_model_hash": str,
    "maskr2": dict,
    "source_schema": str,
    "target_preset": str,
    "rank": int,
    "alpha": (int, float),
    "trainable_parameters": int,
}


@dataclass(frozen=True)
class AdapterMeta:
    """The contents of ``tte2tee.json``."""

    base_model_hash: str
    maskr2: MaskR2Spec
    target_preset: str
    rank: int
    alpha: float
    trainable_parameters: int
    format_version: int = FORMAT_VERSION

    @property
    def source_schema(self) -> str:
        return self.maskr2.source.name

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "base_model_hash": self.base_model_hash,
            "maskr2": self.maskr2.to_json(),
            "source_schema": self.source_schema,
            "target_preset": self.target_preset,
            "rank": self.rank,
            "alpha": self.alpha,
            "trainable_parameters": self.trainable_parameters,
        }


@dataclass(frozen=True)
class Adapter:
    """A checked adapter folder: metadata, peft config and LoRA weights per module.

    ``weights[name] = (A, B)``: ``A`` ``[r, in]`` / ``[r, in, kh, kw]``, ``B`` ``[out, r]`` /
    ``[out, r, 1, 1]`` as stored (any float dtype, CPU), every value finite.
    """

    path: Path
    meta: AdapterMeta
    config: LoraConfig
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def scaling(self) -> float:
        """peft's LoRA scale: ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA)."""
        r, alpha = self.config.r, self.config.lora_alpha
        return alpha / math.sqrt(r) if self.config.use_rslora else alpha / r


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Raise :class:`InputError` naming the first tensor of ``tensors`` with a NaN / Inf."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InputError(f"{where}: tensor {name} holds non-finite values (NaN/Inf)")


def _check_plain_lora(config: Any, where: str) -> None:
    if not isinstance(config, LoraConfig):
        raise InputError(f"{where}: not a LoRA adapter ({type(config).__name__})")
    unsupported = [
        what
        for what, used in (
            ("use_dora", config.use_dora),
            ("lora_bias", config.lora_bias),
            ("rank_pattern", bool(config.rank_pattern)),
            ("alpha_pattern", bool(config.alpha_pattern)),
            ("fan_in_fan_out", config.fan_in_fan_out),
        )
        if used
    ]
    if unsupported:
        raise InputError(f"{where}: plain LoRA only; unsupported options {unsupported}")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def save_adapter(
    model_with_lora: nn.Module,
    base_hash: str,
    spec: MaskR2Spec,
    preset: str,
    out_dir: str | os.PathLike,
    adapter_name: str | None = None,
) -> Path:
    """Write the LoRA adapter of ``model_with_lora`` to folder ``out_dir`` (atomically).

    ``model_with_lora``: a SemanticUNet after ``add_adapter`` (or a ``PeftModel`` around one);
    ``adapter_name`` may be left out when it holds exactly one adapter. ``base_hash`` is
    ``models.model_hash`` of the base before LoRA, ``spec`` the MaskR² spec the adapter was
    trained with, ``preset`` its target preset. Non-finite LoRA weights are refused.
    """
    model = _unwrap(model_with_lora)
    configs = getattr(model, "peft_config", None) or {}
    if not configs:
        raise InputError("model has no LoRA adapter (add one with add_adapter or get_peft_model)")
    if adapter_name is None:
        if len(configs) != 1:
            raise InputError(f"model holds adapters {sorted(configs)}: pass adapter_name (one)")
        adapter_name = next(iter(configs))
    if adapter_name not in configs:
        raise InputError(f"model has no adapter {adapter_name!r} (has {sorted(configs)})")
    if preset not in TARGET_PRESETS:
        raise InputError(f"unknown LoRA target preset {preset!r}; choose one of {TARGET_PRESETS}")
    if (
        not isinstance(base_hash, str)
        or len(base_hash) != 64
        or base_hash.strip("0123456789abcdef")
    ):
        raise InputError(
            f"base_hash must be a sha256 hex digest (models.model_hash), got {base_hash!r}"
        )
    config = copy.deepcopy(configs[adapter_name])
    _check_plain_lora(config, f"adapter {adapter_name!r}")
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    tensors = {KEY_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    check_finite(tensors, f"adapter {adapter_name!r}")
    if isinstance(config.target_modules, set):
        config.target_modules = sorted(config.target_modules)
    config.inference_mode = True
    config.base_model_name_or_path = None
    meta = AdapterMeta(
        base_model_hash=base_hash,
        maskr2=spec,
        target_preset=preset,
        rank=int(config.r),
        alpha=float(config.lora_alpha),
        trainable_parameters=sum(t.numel() for t in tensors.values()),
    )
    with staged_folder(out_dir) as tmp:
        tmp.mkdir()
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / META_NAME).write_text(json.dumps(meta.to_json(), indent=2) + "\n")
    return Path(out_dir)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"adapter folder {path.parent} has no {path.name}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _adapter_dir(adapter_dir: str | os.PathLike) -> Path:
    from tte2tee_fast.packaged import resolve_asset

    folder = resolve_asset(adapter_dir)  # a folder, or a packaged adapter's name
    if not folder.is_dir():
        raise InputError(f"adapter folder {folder} does not exist (or is not a folder)")
    for name in (CONFIG_NAME, WEIGHTS_NAME, META_NAME):
        if not (folder / name).is_file():
            raise InputError(f"adapter folder {folder} has no {name}")
    return folder


def load_adapter_meta(adapter_dir: str | os.PathLike) -> AdapterMeta:
    """Read and check ``tte2tee.json`` of an adapter folder (the folder must be complete)."""
    path = _adapter_dir(adapter_dir) / META_NAME
    data = _read_json(path)
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(
            f"{path}: unknown format_version {version!r}; this tte2tee reads {FORMAT_VERSION}"
        )
    for key, kind in _META_TYPES.items():
        if key not in data:
            raise InputError(f"{path}: missing key {key!r}")
        if isinstance(data[key], bool) or not isinstance(data[key], kind):
            raise InputError(f"{path}: {key} has the wrong type: {data[key]!r}")
    spec = MaskR2Spec.from_json(data["maskr2"], source=f"{path} (maskr2)")
    if data["source_schema"] != spec.source.name:
        raise InputError(
            f"{path}: source_schema {data['source_schema']!r} differs from the MaskR² spec's "
            f"{spec.source.name!r}"
        )
    if data["target_preset"] not in TARGET_PRESETS:
        raise InputError(
            f"{path}: unknown target_preset {data['target_preset']!r}; known {TARGET_PRESETS}"
        )
    return AdapterMeta(
        base_model_hash=data["base_model_hash"],
        maskr2=spec,
        target_preset=data["target_preset"],
        rank=data["rank"],
        alpha=float(data["alpha"]),
        trainable_parameters=data["trainable_parameters"],
        format_version=version,
    )


def _read_config(folder: Path, meta: AdapterMeta) -> LoraConfig:
    path = folder / CONFIG_NAME
    data = _read_json(path)
    if data.get("peft_type") != "LORA":
        raise InputError(f"{path}: peft_type {data.get('peft_type')!r} is not LORA")
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: not a valid peft LoraConfig: {e}") from None
    _check_plain_lora(config, str(path))
    if (config.r, float(config.lora_alpha)) != (meta.rank, meta.alpha):
        raise InputError(
            f"{path}: r={config.r}, lora_alpha={config.lora_alpha} disagree with {META_NAME} "
            f"(rank={meta.rank}, alpha={meta.alpha})"
        )
    return config


def _read_weights(folder: Path, rank: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    path = folder / WEIGHTS_NAME
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for truncated / foreign files
        raise InputError(f"{path} is not a readable safetensors file: {e}") from None
    check_finite(tensors, str(path))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        body = key.removeprefix(KEY_PREFIX)
        module, _, leaf = body.rpartition(".lora_")
        if not key.startswith(KEY_PREFIX) or leaf not in ("A.weight", "B.weight"):
            raise InputError(f"{path}: unexpected tensor {key} (plain LoRA A/B weights only)")
        pairs.setdefault(module, {})[leaf[0]] = t
    weights = {}
    for module, ab in pairs.items():
        for leaf in "AB":
            if leaf not in ab:
                raise InputError(f"{path}: module {module} has no lora_{leaf}.weight")
        if ab["A"].shape[0] != rank or ab["B"].shape[1] != rank:
            raise InputError(
                f"{path}: module {module} has LoRA shapes {list(ab['A'].shape)}, "
                f"{list(ab['B'].shape)}, not rank {rank}"
            )
        weights[module] = (ab["A"], ab["B"])
    if not weights:
        raise InputError(f"{path} holds no LoRA weights")
    return weights


def read_adapter(adapter_dir: str | os.PathLike) -> Adapter:
    """Read and check a whole adapter folder (metadata, peft config, finite LoRA weights)."""
    folder = _adapter_dir(adapter_dir)
    meta = load_adapter_meta(folder)
    config = _read_config(folder, meta)
    return Adapter(folder, meta, config, _read_weights(folder, meta.rank))


def check_base(base_model: nn.Module, adapter: Adapter) -> None:
    """Refuse a base that is not the adapter's: LoRA already attached, another weight hash, or
    layers that do not match the adapter's target preset and LoRA shapes."""
    if any("lora_" in k for k in base_model.state_dict()):
        raise InputError("base model already carries LoRA layers: pass a clean base model")
    base_hash = model_hash(base_model)
    if base_hash != adapter.meta.base_model_hash:
        raise InputError(
            f"adapter {adapter.path} was trained on base {adapter.meta.base_model_hash}, "
            f"but the given base model hashes to {base_hash}"
        )
    check_targets(base_model, adapter)


def check_targets(model: nn.Module, adapter: Adapter) -> None:
    """Refuse a model whose layers do not match the adapter's target preset and LoRA shapes."""
    targets = resolve_targets(model, adapter.meta.target_preset)
    if set(targets) != set(adapter.weights):
        extra = sorted(set(adapter.weights) - set(targets))
        lacking = sorted(set(targets) - set(adapter.weights))
        raise InputError(
            f"adapter {adapter.path}: weights do not match target preset "
            f"{adapter.meta.target_preset!r} (extra: {extra[:3]}, missing: {lacking[:3]})"
        )
    for name in targets:
        a, b = adapter.weights[name]
        want = lora_shapes(model.get_submodule(name), adapter.meta.rank)
        if (tuple(a.shape), tuple(b.shape)) != want:
            raise InputError(
                f"adapter {adapter.path}: {name} LoRA shapes {list(a.shape)}, {list(b.shape)} "
                f"do not fit the base layer (expects {list(want[0])}, {list(want[1])})"
            )


def attach_adapter(
    base_model: nn.Module, adapter_dir: str | os.PathLike, adapter_name: str = "default"
) -> nn.Module:
    """Put the adapter's LoRA layers on ``base_model`` (in place, via peft) and return it.

    The result runs base + LoRA unmerged (``model(x, t, cond)``), in eval mode, adapter frozen.
    Raises :class:`InputError` for an incomplete / invalid folder, non-finite weights, or a base
    whose hash differs from the adapter's ``base_model_hash`` (both hashes named).
    """
    adapter = read_adapter(adapter_dir)
    check_base(base_model, adapter)
    base_model.add_adapter(copy.deepcopy(adapter.config), adapter_name=adapter_name)
    state = {}
    for module, (a, b) in adapter.weights.items():
        state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"] = a, b
    result = set_peft_model_state_dict(base_model, state, adapter_name=adapter_name)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise InputError(
            f"adapter {adapter.path}: {CONFIG_NAME} and {WEIGHTS_NAME} disagree (not loaded: "
            f"{result.unexpected_keys[:3]}, not in the file: {missing[:3]})"
        )
    return base_model.eval()
