"""Split an OpenVINO denoiser graph at its ``labels`` input: a label part, run once per mask
batch, and a step part, run at every sampler step.

Everything in the SemanticUNet that depends only on the labels (MaskR², the one-hot, the nearest
resizes and all SPADE heads: ``shared``, ``mlp_gamma``, ``mlp_beta``, 35 % of the FLOPs of the
packaged ``tiny`` model) gives the same result at every step of a sampler, because the masks do
not change between steps. :func:`split_at_input` cuts the graph where such label-only tensors
enter the rest of it: the **label model** maps ``labels`` to those boundary tensors, the **step
model** takes them as inputs in place of ``labels``. Both are the original graph's own nodes, so
the split computes the same function (f32: to float rounding; bf16: the boundary tensors are
stored in bf16, as the fused graph computes them).

The cut is found by dependence, not by name: a node is label-only when every non-constant input
it reads is ``labels`` or another label-only node. So the model must be static in the other
inputs' shapes (``ShapeOf(sample)`` feeding a resize would make the SPADE heads depend on the
sample); :func:`split_at_input` constant-folds first, which removes such shape arithmetic in a
static-shape model, and reports ``None`` when no label-only convolution is left to split off
or when a boundary tensor has a dynamic shape (reshape a dynamic-batch engine to a batch first).

Example::

    model = core.read_model("engine.onnx")
    split = split_at_input(model, "labels")  # None: nothing to split
    label_model, step_model, names = split.label_model, split.step_model, split.names
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

BOUNDARY_PREFIX = "label_feature_"  # tensor names of the boundary: label_feature_0, ...


@dataclass(frozen=True)
class SplitModels:
    """The two halves of a split graph and the names of the tensors between them."""

    label_model: Any  # ov.Model: labels -> boundary tensors
    step_model: Any  # ov.Model: the other inputs + boundary tensors -> the original outputs
    names: tuple[str, ...]  # boundary tensor names, outputs of label_model = inputs of step_model
    elements: int  # boundary elements per call (memory held between the two, per engine batch)


def _depends_on(model: Any, name: str) -> tuple[set, set]:
    """``(label_only, tainted)`` node sets of ``model``, by the nodes' unique ``get_name()``
    (the Python wrappers are not stable): label-only nodes read only ``name`` and constants
    (transitively, at least one of them ``name``); tainted ones read another parameter somewhere
    upstream, and every ``Result`` is tainted (it belongs to the step half: a label-only output
    becomes a boundary tensor passed through)."""
    label_only: set[str] = set()
    tainted: set[str] = set()
    for node in model.get_ordered_ops():
        kind = node.get_type_name()
        if kind == "Parameter":
            (label_only if node.get_output_tensor(0).get_any_name() == name else tainted).add(
                node.get_name()
            )
            continue
        if kind == "Constant":
            continue
        sources = [inp.get_source_output().get_node() for inp in node.inputs()]
        if kind == "Result" or any(s.get_name() in tainted for s in sources):
            tainted.add(node.get_name())
        elif any(s.get_name() in label_only for s in sources):
            label_only.add(node.get_name())
    return label_only, tainted


def split_at_input(model: Any, name: str = "labels") -> SplitModels | None:
    """Split ``model`` (an ``ov.Model``, modified in place: pass a copy to keep it) at input
    ``name``; ``None`` if no label-only convolution feeds the rest of the graph."""
    import openvino as ov
    import openvino.opset13 as ops
    from openvino.passes import ConstantFolding, Manager

    manager = Manager()
    manager.register_pass(ConstantFolding())
    manager.run_passes(model)
    params = {p.get_output_tensor(0).get_any_name(): p for p in model.get_parameters()}
    if name not in params:
        return None
    label_only, tainted = _depends_on(model, name)
    ordered = model.get_ordered_ops()  # graph order: stable names between two splits
    boundary = []  # (label-only output port, the tainted inputs reading it)
    for node in ordered:
        if node.get_name() not in label_only:
            continue
        for port in node.outputs():
            readers = [t for t in port.get_target_inputs() if t.get_node().get_name() in tainted]
            if readers:
                boundary.append((port, readers))
    convs = [
        n for n in ordered if n.get_name() in label_only and n.get_type_name() == "Convolution"
    ]
    if not boundary or not convs:
        return None  # only one-hot / shape work is label-only: not worth a second request
    if any(port.get_partial_shape().is_dynamic for port, _ in boundary):
        return None  # the label features are kept in preallocated tensors: static shapes only
    names = tuple(f"{BOUNDARY_PREFIX}{i}" for i in range(len(boundary)))
    results = []
    new_params = []
    elements = 0
    for tensor_name, (port, readers) in zip(names, boundary, strict=True):
        result = ops.result(port)
        result.get_output_tensor(0).set_names({tensor_name})
        results.append(result)
        param = ops.parameter(port.get_partial_shape(), port.get_element_type(), tensor_name)
        param.get_output_tensor(0).set_names({tensor_name})
        for reader in readers:
            reader.replace_source_output(param.output(0))
        new_params.append(param)
        elements += math.prod(port.get_shape())
    label_model = ov.Model(results, [params[name]], "labels_part")
    others = [p for n, p in params.items() if n != name]
    step_model = ov.Model(model.get_results(), others + new_params, "step_part")
    return SplitModels(label_model, step_model, names, elements)
