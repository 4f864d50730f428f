"""MaskR²: map the labels of a new modality onto the conditioning channels of the base model.

A spec says, for every label of a *source* schema (the new modality, e.g. ``tee``), which
one-hot channel of the base model it lights up. The base model was trained on the *target*
schema (``tte``) and has one channel per target label (``C = target.num_labels``; the
channel of a target label is its integer value). Three ops, after arXiv 2508.13077:

``identity``   one label, the same structure in both modalities (TEE ``lv`` -> ``lv_cavity``).
``reduce``     two or more labels merged into one super-class on one channel.
``repurpose``  one or more labels (a super-class when several) sent to a base channel whose
               structure the new modality lacks (TEE RA+RV -> the LV-epicardium channel).

The ops differ only in what is checked: ``identity`` takes exactly one label, ``reduce`` at
least two; a ``repurpose`` channel that an ``identity`` rule also uses draws a warning (two
structures would share one channel). Base channels that no rule uses stay all zero.

JSON format (one object; ``target_schema`` defaults to ``"tte"``, ``name`` to
``"<source>-><target>"``; a channel is a target-schema label name or an integer index)::

    {"name": "tee->tte", "source_schema": "tee", "target_schema": "tte",
     "rules": [
       {"op": "identity",  "labels": ["outside"],    "channel": "outside"},
       {"op": "identity",  "labels": ["background"], "channel": "background"},
       {"op": "identity",  "labels": ["la"],         "channel": "la"},
       {"op": "identity",  "labels": ["lv"],         "channel": "lv_cavity"},
       {"op": "repurpose", "labels": ["ra", "rv"],   "channel": "lv_myocardium"}]}

Every source label must be mapped exactly once. Validation errors are :class:`InputError`
naming the file, the rule and the label or channel at fault.

:func:`remap_one_hot` (via :func:`one_hot_from_lut`) is the one torch implementation every
caller uses (training, sampling, ONNX export; the Triton kernel in
``tte2tee_fast.kernels.maskr2`` is checked against it). It is a gather from the lookup table
and a comparison with ``arange(C)``: no Python loop over labels, no data-dependent control
flow, no device->host sync. Label values the spec does not map (negative, beyond the lookup
table, or a hole in the source values) give an all-zero channel vector at that pixel; call
:meth:`MaskR2Spec.check_labels` separately to reject them with a clear error.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tte2tee_fast.data.schemas import LabelSchema, get_schema
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import write_json_atomic

OPS = ("identity", "reduce", "repurpose")

# Built-in specs as plain JSON data; ``builtin_spec(name)`` validates and builds them.
BUILTIN_SPECS: Mapping[str, Mapping[str, Any]] = {
    # 2508.13077: outside cone, background, LA and LV keep their channels; RA+RV form one
    # right-heart super-class repurposed to the LV-myocardium (epicardium) channel, which TEE
    # masks never use (they have no myocardium label).
    "tee->tte": {
        "name": "tee->tte",
        "source_schema": "tee",
        "target_schema": "tte",
        "rules": [
            {"op": "identity", "labels": ["outside"], "channel": "outside"},
            {"op": "identity", "labels": ["background"], "channel": "background"},
            {"op": "identity", "labels": ["la"], "channel": "la"},
            {"op": "identity", "labels": ["lv"], "channel": "lv_cavity"},
            {"op": "repurpose", "labels": ["ra", "rv"], "channel": "lv_myocardium"},
        ],
    },
}

_SPEC_KEYS = {"name", "source_schema", "target_schema", "rules"}
_RULE_KEYS = {"op", "labels", "channel"}


@dataclass(frozen=True)
class MaskR2Rule:
    """``labels`` (source-schema names) all go to base channel ``channel`` (an index)."""

    op: str
    labels: tuple[str, ...]
    channel: int


@dataclass(frozen=True)
class MaskR2Spec:
    """A validated MaskR² spec: source schema, target (base) schema and the rules."""

    name: str
    source: LabelSchema
    target: LabelSchema
    rules: tuple[MaskR2Rule, ...]

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def identity(cls, schema: LabelSchema) -> MaskR2Spec:
        """Every label of ``schema`` on its own channel (a base trained on ``schema`` itself)."""
        rules = tuple(
            MaskR2Rule("identity", (n,), v)
            for n, v in zip(schema.names, schema.values, strict=True)
        )
        return cls(f"{schema.name}->{schema.name}", schema, schema, rules)

    @classmethod
    def from_json(cls, data: Any, source: str = "spec") -> MaskR2Spec:
        """Build and validate a spec from parsed JSON; errors name ``source`` (a file name)."""
        try:
            return _parse(data)
        except InputError as e:
            raise InputError(f"MaskR² spec {source}: {e}") from None

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON data, channels written as target-schema names."""
        return {
            "name": self.name,
            "source_schema": self.source.name,
            "target_schema": self.target.name,
            "rules": [
                {"op": r.op, "labels": list(r.labels), "channel": self.target.name_of(r.channel)}
                for r in self.rules
            ],
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the spec as JSON (to a temporary name, then renamed)."""
        write_json_atomic(path, self.to_json())

    @property
    def num_channels(self) -> int:
        """Number of base-model conditioning channels ``C``."""
        return self.target.num_labels

    def channel_of(self, label: str) -> int:
        """Base channel that source label ``label`` lights up."""
        for rule in self.rules:
            if label in rule.labels:
                return rule.channel
        raise InputError(f"MaskR² spec {self.name!r} has no label {label!r}")

    def lookup_table(self) -> torch.Tensor:
        """LongTensor ``[max_source_value + 1]``: source value -> channel, -1 where unmapped."""
        lut = torch.full((max(self.source.values) + 1,), -1, dtype=torch.int64)
        for rule in self.rules:
            for label in rule.labels:
                lut[self.source.value_of(label)] = rule.channel
        return lut

    def check_labels(self, labels: torch.Tensor | np.ndarray, source: str = "labels") -> None:
        """Raise :class:`InputError` naming ``source`` and every value the source schema lacks."""
        if isinstance(labels, torch.Tensor):
            # on the device: unique there and a small copy; on the CPU: numpy's counting pass
            # (torch.unique sorts: ~15 ms on a batch of 8 label maps of 128², 30x slower)
            on_cpu = labels.device.type == "cpu"
            labels = labels.numpy() if on_cpu else torch.unique(labels).cpu().numpy()
        self.source.validate(np.asarray(labels), source=source)


def _validate(spec: MaskR2Spec) -> None:
    """Structural checks shared by every way a spec is built (messages name the rule)."""
    if spec.target.values != tuple(range(spec.target.num_labels)):
        raise InputError(
            f"target schema {spec.target.name!r} must have values 0..C-1, has {spec.target.values}"
        )
    seen: dict[str, int] = {}
    for i, rule in enumerate(spec.rules):
        where = f"rule {i} ({rule.op} {', '.join(rule.labels)})"
        if rule.op not in OPS:
            raise InputError(f"{where}: unknown op {rule.op!r}; choose one of {list(OPS)}")
        if rule.op == "identity" and len(rule.labels) != 1:
            raise InputError(f"{where}: identity maps exactly one label, got {len(rule.labels)}")
        if rule.op == "reduce" and len(rule.labels) < 2:
            raise InputError(f"{where}: reduce merges at least 2 labels, got {len(rule.labels)}")
        if not rule.labels:
            raise InputError(f"{where}: no labels")
        if isinstance(rule.channel, bool) or not 0 <= rule.channel < spec.num_channels:
            raise InputError(
                f"{where}: channel {rule.channel!r} is out of range: the base has "
                f"{spec.num_channels} channels (0..{spec.num_channels - 1}: "
                f"{', '.join(spec.target.names)})"
            )
        for label in rule.labels:
            if label not in spec.source.names:
                raise InputError(
                    f"{where}: label {label!r} is not in source schema {spec.source.name!r} "
                    f"(labels: {', '.join(spec.source.names)})"
                )
            if label in seen:
                raise InputError(f"label {label!r} is mapped twice (rules {seen[label]} and {i})")
            seen[label] = i
    unmapped = [n for n in spec.source.names if n not in seen]
    if unmapped:
        raise InputError(
            f"labels {unmapped} of source schema {spec.source.name!r} are not mapped by any rule"
        )
    identity_channels = {r.channel for r in spec.rules if r.op == "identity"}
    for i, rule in enumerate(spec.rules):
        if rule.op == "repurpose" and rule.channel in identity_channels:
            warnings.warn(
                f"MaskR² spec {spec.name!r}: rule {i} repurposes channel {rule.channel} "
                f"({spec.target.name_of(rule.channel)}) that an identity rule also uses; "
                "two structures will share one channel",
                UserWarning,
                stacklevel=4,
            )


def _parse(data: Any) -> MaskR2Spec:
    if not isinstance(data, dict):
        raise InputError(f"expected a JSON object, got {type(data).__name__}")
    extra = sorted(set(data) - _SPEC_KEYS)
    if extra:
        raise InputError(f"unknown keys {extra}; allowed {sorted(_SPEC_KEYS)}")
    for key in ("source_schema", "rules"):
        if key not in data:
            raise InputError(f"missing key {key!r}")
    src = get_schema(_expect(data["source_schema"], str, "source_schema"))
    tgt = get_schema(_expect(data.get("target_schema", "tte"), str, "target_schema"))
    name = _expect(data.get("name", f"{src.name}->{tgt.name}"), str, "name")
    rules_data = _expect(data["rules"], list, "rules")
    rules = tuple(_parse_rule(i, r, tgt) for i, r in enumerate(rules_data))
    return MaskR2Spec(name, src, tgt, rules)


def _parse_rule(i: int, data: Any, target: LabelSchema) -> MaskR2Rule:
    where = f"rule {i}"
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object, got {type(data).__name__}")
    extra = sorted(set(data) - _RULE_KEYS)
    missing = sorted(_RULE_KEYS - set(data))
    if extra or missing:
        raise InputError(f"{where}: unknown keys {extra}, missing keys {missing}")
    op = _expect(data["op"], str, f"{where} op")
    labels = _expect(data["labels"], list, f"{where} labels")
    if not all(isinstance(x, str) for x in labels):
        raise InputError(f"{where}: labels must be label names (strings), got {labels}")
    channel = data["channel"]
    if isinstance(channel, str):
        if channel not in target.names:
            raise InputError(
                f"{where}: channel {channel!r} is not a label of target schema {target.name!r} "
                f"(channels: {', '.join(target.names)})"
            )
        channel = target.value_of(channel)
    elif isinstance(channel, bool) or not isinstance(channel, int):
        raise InputError(f"{where}: channel must be a name or an integer, got {channel!r}")
    return MaskR2Rule(op, tuple(labels), channel)


def _expect(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind):
        raise InputError(f"{what} must be a {kind.__name__}, got {value!r}")
    return value


def _identity_schema(name: str) -> str | None:
    """``"tte"`` for ``"tte->tte"``: the schema of an identity spec name, else None."""
    src, sep, tgt = name.partition("->")
    return src if sep and src == tgt else None


def builtin_spec(name: str) -> MaskR2Spec:
    """A built-in spec by name: ``tee->tte``, or ``<schema>-><schema>`` (identity, e.g. TTE)."""
    if name in BUILTIN_SPECS:
        return MaskR2Spec.from_json(BUILTIN_SPECS[name], source=f"built-in {name!r}")
    schema = _identity_schema(name)
    if schema is not None:
        return MaskR2Spec.identity(get_schema(schema))
    raise InputError(
        f"unknown built-in MaskR² spec {name!r}; choose one of {sorted(BUILTIN_SPECS)} "
        "or '<schema>-><schema>' (identity)"
    )


def load_spec(path_or_name: str | os.PathLike) -> MaskR2Spec:
    """Load a spec from a JSON file, or a built-in one by name (see :func:`builtin_spec`)."""
    name = str(path_or_name)
    path = Path(path_or_name)
    if not path.is_file():
        if name in BUILTIN_SPECS or _identity_schema(name) is not None:
            return builtin_spec(name)
        raise InputError(
            f"MaskR² spec {name!r}: no such file, and not a built-in spec name "
            f"({', '.join(sorted(BUILTIN_SPECS))} or '<schema>-><schema>')"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(
            f"MaskR² spec {path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"MaskR² spec {path}: cannot read: {e}") from None
    return MaskR2Spec.from_json(data, source=str(path))


def one_hot_from_lut(
    labels: torch.Tensor, lut: torch.Tensor, num_channels: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One-hot channels ``[B, C, H, W]`` of ``lut[labels]``; unmapped values give all zeros.

    ``labels`` ``[B, H, W]`` of any integer dtype; ``lut`` ``[V]`` int64 (value -> channel, -1
    unmapped) on the same device. Values < 0 or >= V are clamped for the gather and then
    zeroed, so nothing is read out of bounds. ONNX-exportable: Cast, Clip, Gather, Where,
    Equal against a Range; no data-dependent control flow.
    """
    if labels.dim() != 3 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise InputError(
            f"labels must be an integer tensor [B, H, W], got {labels.dtype} {tuple(labels.shape)}"
        )
    idx = labels.long()  # [B, H, W]
    n = lut.shape[0]
    inside = (idx >= 0) & (idx < n)
    chan = lut[idx.clamp(0, n - 1)]  # [B, H, W] gather
    chan = torch.where(inside, chan, -1)
    channels = torch.arange(num_channels, device=labels.device).view(1, -1, 1, 1)
    return (chan.unsqueeze(1) == channels).to(dtype)  # [B, C, H, W]


def remap_one_hot(
    labels: torch.Tensor, spec: MaskR2Spec, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """MaskR² remap + one-hot: ``labels`` ``[B, H, W]`` (source schema) -> ``[B, C, H, W]``.

    Values the spec does not map (negative, too large, or absent from the source schema) give
    all-zero channels; use :meth:`MaskR2Spec.check_labels` to reject them instead.
    """
    return one_hot_from_lut(labels, _device_lut(spec, labels.device), spec.num_channels, dtype)


@functools.lru_cache(maxsize=32)
def _device_lut(spec: MaskR2Spec, device: torch.device) -> torch.Tensor:
    """The lookup table on ``device``, built and copied once (a host->device copy per call
    would stall the stream); read-only by convention."""
    return spec.lookup_table().to(device)


class MaskR2Remap(nn.Module):
    """``remap_one_hot`` as a module: the lookup table is a buffer that follows ``.to(device)``.

    For hot loops and ONNX export (the remap becomes part of the graph).
    """

    def __init__(self, spec: MaskR2Spec, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_channels = spec.num_channels
        self.dtype = dtype
        self.register_buffer("lut", spec.lookup_table(), persistent=False)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return one_hot_from_lut(labels, self.lut, self.num_channels, self.dtype)  # [B, C, H, W]
