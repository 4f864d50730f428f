"""Where ours' network time goes in OpenVINO: per-layer-type time of the default engine
(packaged base + ``phantom-tee`` merged, the static batch of ``tte2tee generate``) from
OpenVINO's own counters (``PERF_COUNT``), and the convolutions' achieved GFLOP/s (their FLOPs
counted by torch) beside the torch.mm peak of the same precision measured in the same process.

    python benchmarks/probes/openvino_profile.py [--precision bf16] [--batch 8] [--repeats 5]
    python benchmarks/probes/openvino_profile.py --groupnorm reductions

``--groupnorm reductions`` exports group norms as per-channel ``ReduceMean`` of ``x`` and ``x^2``
averaged over each group by a constant 1x1 convolution (``y = x * rstd + shift``) instead of the
exporter's ``Reshape -> InstanceNorm -> Reshape``; it checks the engine against the default one in
ONNX Runtime first. Eleventh session (benchmarks/RESULTS.md, 'Roofline with a steadier peak,
and where the network time goes'; bf16, batch 8, two runs): convolutions 49-54 % of the time at
67-69 % of the 2048-cubed mm peak, layout reorders around the group norms' MVN 19-21 %, fused
elementwise subgraphs 14-16 %, MVN 5-6 %; the reductions variant removes the reorders but adds
almost as much elementwise and reduction time (3.5 % faster in alternating rounds).
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tte2tee_fast.export.onnx_export import (
    engine_metadata,
    example_inputs,
    export_denoiser,
    load_merged,
)
from tte2tee_fast.export.openvino import import_openvino

from tte2tee_fast.bench.e2e import flops_by_op, peak_gflops

CONV = "aten.convolution"  # flops_by_op's key of the convolutions


def group_norm_by_reductions() -> Any:
    """A TorchScript-exporter symbolic of ``aten::group_norm`` without large reshapes."""
    from torch.onnx import symbolic_helper as sh

    @sh.parse_args("v", "i", "v", "v", "f", "i")
    def symbolic(g: Any, x: Any, groups: int, weight: Any, bias: Any, eps: float, _: int) -> Any:
        c = sh._get_tensor_dim_size(x, 1) or sh._get_tensor_sizes(weight)[0]
        k = c // groups
        avg = torch.zeros(c, c, 1, 1)  # [C, C, 1, 1]: the mean over each channel's group
        for i in range(c):
            avg[i, (i // k) * k : (i // k + 1) * k] = 1.0 / k
        w = g.op("Constant", value_t=avg)
        axes = g.op("Constant", value_t=torch.tensor([2, 3]))
        mean = g.op("Conv", g.op("ReduceMean", x, axes, keepdims_i=1), w)  # [B, C, 1, 1]
        sq = g.op("Conv", g.op("ReduceMean", g.op("Mul", x, x), axes, keepdims_i=1), w)
        var = g.op("Sub", sq, g.op("Mul", mean, mean))
        eps_t = g.op("Constant", value_t=torch.tensor(eps))
        rstd = g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, eps_t)))
        col = g.op("Constant", value_t=torch.tensor([-1, 1, 1]))
        if not sh._is_none(weight):
            rstd = g.op("Mul", rstd, g.op("Reshape", weight, col))
        shift = g.op("Neg", g.op("Mul", mean, rstd))
        if not sh._is_none(bias):
            shift = g.op("Add", shift, g.op("Reshape", bias, col))
        return g.op("Add", g.op("Mul", x, rstd), shift)

    return symbolic


def export(loaded: tuple, out: Path, batch: int, groupnorm: str) -> None:
    """The engine of ``loaded`` (:func:`load_merged`'s tuple) at ``out`` (static ``batch``), its
    group norms lowered by the exporter or by :func:`group_norm_by_reductions`."""
    merged, spec, base_hash, weights = loaded
    meta = engine_metadata(base_hash, merged, spec, weights, batch, False)
    if groupnorm == "reductions":
        torch.onnx.register_custom_op_symbolic("aten::group_norm", group_norm_by_reductions(), 18)
    try:
        export_denoiser(merged, spec, out, meta, batch)
    finally:
        if groupnorm == "reductions":
            torch.onnx.unregister_custom_op_symbolic("aten::group_norm", 18)


def profile(path: Path, precision: str, batch: int, repeats: int) -> tuple[float, dict, dict, dict]:
    """``(median wall s per call, ms per layer type, ms per (type, kernel), convolution
    {shape: [FLOPs, ms, count]})`` in OpenVINO (the whole graph: no label cache)."""
    ov = import_openvino()
    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": 2,
        "PERF_COUNT": True,
    }
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    s = 128
    feed = {
        "sample": np.random.default_rng(0).standard_normal((batch, 1, s, s), np.float32),
        "timestep": np.full(batch, 500, np.int64),
        "labels": np.random.default_rng(1).integers(0, 5, (batch, s, s)),
    }
    request.infer(feed)
    by_type: collections.Counter = collections.Counter()
    by_kernel: collections.Counter = collections.Counter()
    by_node: collections.Counter = collections.Counter()
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        request.infer(feed)
        walls.append(time.perf_counter() - t0)
        for p in request.profiling_info:
            ms = p.real_time.total_seconds() * 1e3 / repeats
            by_type[p.node_type] += ms
            by_kernel[(p.node_type, p.exec_type)] += ms
            by_node[p.node_name] += ms
    convs = conv_shapes(compiled, by_node)
    return float(np.median(walls)), dict(by_type), dict(by_kernel), convs


def conv_shapes(compiled: Any, ms_by_node: dict) -> dict:
    """``{"Cin->Cout kK @H": [FLOPs, ms, count]}`` of the compiled graph's convolutions (FLOPs
    from the executed shapes, multiply-add = 2, post-ops not counted)."""
    out: dict = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        if op.get_rt_info()["layerType"].astype(str) != "Convolution":
            continue
        y = list(op.get_output_partial_shape(0).to_shape())  # [N, Cout, H, W]
        w = list(op.input(1).get_partial_shape().to_shape())  # [Cout, Cin / groups, kh, kw]
        key = f"{w[1]}->{w[0]} k{w[2]} @{y[2]}"
        row = out.setdefault(key, [0, 0.0, 0])
        row[0] += 2 * int(np.prod(y)) * int(np.prod(w[1:]))
        row[1] += ms_by_node[op.get_friendly_name()]
        row[2] += 1
    return out


def onnx_check(a: Path, b: Path, batch: int) -> float:
    """Max abs difference of two engines' eps in ONNX Runtime (fp32) on the same inputs."""
    import onnxruntime as ort

    x, t, labels = example_inputs(128, batch, False, seed=3)
    feed = {"sample": x.numpy(), "timestep": t.numpy(), "labels": labels.numpy()}
    outs = [ort.InferenceSession(str(p)).run(None, feed)[0] for p in (a, b)]
    return float(np.abs(outs[0] - outs[1]).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="bf16", choices=("bf16", "f32"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--groupnorm", default="exporter", choices=("exporter", "reductions"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    loaded = load_merged(None, "phantom-tee")  # packaged base + adapter, merged
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "engine.onnx"
        export(loaded, path, args.batch, args.groupnorm)
        if args.groupnorm != "exporter":
            export(loaded, Path(tmp) / "default.onnx", args.batch, "exporter")
            diff = onnx_check(path, Path(tmp) / "default.onnx", args.batch)
            print(f"ONNX Runtime fp32: max |eps - eps_default| = {diff:.2e}")
        wall, by_type, by_kernel, convs = profile(path, args.precision, args.batch, args.repeats)
    per_op = flops_by_op(loaded[0], 128, loaded[1].num_channels)
    total, conv = sum(per_op.values()), per_op.get(CONV, 0)
    layers = sum(by_type.values())
    print(f"{args.groupnorm} group norm, {args.precision}, batch {args.batch}: ", end="")
    print(f"{wall * 1e3:.0f} ms per call ({wall / args.batch * 1e3:.1f} ms per image), ", end="")
    print(f"layers sum {layers:.0f} ms")
    for name, ms in sorted(by_type.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {name:16s} {ms:7.1f} ms  {100 * ms / layers:5.1f} %")
    peak = peak_gflops(torch.bfloat16 if args.precision == "bf16" else torch.float32)
    rate = total * args.batch / wall / 1e9
    print(f"network: {rate:.0f} GFLOP/s = {100 * rate / peak:.0f} % of the ", end="")
    print(f"{args.precision} mm peak {peak:.0f} GFLOP/s")
    conv_ms = by_type.get("Convolution", 0.0)
    if conv_ms:
        rate = conv * args.batch / (conv_ms / 1e3) / 1e9
        print(
            f"convolutions: {100 * conv / total:.0f} % of the FLOPs at {rate:.0f} GFLOP/s ", end=""
        )
        print(f"= {100 * rate / peak:.0f} % of the peak")
    top = sorted(by_kernel.items(), key=lambda kv: -kv[1])[:6]
    print("top kernels: " + "; ".join(f"{t}/{k} {ms:.0f} ms" for (t, k), ms in top))
    conv_total = sum(r[1] for r in convs.values())
    print("convolutions by shape (Cin->Cout kernel @resolution), most time first:")
    for key, (flops, ms, n) in sorted(convs.items(), key=lambda kv: -kv[1][1])[:12]:
        rate = flops / (ms / 1e3) / 1e9 if ms else 0.0
        print(
            f"  {key:20s} x{n:2d} {100 * ms / conv_total:5.1f} % of conv time, "
            f"{rate:5.0f} GFLOP/s = {100 * rate / peak:3.0f} % of the peak"
        )


if __name__ == "__main__":
    main()
