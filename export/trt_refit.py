"""Swap the adapter of a refittable TensorRT engine without a rebuild.

TensorRT names the refittable weights of an ONNX-parsed network after the ONNX initializers.
The exporter keeps torch parameter names for most of them (``model.time_embed.0.weight``) but
not all: constant folding reshapes GroupNorm affines to ``[C, 1, 1]``, and MatMul weights may be
stored transposed under names like ``val_123``. So the map from initializers to parameters is
computed once from (ONNX file, the model it was exported from) by VALUE, as TensorRT's diffusion
demo does: every float initializer is hashed (sha256 of its bytes) and looked up among the
hashes of every parameter, of its transpose (2-D), and of both in fp16 (an fp16 ONNX); equal
bytes with another shape are a reshape. Name agreement breaks ties between parameters of equal
value (all-ones norms). The map is then applied to the weights of base + the new adapter::

    map    = build_weight_map(onnx, reference)        # reference = what the ONNX holds
    arrays = refit_weights(map, merged)               # {initializer: array}, transform applied
    refitter.set_named_weights(name, trt.Weights(arrays[name])) for every refittable weight

:func:`refit_engine` adds the checks: a refittable plan (sidecar flag and ``engine.refittable``),
the adapter made for the engine's base (model hash in the sidecar vs the adapter's base hash),
the same MaskR² spec as the graph's (the lookup table is not a weight), the ONNX the plan was
built from (sha256), every weight ``get_missing_weights()`` lists supplied, and the outputs
after the refit against torch on a few inputs.

Example::

    refit_engine("runs/tee.plan", "runs/other-adapter")   # base: the packaged phantom-tte
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tte2tee_fast.errors import InputError

TRANSFORMS = ("identity", "reshape", "transpose")


@dataclass(frozen=True)
class WeightSource:
    """Where one ONNX initializer comes from: ``array = transform(params[0]).astype(dtype)``.

    ``params``: state-dict names with exactly these values in the reference model (first =
    the chosen one; several only when they were equal there, e.g. all-ones norm weights).
    ``transform``: ``identity`` / ``reshape`` (same bytes, ONNX shape) / ``transpose`` (2-D,
    then the ONNX shape).
    """

    params: tuple[str, ...]
    transform: str
    shape: tuple[int, ...]
    dtype: str  # "float32" | "float16"


@dataclass(frozen=True)
class WeightMap:
    """ONNX initializer name -> :class:`WeightSource`; ``constants``: float initializers that
    stem from no parameter (timestep frequencies, folded constants), kept by the engine."""

    entries: dict[str, WeightSource]
    constants: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": {
                k: {
                    "params": list(v.params),
                    "transform": v.transform,
                    "shape": list(v.shape),
                    "dtype": v.dtype,
                }
                for k, v in self.entries.items()
            },
            "constants": list(self.constants),
        }


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _candidates(state: dict[str, np.ndarray]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """``{(dtype, sha256): [(param, transform-kind)]}`` over params, transposes, fp16 copies."""
    table: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for name, arr in state.items():
        views = [("direct", arr)] + ([("transpose", arr.T)] if arr.ndim == 2 else [])
        for kind, v in views:
            for dt in ("float32", "float16"):
                table[(dt, _digest(v.astype(dt)))].append((name, kind))
    return table


def _float_state(model: Any) -> dict[str, np.ndarray]:
    return {
        k: v.detach().cpu().float().numpy()
        for k, v in model.state_dict().items()
        if v.is_floating_point()
    }


def _name_score(onnx_name: str, param: str) -> int:
    """2: same name or ``<prefix>.<param>`` (a wrapper module's attribute); 0 otherwise."""
    return 2 if onnx_name == param or onnx_name.endswith("." + param) else 0


def build_weight_map(onnx_model: Any, reference: Any) -> WeightMap:
    """Map every float initializer of ``onnx_model`` (ModelProto or path) to the parameters of
    ``reference`` (the torch model the ONNX was exported from) that hold its values."""
    import onnx
    from onnx import numpy_helper

    proto = onnx_model if isinstance(onnx_model, onnx.ModelProto) else onnx.load(str(onnx_model))
    state = _float_state(reference)
    table = _candidates(state)
    entries: dict[str, WeightSource] = {}
    constants = []
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype not in (np.float32, np.float16):
            continue  # the MaskR² lookup table, shapes, indices: not weights
        found = table.get((arr.dtype.name, _digest(arr)), [])
        found = [(p, k) for p, k in found if state[p].size == arr.size]
        if not found:
            constants.append(init.name)
            continue
        # name agreement first, then direct before transposed, then the name order
        found.sort(key=lambda pk: (-_name_score(init.name, pk[0]), pk[1] != "direct", pk[0]))
        param, kind = found[0]
        if kind == "transpose":
            transform = "transpose"
        else:
            transform = "identity" if tuple(state[param].shape) == arr.shape else "reshape"
        same = tuple(dict.fromkeys(p for p, k in found if k == kind))
        entries[init.name] = WeightSource(same, transform, tuple(arr.shape), arr.dtype.name)
    return WeightMap(entries, tuple(constants))


def apply_transform(arr: np.ndarray, source: WeightSource) -> np.ndarray:
    """``arr`` (a parameter, fp32) as the ONNX initializer stores it."""
    if source.transform == "transpose":
        arr = arr.T
    return np.ascontiguousarray(arr.reshape(source.shape).astype(source.dtype))


def refit_weights(weight_map: WeightMap, model: Any) -> dict[str, np.ndarray]:
    """``{initializer: array}`` of ``model``'s weights (e.g. base + a new adapter), each in the
    layout and dtype of the ONNX initializer it replaces.

    Parameters that were equal in the reference must still be equal here, or the initializer
    cannot be attributed to one of them: InputError naming it.
    """
    state = _float_state(model)
    out = {}
    for name, src in weight_map.entries.items():
        missing = [p for p in src.params if p not in state]
        if missing:
            raise InputError(f"model has no parameter {missing[0]!r} (ONNX initializer {name})")
        arr = apply_transform(state[src.params[0]], src)
        for other in src.params[1:]:
            if not np.array_equal(apply_transform(state[other], src), arr):
                raise InputError(
                    f"ONNX initializer {name} matched parameters {src.params[0]} and {other}, "
                    "equal in the engine's model but different in the new weights: export a "
                    "fresh ONNX of the new model instead"
                )
        out[name] = arr
    return out


# ----------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class RefitReport:
    """What :func:`refit_engine` did: weights set, those taken from the ONNX, the output check."""

    plan: Path
    weights_set: int
    constants_set: int
    max_rel_error: float


def check_refit_inputs(
    sidecar: dict[str, Any], adapter_meta: Any, where: str = "engine"
) -> dict[str, Any]:
    """Refuse a non-refittable plan, an adapter of another base or with another MaskR² spec;
    returns the engine's ONNX metadata (typed)."""
    if not sidecar.get("refittable"):
        raise InputError(
            f"{where} is not refittable: rebuild it with `tte2tee export trt --refittable`"
        )
    meta = dict(sidecar.get("onnx_metadata") or {})
    if "model_hash" not in meta:
        raise InputError(f"{where}: its sidecar records no model hash (not a tte2tee ONNX)")
    if adapter_meta.base_model_hash != meta["model_hash"]:
        raise InputError(
            f"adapter was trained on base {adapter_meta.base_model_hash}, but {where} was "
            f"built from base {meta['model_hash']}"
        )
    graph_spec = json.loads(meta["maskr2"]) if isinstance(meta.get("maskr2"), str) else None
    if graph_spec is not None and graph_spec != adapter_meta.maskr2.to_json():
        raise InputError(
            f"adapter's MaskR² spec {adapter_meta.maskr2.name!r} differs from the one inside "
            f"{where} ({graph_spec.get('name')!r}; the lookup table is not a weight): export "
            "and build a new engine"
        )
    return meta


def reference_model(base: Any, meta: dict[str, Any], onnx_adapter: str | os.PathLike | None) -> Any:
    """The weights the engine's ONNX holds: ``base`` itself, or base + the adapter the ONNX was
    exported with (``onnx_adapter``, checked against the ONNX's adapter hash)."""
    from tte2tee_fast.export.metadata import file_sha256

    from tte2tee_fast.adapt.adapter import WEIGHTS_NAME
    from tte2tee_fast.adapt.merge import merge_adapter
    from tte2tee_fast.packaged import resolve_asset

    want = meta.get("adapter_hash") or ""
    if not want:
        return base
    if onnx_adapter is None:
        raise InputError(
            f"the engine's ONNX was exported with adapter {want[:12]}...: pass that adapter "
            "as --onnx-adapter so its weights can be matched to the engine's"
        )
    folder = resolve_asset(onnx_adapter)
    have = file_sha256(folder / WEIGHTS_NAME) if (folder / WEIGHTS_NAME).is_file() else ""
    if have != want:
        raise InputError(
            f"--onnx-adapter {onnx_adapter} is adapter {have or 'none'}, but the engine's "
            f"ONNX was exported with adapter {want}"
        )
    return merge_adapter(copy.deepcopy(base), folder)


def refit_engine(
    plan: str | os.PathLike,
    adapter: str | os.PathLike,
    model: str | os.PathLike | None = None,
    onnx_path: str | os.PathLike | None = None,
    onnx_adapter: str | os.PathLike | None = None,
    check_batch: int = 2,
    device: int = 0,
) -> RefitReport:
    """Refit ``plan`` with base ``model`` (None: the packaged base) + ``adapter``, in place
    (atomically, sidecar updated), then compare its eps with torch on ``check_batch`` inputs."""
    import onnx
    from onnx import numpy_helper
    from tte2tee_fast.export.metadata import file_sha256
    from tte2tee_fast.export.tensorrt import (
        TrtDenoiser,
        import_tensorrt,
        load_engine,
        read_sidecar,
        sidecar_path,
    )

    from tte2tee_fast.adapt.adapter import WEIGHTS_NAME, load_adapter_meta
    from tte2tee_fast.adapt.merge import merge_adapter
    from tte2tee_fast.fsutil import staged_file, write_json_atomic
    from tte2tee_fast.models import load_model, model_hash
    from tte2tee_fast.packaged import resolve_asset, resolve_model_path

    plan = Path(plan)
    where = f"TensorRT engine {plan}"
    sidecar = read_sidecar(plan)
    adapter_dir = resolve_asset(adapter)
    meta = check_refit_inputs(sidecar, load_adapter_meta(adapter_dir), where)
    onnx_file = Path(onnx_path or sidecar.get("onnx_path") or "")
    if not onnx_file.is_file():
        raise InputError(f"{where}: its ONNX {onnx_file} is not there; pass --onnx")
    if file_sha256(onnx_file) != sidecar.get("onnx_sha256"):
        raise InputError(f"ONNX {onnx_file} is not the file {where} was built from (sha256)")
    base = load_model(resolve_model_path(model)).float().eval()
    if model_hash(base) != meta["model_hash"]:
        raise InputError(
            f"{where} was built from base {meta['model_hash']}, but the given model hashes to "
            f"{model_hash(base)}"
        )
    proto = onnx.load(str(onnx_file))
    weight_map = build_weight_map(proto, reference_model(base, meta, onnx_adapter))
    merged = merge_adapter(copy.deepcopy(base), adapter_dir).eval()
    arrays = refit_weights(weight_map, merged)
    constants = {
        i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if i.name not in arrays
    }

    trt = import_tensorrt()
    engine, _ = load_engine(plan, device)
    if not engine.refittable:
        raise InputError(f"{where} is not refittable: rebuild it with --refittable")
    refitter = trt.Refitter(engine, trt.Logger(trt.Logger.WARNING))
    keep = []  # trt.Weights do not own their memory
    n_set = n_const = 0
    for name in refitter.get_all_weights():
        if name in arrays:
            keep.append(arrays[name])
            if not refitter.set_named_weights(name, trt.Weights(arrays[name])):
                raise InputError(f"{where} rejected weight {name!r} {list(arrays[name].shape)}")
            n_set += 1
    for name in refitter.get_missing_weights():
        if name not in constants:
            raise InputError(f"{where} needs weight {name!r}, which its ONNX does not hold")
        keep.append(np.ascontiguousarray(constants[name]))
        if not refitter.set_named_weights(name, trt.Weights(keep[-1])):
            raise InputError(f"{where} rejected weight {name!r} from its ONNX")
        n_const += 1
    left = list(refitter.get_missing_weights())
    if left:
        raise InputError(f"{where}: refit still misses {len(left)} weights, first {left[0]!r}")
    if not refitter.refit_cuda_engine():
        raise InputError(f"TensorRT refused the refit of {plan} (see its log)")
    with staged_file(plan) as tmp:
        tmp.write_bytes(bytes(engine.serialize()))
    sidecar["onnx_metadata"] = {
        **meta,
        "adapter_hash": file_sha256(adapter_dir / WEIGHTS_NAME),
        "merged_hash": model_hash(merged),
    }
    sidecar["refit_adapter"] = str(adapter_dir)
    write_json_atomic(sidecar_path(plan), sidecar)
    err = check_against_torch(TrtDenoiser(plan, device), merged, meta, check_batch)
    return RefitReport(plan, n_set, n_const, err)


def check_against_torch(runner: Any, merged: Any, meta: dict[str, Any], batch: int) -> float:
    """Max relative error of ``runner``'s eps against the merged torch model on random inputs
    (labels drawn from the engine's schema)."""
    import torch
    from tte2tee_fast.export.metadata import label_values, parse

    from tte2tee_fast.condition.maskr2 import MaskR2Spec, remap_one_hot

    typed = parse({k: str(v) for k, v in meta.items()}, "engine")
    spec = MaskR2Spec.from_json(typed["maskr2"])
    size = int(typed["sample_size"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, size, size)).astype(np.float32)  # [B, 1, H, W]
    t = rng.integers(0, 1000, batch).astype(np.int64)  # [B]
    values = label_values(typed)
    labels = values[rng.integers(0, len(values), (batch, size, size))]  # [B, H, W]
    with torch.no_grad():
        cond = remap_one_hot(torch.from_numpy(labels), spec)
        want = merged(torch.from_numpy(x), torch.from_numpy(t), cond).numpy()
    got = runner(x, t, labels)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
