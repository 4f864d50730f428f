"""The Python half of ``benchmarks/gpu_check.sh``: run every GPU path of the project within a
time budget and gather the results into one JSON file. UNVERIFIED ON A GPU: written and tested
on a CPU-only machine, where every GPU piece is skipped (the skip lines and the JSON are what
the test checks).

    python benchmarks/gpu_check.py --out gpu_check.json [--budget 480] [--cpu-dry-run]
    python benchmarks/gpu_check.py --missing      # requirements not installed here (for the .sh)
    python benchmarks/gpu_check.py --wheel-list   # the `pip download` line for --wheels DIR

Pieces, in order (each a subprocess with its own time cap, cut to what is left of the budget):
``pytest_gpu`` (the ``-m gpu`` tests of the files that have them; Triton compiled:
``TRITON_INTERPRET`` removed), ``kernels`` (``tte2tee bench kernels --device cuda``: Triton
against torch with the device's floors), ``e2e_cuda`` (``tte2tee bench e2e --device cuda``, the
three pipelines), ``onnx_export`` (the packaged
base + phantom-tee at batch 8, for the engines), ``ort_gpu`` (ONNX Runtime CUDA / TensorRT
providers against its CPU provider: ms and error), ``trt`` (``tte2tee export trt`` fp16 plan),
``suites_cuda`` (``pytest benchmarks/bench_{backends,samplers,e2e}.py --benchmark-only`` on
CUDA, TensorRT included when a plan was built), ``denoiser`` (``tte2tee bench denoiser --device
cuda``). A piece whose package or device is missing prints one ``skip: ...`` line; every piece
has an entry ``{"status": ok | fail | timeout | skip, "seconds", "reason" | "result", "log"}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 480.0
# what the checks import beyond the project's own dependencies
CHECK_REQUIREMENTS = ("pytest>=8", "pytest-benchmark>=4", "monai>=1.3")
# installed with a CUDA torch: not in the wheel list
TORCH_SIDE = ("torch", "triton", "numpy")
# project dependencies the GPU checks never import (CAMUS readers)
NOT_NEEDED = ("simpleitk", "nibabel")
CLI = ("-c", "from tte2tee_fast.cli import main; main()")
HAVE = ("triton", "tensorrt", "pytest", "pytest_benchmark", "onnx", "diffusers", "monai")
SUITES = ("bench_backends.py", "bench_samplers.py", "bench_e2e.py")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def project_requirements() -> list[str]:
    """pyproject's dependencies (minus the CAMUS readers) and what the checks need."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in (*deps, *CHECK_REQUIREMENTS) if _req_name(d) not in NOT_NEEDED]


def _req_name(req: str) -> str:
    for sep in "<>=!~;[ ":
        req = req.split(sep)[0]
    return _norm(req)


def missing_requirements() -> list[str]:
    """The requirements whose distribution is not installed in this environment."""
    import importlib.metadata as md

    out = []
    for req in project_requirements():
        try:
            md.version(_req_name(req))
        except md.PackageNotFoundError:
            out.append(req)
    return out


def wheel_list() -> list[str]:
    """``name==version`` of every distribution the checks need that a CUDA torch install does
    not bring: the closure of the requirements' ``Requires-Dist`` (markers evaluated for
    CPython 3.12 on Linux x86_64, no extras) over the versions installed here, minus the
    closure of torch, triton and numpy."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    env = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux"}
    env |= {"platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}

    def closure(roots: list[str]) -> set[str]:
        seen: set[str] = set()
        todo = [_req_name(r) for r in roots]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            try:
                reqs = md.requires(name) or []
            except md.PackageNotFoundError:
                continue
            for r in map(Requirement, reqs):
                if r.marker is None or r.marker.evaluate(env):
                    todo.append(_norm(r.name))
        return seen

    need = closure(project_requirements()) - closure(list(TORCH_SIDE))
    pins = []
    for name in sorted(need):
        try:
            pins.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            pins.append(name)
    return pins


def pip_download_line(pins: list[str]) -> str:
    return (
        "pip download --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 "
        "--only-binary=:all: --no-deps -d wheels " + " ".join(pins)
    )


# ----------------------------------------------------------------------------- environment


def env_info(dry_run: bool) -> dict:
    """Versions and what is present: decides which pieces run."""
    try:
        import torch
    except ImportError:  # a broken install: every piece is skipped, the JSON still written
        return {"python": platform.python_version(), "torch": None, "cuda": False, "gpu": None,
                "cpu_dry_run": dry_run, "have": {}, "onnxruntime_providers": []}  # fmt: skip
    have = {n: importlib.util.find_spec(n) is not None for n in HAVE}
    providers: list[str] = []
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    cuda = torch.cuda.is_available() and not dry_run
    info = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda": cuda,
        "cpu_dry_run": dry_run,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "have": have,
        "onnxruntime_providers": providers,
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
    }
    if have["triton"]:
        import triton

        info["triton"] = triton.__version__
    return info


# ----------------------------------------------------------------------------- pieces


class Check:
    """Runs the pieces in order within the budget; one entry and one printed line per piece."""

    def __init__(self, work: Path, budget: float, env: dict) -> None:
        self.work = work
        self.deadline = time.monotonic() + budget
        self.env = env
        self.pieces: dict[str, dict] = {}
        self.child_env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        self.child_env.setdefault("TTE2TEE_CACHE", str(work / "cache"))

    def skip(self, name: str, reason: str) -> None:
        self.pieces[name] = {"status": "skip", "reason": reason}
        print(f"skip: {name}: {reason}", flush=True)

    def run(
        self,
        name: str,
        cap: float,
        args: list[str],
        result: Callable[[], object] | None = None,
        env: dict | None = None,
    ) -> bool:
        """Run ``python args`` (cwd: the repository) for at most ``cap`` s of what is left."""
        left = self.deadline - time.monotonic()
        if left < 10:
            self.skip(name, "the time budget is spent")
            return False
        timeout = min(cap, left)
        log = self.work / f"{name}.log"
        t0 = time.monotonic()
        entry: dict = {"command": ["python", *args], "log": str(log)}
        with open(log, "w") as f:
            try:
                rc = subprocess.run(
                    [sys.executable, *args],
                    cwd=ROOT,
                    env={**self.child_env, **(env or {})},
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                ).returncode
            except subprocess.TimeoutExpired:
                rc = None
        entry["seconds"] = round(time.monotonic() - t0, 1)
        entry["status"] = "timeout" if rc is None else ("ok" if rc == 0 else "fail")
        entry["returncode"] = rc
        if rc is not None and result is not None:
            try:
                entry["result"] = result()
            except (OSError, ValueError) as e:
                entry["result_error"] = f"{type(e).__name__}: {e}"
        if entry["status"] != "ok":
            entry["log_tail"] = log.read_text(errors="replace")[-3000:]
        self.pieces[name] = entry
        extra = f" (cap {timeout:.0f} s)" if rc is None else ""
        print(f"{entry['status']}: {name} in {entry['seconds']} s{extra}; log {log}", flush=True)
        return entry["status"] == "ok"


def _read_json(path: Path) -> Callable[[], object]:
    return lambda: json.loads(path.read_text())


def _junit(path: Path) -> Callable[[], object]:
    def read() -> dict:
        import xml.etree.ElementTree as ET

        suite = ET.parse(path).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        keys = ("tests", "failures", "errors", "skipped", "time")
        out: dict = {k: suite.get(k) for k in keys}
        out["skipped_reasons"] = sorted(
            {s.get("message", "") for s in suite.iter("skipped") if s.get("message")}
        )
        return out

    return read


def gpu_test_files() -> list[str]:
    """The test files with ``-m gpu`` tests (collecting all of tests/ would import packages
    the GPU machine need not have)."""
    return sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").glob("test_*.py")
        if "mark.gpu" in p.read_text(errors="replace")
    )


def ort_gpu_piece(onnx: Path, out: Path) -> None:
    """ONNX Runtime's GPU providers on the batch-8 engine: median ms per forward and the max
    relative error against the CPU provider on the same inputs (``--piece ort_gpu``)."""
    import numpy as np
    import onnxruntime
    from tte2tee_fast.export.ort import OrtDenoiser

    from tte2tee_fast.bench.kernels import time_ms
    from tte2tee_fast.data.schemas import TEE

    rng = np.random.default_rng(0)
    b, s = 8, 128  # the engine's batch; the packaged base's size
    x = rng.standard_normal((b, 1, s, s), dtype=np.float32)  # [B, 1, S, S]
    t = rng.integers(0, 1000, b).astype(np.int64)  # [B]
    labels = rng.choice(np.asarray(sorted(TEE.values), dtype=np.int64), (b, s, s))  # phantom-tee
    cpu = OrtDenoiser(onnx, provider="cpu", label_cache=0)  # whole forwards, as on the GPU
    ref = cpu(x, t, labels)
    rows = {"cpu": {"ms": time_ms(lambda: cpu(x, t, labels), False, 3)}}
    available = set(onnxruntime.get_available_providers())
    eps = (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider"))
    for provider, ep in eps:
        if ep not in available:
            rows[provider] = {"skip": f"{ep} is not in this onnxruntime"}
            continue
        den = OrtDenoiser(onnx, provider=provider)
        y = den(x, t, labels)
        rows[provider] = {
            "ms": time_ms(lambda den=den: den(x, t, labels), False, 10),
            "max_rel_err_vs_cpu": float(np.abs(y - ref).max() / np.abs(ref).max()),
        }
    for r in rows.values():
        if "ms" in r:
            r["vs_cpu"] = rows["cpu"]["ms"] / r["ms"]
    out.write_text(json.dumps(rows, indent=1))


def run_checks(work: Path, budget: float, dry_run: bool) -> dict:
    """Every piece in order; the result dict written by :func:`main`."""
    work.mkdir(parents=True, exist_ok=True)
    env = env_info(dry_run)
    print(f"gpu check: {env['gpu'] or 'no CUDA device'}; torch {env['torch']}", flush=True)
    check = Check(work, budget, env)
    have, cuda = dict.fromkeys(HAVE, False) | env["have"], env["cuda"]
    no_cuda = "--cpu-dry-run" if dry_run else "no CUDA device (torch.cuda.is_available() is False)"

    # the -m gpu tests, Triton compiled
    if not cuda:
        check.skip("pytest_gpu", no_cuda)
    elif not (have["pytest"] and have["pytest_benchmark"]):
        check.skip("pytest_gpu", "pytest / pytest-benchmark not installed (add their wheels)")
    else:
        xml = work / "pytest-gpu.xml"
        args = ["-m", "pytest", *gpu_test_files(), "-m", "gpu", "-q", "-rs"]
        check.run("pytest_gpu", 150, [*args, f"--junitxml={xml}"], _junit(xml))

    # the Triton kernels compiled, with their timing and floors
    if not cuda or not have["triton"]:
        check.skip("kernels", no_cuda if not cuda else "triton not installed")
    else:
        path = work / "kernels.json"
        cmd = [*CLI, "bench", "kernels", "--device", "cuda", "--json", str(path)]
        check.run("kernels", 100, cmd, _read_json(path))

    # the three pipelines of bench e2e on CUDA
    if not cuda:
        check.skip("e2e_cuda", no_cuda)
    elif not have["monai"] or not have["diffusers"]:
        check.skip("e2e_cuda", "monai / diffusers not installed (the segmenter, the baseline)")
    else:
        out = work / "e2e"
        cmd = [*CLI, "bench", "e2e", "--device", "cuda", "--out", str(out)]
        check.run("e2e_cuda", 150, cmd, _read_json(out / "e2e.json"))

    # engines: ONNX Runtime GPU providers, TensorRT
    gpu_eps = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
    ort_gpu = cuda and bool(gpu_eps & set(env["onnxruntime_providers"]))
    trt = cuda and have["tensorrt"]
    onnx = work / "tee-b8.onnx"
    if not (ort_gpu or trt):
        check.skip(
            "onnx_export", "no GPU engine to build (no CUDA / TensorRT provider, no tensorrt)"
        )
    elif not have["onnx"]:
        check.skip("onnx_export", "onnx not installed")
    else:
        cmd = [*CLI, "export", "onnx", "--adapter", "phantom-tee", "--batch", "8"]
        check.run("onnx_export", 60, [*cmd, "--out", str(onnx)])
    exported = check.pieces["onnx_export"]["status"] == "ok"
    if not ort_gpu:
        check.skip("ort_gpu", no_cuda if not cuda else "onnxruntime-gpu not installed")
    elif not exported:
        check.skip("ort_gpu", "no ONNX engine (onnx_export did not run)")
    else:
        path = work / "ort_gpu.json"
        cmd = [str(Path(__file__).resolve()), "--piece", "ort_gpu", "--onnx", str(onnx)]
        check.run("ort_gpu", 60, [*cmd, "--out", str(path)], _read_json(path))
    plan = work / "tee-b8.plan"
    if not trt:
        check.skip("trt", no_cuda if not cuda else "tensorrt not installed")
    elif not exported:
        check.skip("trt", "no ONNX engine (onnx_export did not run)")
    else:
        cmd = [*CLI, "export", "trt", "--onnx", str(onnx), "--out", str(plan), "--batch", "8"]
        check.run("trt", 150, [*cmd, "--timing-cache", str(work / "trt.cache")])
    built = check.pieces["trt"]["status"] == "ok"

    # the pytest-benchmark suites on CUDA (ours end to end, samplers, backends incl. TensorRT)
    if not cuda:
        check.skip("suites_cuda", no_cuda)
    elif not have["pytest_benchmark"]:
        check.skip("suites_cuda", "pytest-benchmark not installed")
    else:
        path = work / "suites.json"
        suites = [f"benchmarks/{s}" for s in SUITES]
        cmd = ["-m", "pytest", *suites, "--benchmark-only", f"--benchmark-json={path}", "-q"]
        env_b = {"TTE2TEE_BENCH_DEVICE": "cuda", "TTE2TEE_BENCH_SIZE": "full"}
        if built:
            env_b["TTE2TEE_BENCH_TRT_PLAN"] = str(plan)
        check.run("suites_cuda", 150, cmd, _suite_summary(path), env_b)

    # the denoiser forward on CUDA: eager fp32, bf16
    if not cuda:
        check.skip("denoiser", no_cuda)
    else:
        path = work / "denoiser.json"
        cmd = [*CLI, "bench", "denoiser", "--device", "cuda", "--adapter", "phantom-tee"]
        check.run(
            "denoiser", 90, [*cmd, "--batch", "1,8,32", "--json", str(path)], _read_json(path)
        )

    return {"env": env, "budget_s": budget, "pieces": check.pieces}


def _suite_summary(path: Path) -> Callable[[], object]:
    def read() -> list[dict]:
        data = json.loads(path.read_text())
        return [
            {
                "group": b["group"],
                "name": b["name"],
                "min_s": b["stats"]["min"],
                "median_s": b["stats"]["median"],
                **b.get("extra_info", {}),
            }
            for b in data["benchmarks"]
        ]

    return read


def write_result(path: Path, result: dict) -> None:
    try:
        from tte2tee_fast.fsutil import write_json_atomic
    except ImportError:  # the project did not install: still leave the JSON
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        tmp.replace(path)
    else:
        write_json_atomic(path, result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="the one JSON of results")
    parser.add_argument("--work", default=None, help="logs and artefacts [default: OUT's stem]")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all pieces")
    parser.add_argument("--cpu-dry-run", action="store_true", help="act as if there is no GPU")
    parser.add_argument("--missing", action="store_true", help="print missing requirements")
    parser.add_argument("--wheel-list", action="store_true", help="print the pip download line")
    parser.add_argument("--piece", choices=("ort_gpu",), help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.missing:
        print("\n".join(missing_requirements()))
        return 0
    if args.wheel_list:
        print(pip_download_line(wheel_list()))
        return 0
    out = Path(args.out)
    if args.piece == "ort_gpu":
        ort_gpu_piece(Path(args.onnx), out)
        return 0
    work = Path(args.work) if args.work else out.with_name(out.stem + "_work")
    t0 = time.monotonic()
    result = run_checks(work.resolve(), args.budget, args.cpu_dry_run)
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["unverified_note"] = "gpu_check was written on a CPU-only machine; not yet run on a GPU"
    write_result(out, result)
    counts: dict[str, int] = {}
    for p in result["pieces"].values():
        counts[p["status"]] = counts.get(p["status"], 0) + 1
    print(f"wrote {out}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 1 if counts.get("fail") or counts.get("timeout") else 0


if __name__ == "__main__":
    sys.exit(main())
