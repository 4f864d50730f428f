"""Engine metadata: what an exported denoiser was made from, and the checks that use it.

Torch-free (onnx, numpy and json only), so the edge runtime and the ONNX Runtime / OpenVINO
runners read and check it without PyTorch.

An ONNX file carries the metadata as ``metadata_props`` with the prefix ``tte2tee.``; an
OpenVINO IR ``f.xml`` carries the same dict in its ``rt_info`` (key ``tte2tee``) and in a
sidecar ``f.meta.json`` next to it (readable without openvino). Keys (all strings on disk)::

    format_version  "1"
    schema          source label schema of the ``labels`` input, e.g. "tee"
    maskr2          MaskR² spec JSON (source labels -> base channels), folded into the graph
    model_hash      sha256 of the BASE weights (models.model_hash), what adapters record
    adapter_hash    sha256 of the adapter's adapter_model.safetensors, "" without an adapter
    merged_hash     models.model_hash of the merged weights the graph holds
    preset          "tiny" / "micro" / "sdm256" / "custom"
    sample_size     H = W of the ``sample`` input
    label_channels  C of the base model
    prediction_type what the network predicts inside ("eps" / "v"); the output is eps either way
    schedule        "cosine:1000"
    batch           "dynamic" or the fixed batch N
    variant         "eps" (sample, timestep, labels -> eps) or "guided" (+ guidance), or
                    "baked:<sampler>:<nfe>" (noise, labels -> frame; export/baked.py)
    plan            baked engines only: the dense plan (JSON) the graph unrolls

Example::

    meta = read_metadata("runs/tee.onnx")
    check_engine(meta, "runs/tee.onnx", model_hash=base_hash, adapter_hash=ah)
    check_labels(meta, labels)           # InputError listing values outside the schema
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tte2tee_fast.data.schemas import get_schema, present_values
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import write_json_atomic

FORMAT_VERSION = 1
PREFIX = "tte2tee."
RT_INFO_KEY = "tte2tee"
SIDECAR_SUFFIX = ".meta.json"
KEYS = (
    "format_version",
    "schema",
    "maskr2",
    "model_hash",
    "adapter_hash",
    "merged_hash",
    "preset",
    "sample_size",
    "label_channels",
    "prediction_type",
    "schedule",
    "batch",
    "variant",
)
VARIANTS = ("eps", "guided")
BAKED = "baked:"  # variant prefix of a baked sampler graph (export/baked.py)
OPTIONAL_KEYS = ("plan",)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes (the adapter hash of an engine)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def as_strings(meta: dict[str, Any]) -> dict[str, str]:
    """The metadata as ``{key: str}`` (the on-disk form), every key of :data:`KEYS` present;
    accepts the typed form of :func:`parse` too (``batch`` None = dynamic)."""
    missing = [k for k in KEYS if k not in meta]
    if missing:
        raise ValueError(f"engine metadata lacks {missing}")
    out = {}
    for k in (*KEYS, *(k for k in OPTIONAL_KEYS if k in meta)):
        v = "dynamic" if k == "batch" and meta[k] is None else meta[k]
        out[k] = json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v)
    return out


def parse(props: dict[str, str], where: str) -> dict[str, Any]:
    """On-disk strings -> typed metadata (``maskr2`` a dict, ``batch`` an int or None, ints)."""
    missing = [k for k in KEYS if k not in props]
    if missing:
        raise InputError(
            f"{where} is not a tte2tee engine: metadata lacks {missing} "
            "(export it with `tte2tee export onnx`)"
        )
    if props["format_version"] != str(FORMAT_VERSION):
        raise InputError(
            f"{where}: engine metadata format_version {props['format_version']!r}; "
            f"this tte2tee reads {FORMAT_VERSION}"
        )
    meta: dict[str, Any] = dict(props)
    try:
        meta["maskr2"] = json.loads(props["maskr2"])
        meta["format_version"] = int(props["format_version"])
        meta["sample_size"] = int(props["sample_size"])
        meta["label_channels"] = int(props["label_channels"])
        meta["batch"] = None if props["batch"] == "dynamic" else int(props["batch"])
        if "plan" in props:
            meta["plan"] = json.loads(props["plan"])
    except (ValueError, json.JSONDecodeError) as e:
        raise InputError(f"{where}: unreadable engine metadata: {e}") from None
    if meta["variant"] not in VARIANTS and not meta["variant"].startswith(BAKED):
        raise InputError(f"{where}: unknown engine variant {meta['variant']!r}")
    return meta


def set_onnx_metadata(model_proto: Any, meta: dict[str, Any]) -> None:
    """Replace the ``tte2tee.*`` entries of an ``onnx.ModelProto``'s metadata_props."""
    keep = [p for p in model_proto.metadata_props if not p.key.startswith(PREFIX)]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(keep)
    for k, v in as_strings(meta).items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = PREFIX + k, v


def onnx_props(model_proto: Any) -> dict[str, str]:
    """``{key: value}`` of the ``tte2tee.*`` metadata_props, prefix removed."""
    return {
        p.key.removeprefix(PREFIX): p.value
        for p in model_proto.metadata_props
        if p.key.startswith(PREFIX)
    }


def sidecar_path(xml_path: str | os.PathLike) -> Path:
    """``f.xml`` -> ``f.meta.json``."""
    path = Path(xml_path)
    return path.with_name(path.stem + SIDECAR_SUFFIX)


def write_sidecar(xml_path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write the metadata sidecar of an OpenVINO IR (atomically)."""
    path = sidecar_path(xml_path)
    write_json_atomic(path, as_strings(meta))
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Typed metadata of an ``.onnx`` engine or an OpenVINO ``.xml`` (its sidecar)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"engine {path} does not exist")
    if path.suffix == ".xml":
        side = sidecar_path(path)
        if not side.is_file():
            raise InputError(f"OpenVINO IR {path} has no metadata sidecar {side.name}")
        try:
            props = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{side}: unreadable metadata: {e}") from None
        return parse({k: str(v) for k, v in props.items()}, str(path))
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for foreign files
        raise InputError(f"{path} is not a readable ONNX file: {e}") from None
    return parse(onnx_props(proto), str(path))


def check_engine(
    meta: dict[str, Any],
    where: str,
    model_hash: str | None = None,
    adapter_hash: str | None = None,
    schema: str | None = None,
) -> None:
    """Refuse an engine made from another base model, another adapter (``""`` = none) or for
    another label schema, with one line naming both values."""
    if model_hash is not None and meta["model_hash"] != model_hash:
        raise InputError(
            f"engine {where} was exported from base model {meta['model_hash']}, "
            f"but the given model hashes to {model_hash}"
        )
    if adapter_hash is not None and meta["adapter_hash"] != adapter_hash:
        have = meta["adapter_hash"] or "none"
        raise InputError(
            f"engine {where} was exported with adapter {have}, "
            f"but the given adapter is {adapter_hash or 'none'}"
        )
    if schema is not None and meta["schema"] != schema:
        raise InputError(
            f"engine {where} takes labels of schema {meta['schema']!r}, not {schema!r}"
        )


def label_values(meta: dict[str, Any]) -> np.ndarray:
    """Sorted label values the engine maps: the values of the spec's source labels."""
    source = get_schema(meta["schema"])
    names = [n for rule in meta["maskr2"]["rules"] for n in rule["labels"]]
    return np.array(sorted(source.value_of(n) for n in names), dtype=np.int64)


def check_labels(meta: dict[str, Any], labels: np.ndarray, where: str = "labels") -> None:
    """InputError listing every value of ``labels`` that the engine's schema lacks."""
    allowed = label_values(meta)
    present = present_values(labels)
    bad = present[~np.isin(present, allowed)]
    if bad.size:
        names = ", ".join(get_schema(meta["schema"]).names)
        raise InputError(
            f"{where}: values {bad.tolist()} are not in schema {meta['schema']!r} "
            f"(allowed {allowed.tolist()}: {names})"
        )
