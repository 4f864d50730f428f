"""ONNX export of the merged denoiser, with the MaskR² lookup and one-hot inside the graph.

The engine takes the raw label map in the adapter's (source) schema::

    sample    [B, 1, H, W] float32   noisy image x_t
    timestep  [B]          int64     training timesteps 0..999
    labels    [B, H, W]    int64     label values of the source schema (-1 = the null label)
    guidance  [1]          float32   guided variant only: the scale g
    eps       [B, 1, H, W] float32   output: eps (a v-model converts inside the graph)

The guided variant runs ``[labels; -1]`` as one batch of 2B rows and returns
``eps_u + g (eps_c - eps_u)``, what :func:`tte2tee_fast.diffusion.guidance.cfg_eps_fn` computes
(labels the spec does not map give all-zero channels: the null label of classifier-free
guidance).

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)`` at opset 18, a
measured choice (docs/notes/engines.md): on this machine it exports the packaged tiny model in
2.7 s against 46 s for ``dynamo=True`` (micro: 1.3 s against 19 s, warm), and both graphs run
at the same speed in ONNX Runtime within the noise of a shared 2-core machine, with the same
parity against torch (max relative error ~5e-7). It needs no onnxscript. ``dynamo=True``
remains available (``export_module(..., dynamo=True)``, needs onnxscript). Export runs on the
CPU in fp32.

:func:`export_module` is the reusable part (any module, example inputs, names, a dynamic batch
or not, the metadata, an atomic write); :func:`export_onnx` builds the denoiser graph.

Example::

    export_onnx(None, "phantom-tee", "runs/tee.onnx")              # packaged base + adapter
    export_onnx("runs/tiny-tte/ema", None, "runs/tte-b8.onnx", batch=8)
    export_onnx(None, "phantom-tee", "runs/tee-cfg.onnx", guidance=True)
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tte2tee_fast.export.metadata import FORMAT_VERSION, file_sha256, set_onnx_metadata

from tte2tee_fast.condition.maskr2 import MaskR2Remap, MaskR2Spec
from tte2tee_fast.errors import InputError
from tte2tee_fast.fsutil import staged_file

MIN_OPSET = 18
SCHEDULE = "cosine:1000"
NULL_LABEL = -1


class DenoiserGraph(nn.Module):
    """``forward(sample, timestep, labels[, guidance]) -> eps``: MaskR² + one-hot + the U-Net."""

    def __init__(self, model: nn.Module, spec: MaskR2Spec, guided: bool = False) -> None:
        super().__init__()
        self.model = model
        self.remap = MaskR2Remap(spec)
        self.guided = guided

    def forward(
        self,
        sample: torch.Tensor,  # [B, 1, H, W] float32
        timestep: torch.Tensor,  # [B] int64
        labels: torch.Tensor,  # [B, H, W] int64
        guidance: torch.Tensor | None = None,  # [1] float32
    ) -> torch.Tensor:
        if not self.guided:
            return self.model(sample, timestep, self.remap(labels))  # [B, 1, H, W]
        # cond rows then null-label rows, one forward of 2B rows
        both = torch.cat([labels, torch.full_like(labels, NULL_LABEL)])  # [2B, H, W]
        x2 = torch.cat([sample, sample])  # [2B, 1, H, W]
        t2 = torch.cat([timestep, timestep])  # [2B]
        eps_c, eps_u = self.model(x2, t2, self.remap(both)).chunk(2)
        return eps_u + guidance * (eps_c - eps_u)  # [B, 1, H, W]


def export_module(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    out: str | os.PathLike,
    dynamic_batch: Sequence[str] = (),
    metadata: dict[str, Any] | None = None,
    opset: int = MIN_OPSET,
    dynamo: bool = False,
) -> Path:
    """Export ``module(*example_inputs)`` to ONNX at ``out`` (atomically) and return the path.

    ``dynamic_batch``: names of the inputs whose first dimension is the dynamic batch ``B``
    (the outputs follow); empty = static shapes. ``metadata``: the engine dict of
    :mod:`tte2tee_fast.export.metadata` (every key), written as ``tte2tee.*`` metadata_props.
    The graph is checked with ``onnx.checker`` before it replaces ``out``. ``dynamo``: use
    the torch.export-based exporter instead of the TorchScript one (slower to export, needs
    onnxscript).
    """
    import onnx

    if opset < MIN_OPSET:
        raise InputError(f"opset {opset} is too old: the engines need opset >= {MIN_OPSET}")
    out = Path(out)
    if out.is_dir():
        raise InputError(f"output {out} is a folder; give a file name such as model.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter (deprecation, tracer notes)
        if dynamo:
            proto = _export_dynamo(
                module, example_inputs, input_names, output_names, dynamic_batch, opset
            )
        else:
            axes = (
                {n: {0: "batch"} for n in (*dynamic_batch, *output_names)}
                if dynamic_batch
                else None
            )
            buf = io.BytesIO()
            torch.onnx.export(
                module,
                example_inputs,
                buf,
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset,
                dynamo=False,
                dynamic_axes=axes,
                do_constant_folding=True,
            )
            proto = onnx.load_from_string(buf.getvalue())
    if metadata is not None:
        set_onnx_metadata(proto, metadata)
    onnx.checker.check_model(proto)
    with staged_file(out) as tmp:
        onnx.save(proto, str(tmp))
    return out


def _export_dynamo(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: Sequence[str],
    opset: int,
) -> Any:
    """The ``dynamo=True`` export of :func:`export_module` (an ``onnx.ModelProto``)."""
    shapes = None
    if dynamic_batch:
        dim = torch.export.Dim("batch", min=1, max=4096)
        shapes = {n: ({0: dim} if n in dynamic_batch else None) for n in input_names}
    program = torch.onnx.export(
        module,
        example_inputs,
        input_names=list(input_names),
        output_names=list(output_names),
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=shapes,
        external_data=False,
        verbose=False,
    )
    return program.model_proto


def _preset_of(config: Any) -> str:
    from tte2tee_fast.models.presets import PRESETS, preset_config

    for name in PRESETS:  # the architecture; prediction_type is a metadata key of its own
        want = {k: v for k, v in preset_config(name).items() if k != "prediction_type"}
        if all(_same(config.get(k), v) for k, v in want.items()):
            return name
    return "custom"


def _same(a: Any, b: Any) -> bool:
    seq = (list, tuple)
    return list(a) == list(b) if isinstance(a, seq) and isinstance(b, seq) else a == b


def engine_metadata(
    base_hash: str,
    merged: nn.Module,
    spec: MaskR2Spec,
    adapter_weights: str | os.PathLike | None,
    batch: int | None,
    guided: bool,
) -> dict[str, Any]:
    """The metadata dict of a denoiser engine (see :mod:`tte2tee_fast.export.metadata`);
    ``base_hash`` is ``models.model_hash`` of the base before the merge."""
    from tte2tee_fast.models import model_hash

    cfg = dict(merged.config)
    return {
        "format_version": FORMAT_VERSION,
        "schema": spec.source.name,
        "maskr2": spec.to_json(),
        "model_hash": base_hash,
        "adapter_hash": file_sha256(adapter_weights) if adapter_weights else "",
        "merged_hash": model_hash(merged),
        "preset": _preset_of(cfg),
        "sample_size": int(cfg["sample_size"]),
        "label_channels": int(cfg["label_channels"]),
        "prediction_type": str(cfg.get("prediction_type", "eps")),
        "schedule": SCHEDULE,
        "batch": "dynamic" if batch is None else int(batch),
        "variant": "guided" if guided else "eps",
    }


def load_merged(
    model: str | os.PathLike | None, adapter: str | os.PathLike | None
) -> tuple[nn.Module, MaskR2Spec, str, Path | None]:
    """``(merged model, spec, base hash, adapter weights file or None)`` in fp32 on the CPU.

    ``model``: a folder, a packaged name or None (the packaged base); ``adapter``: a folder, a
    packaged name (``phantom-tee``) or None. The spec is the adapter's, else the model folder's
    (:func:`~tte2tee_fast.adapt.merge.load_model_spec`)."""
    from tte2tee_fast.adapt.adapter import WEIGHTS_NAME, load_adapter_meta
    from tte2tee_fast.adapt.merge import load_model_spec, merge_adapter
    from tte2tee_fast.models import load_model, model_hash
    from tte2tee_fast.packaged import resolve_asset, resolve_model_path

    model_dir = resolve_model_path(model)
    net = load_model(model_dir).float().eval()
    base_hash = model_hash(net)
    if adapter is None:
        return net, load_model_spec(model_dir), base_hash, None
    adapter_dir = resolve_asset(adapter)
    spec = load_adapter_meta(adapter_dir).maskr2
    merge_adapter(net, adapter_dir)
    return net, spec, base_hash, adapter_dir / WEIGHTS_NAME


def example_inputs(
    sample_size: int, batch: int, guided: bool, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random inputs of the engine's signature (trace values; the graph does not depend on them)."""
    gen = torch.Generator().manual_seed(seed)
    s = sample_size
    x = torch.randn(batch, 1, s, s, generator=gen)  # [B, 1, S, S]
    t = torch.randint(0, 1000, (batch,), generator=gen)  # [B]
    labels = torch.randint(0, 2, (batch, s, s), generator=gen)  # [B, S, S]
    if guided:
        return x, t, labels, torch.tensor([2.0])
    return x, t, labels


def export_denoiser(
    merged: nn.Module,
    spec: MaskR2Spec,
    out: str | os.PathLike,
    metadata: dict[str, Any],
    batch: int | None = None,
    guided: bool = False,
    opset: int = MIN_OPSET,
) -> Path:
    """Export an already merged model as the denoiser engine (see the module docstring)."""
    if batch is not None and batch < 1:
        raise InputError(f"--batch must be >= 1, got {batch}")
    graph = DenoiserGraph(merged, spec, guided)
    # a dynamic batch is traced at 2 so the exporter does not specialise it to 1
    inputs = example_inputs(int(merged.config.sample_size), batch or 2, guided)
    names = ["sample", "timestep", "labels"] + (["guidance"] if guided else [])
    dynamic = () if batch is not None else ("sample", "timestep", "labels")
    return export_module(graph, inputs, names, ["eps"], out, dynamic, metadata, opset)


def export_onnx(
    model: str | os.PathLike | None,
    adapter: str | os.PathLike | None,
    out: str | os.PathLike,
    batch: int | None = None,
    guidance: bool = False,
    opset: int = MIN_OPSET,
) -> Path:
    """Load ``model`` (+ merge ``adapter``) and export the denoiser engine to ``out``.

    ``batch=None``: dynamic batch; ``batch=N``: static shapes (faster in OpenVINO / TensorRT).
    ``guidance=True``: the guided variant with its ``guidance`` input.
    """
    merged, spec, base_hash, weights = load_merged(model, adapter)
    meta = engine_metadata(base_hash, merged, spec, weights, batch, guidance)
    return export_denoiser(merged, spec, out, meta, batch, guidance, opset)
