"""Split an ONNX denoiser graph at its ``labels`` input, for ONNX Runtime's label cache.

The same cut as :mod:`~tte2tee_fast.export.ov_split` (read its docstring for why): everything
that depends on the labels only (MaskR², the one-hot, the nearest resizes, every SPADE head)
gives the same tensors at every sampler step, so the **label model** maps ``labels`` to the
tensors where that part enters the rest, and the **step model** takes them as inputs in place of
``labels``. Both are the original graph's own nodes (``onnx.utils.Extractor``), so the split
computes the same function up to float rounding.

ONNX has no constant folding of its own here, and the exporter writes every nearest resize's
target size as ``Shape(feature map)``: the resize would then depend on ``sample`` and most SPADE
heads would land in the step. :func:`fold_static_shapes` first replaces every ``Shape`` node
whose input has a static inferred shape by a constant, so the split needs a static-shape engine
(``tte2tee export onnx --batch N``, or the engines ``generate`` exports at its batch); on a
dynamic-batch engine the boundary is dynamic and :func:`split_onnx_at_input` returns ``None``.

Example::

    split = split_onnx_at_input(onnx.load("engine.onnx"))  # None: nothing to split
    label_bytes, step_bytes, names = split.label_model, split.step_model, split.names
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SUBGRAPH_ATTRS = (5, 10)  # AttributeProto.GRAPH, GRAPHS: If / Loop / Scan bodies
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"}
RANDOM_OPS |= {"Multinomial", "Bernoulli"}  # a fresh draw per run: never cached


@dataclass(frozen=True)
class OnnxSplit:
    """The two halves of a split ONNX graph (serialized ``ModelProto``) and their boundary."""

    label_model: bytes  # labels -> boundary tensors
    step_model: bytes  # the other inputs + boundary tensors -> the original outputs
    names: tuple[str, ...]  # boundary tensor names: outputs of one, inputs of the other
    elements: int  # boundary elements per call
    nbytes: int  # their memory (held between the two halves, per engine batch)


def _inferred(model: Any) -> Any:
    """``model`` with its tensors' shapes inferred, shape arithmetic propagated."""
    import onnx

    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _static_shapes(inferred: Any) -> dict[str, list[int]]:
    """``{tensor: dims}`` of every tensor of an inferred model whose shape is fully static."""
    graph = inferred.graph
    out = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        dims = info.type.tensor_type.shape.dim
        if info.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            out[info.name] = [int(d.dim_value) for d in dims]
    return out


def fold_static_shapes(model: Any) -> Any:
    """A copy of ``model`` with each ``Shape`` node of a statically shaped input replaced by a
    ``Constant`` of its value (``start`` / ``end`` attributes honoured)."""
    import onnx
    from onnx import helper, numpy_helper

    shapes = _static_shapes(_inferred(model))
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    nodes = []
    for node in folded.graph.node:
        if node.op_type == "Shape" and node.input[0] in shapes:
            dims = shapes[node.input[0]]
            attrs = {a.name: a.i for a in node.attribute}
            value = dims[attrs.get("start", 0) : attrs.get("end", len(dims))]
            tensor = numpy_helper.from_array(np.asarray(value, np.int64), node.output[0])
            node = helper.make_node("Constant", [], [node.output[0]], value=tensor)
        nodes.append(node)
    del folded.graph.node[:]
    folded.graph.node.extend(nodes)
    return folded


def _label_only(graph: Any, name: str) -> set[str]:
    """Tensors that depend on input ``name`` and on nothing else but constants."""
    inputs = {i.name for i in graph.input}
    dep: dict[str, bool | None] = {i: (i == name) for i in inputs}  # True label, False step
    for init in graph.initializer:
        dep.setdefault(init.name, None)  # a constant
    for node in graph.node:
        reads = [dep.get(i, False) for i in node.input if i]  # unknown (unsorted): the step's
        if (
            False in reads
            or node.op_type in RANDOM_OPS
            or any(a.type in SUBGRAPH_ATTRS for a in node.attribute)
        ):
            state = False  # a subgraph may read anything, noise must not be kept: the step
        elif True in reads:
            state = True
        else:
            state = None
        for out in node.output:
            dep[out] = state
    return {t for t, d in dep.items() if d is True and t not in inputs}


def split_onnx_at_input(model: Any, name: str = "labels") -> OnnxSplit | None:
    """Split ``model`` (an ``onnx.ModelProto``) at input ``name``; ``None`` if no label-only
    ``Conv`` feeds the rest, a boundary tensor has no static shape, or a step node reads
    ``name`` itself (the step model would need it too)."""
    import onnx
    from onnx import helper
    from onnx.utils import Extractor

    if name not in {i.name for i in model.graph.input}:
        return None
    folded = _inferred(fold_static_shapes(model))
    graph = folded.graph
    label_only = _label_only(graph, name)
    outputs = {o.name for o in graph.output}
    boundary: list[str] = []
    for node in graph.node:
        if any(o in label_only for o in node.output):
            continue
        if name in node.input:
            return None
        boundary += [i for i in node.input if i in label_only and i not in boundary]
    boundary += [o for o in outputs if o in label_only and o not in boundary]
    convs = [n for n in graph.node if n.op_type == "Conv" and n.output[0] in label_only]
    shapes = _static_shapes(folded)
    if not boundary or not convs or any(b not in shapes for b in boundary):
        return None
    others = [i.name for i in graph.input if i.name != name]
    extractor = Extractor(folded)
    label_model = extractor.extract_model([name], boundary)
    step_model = extractor.extract_model(others + boundary, [o.name for o in graph.output])
    for part in (label_model, step_model):
        onnx.checker.check_model(part)
    types = {o.name: o.type.tensor_type.elem_type for o in label_model.graph.output}
    nbytes = sum(
        math.prod(shapes[b]) * helper.tensor_dtype_to_np_dtype(types[b]).itemsize for b in boundary
    )
    return OnnxSplit(
        label_model.SerializeToString(),
        step_model.SerializeToString(),
        tuple(boundary),
        sum(math.prod(shapes[b]) for b in boundary),
        nbytes,
    )
