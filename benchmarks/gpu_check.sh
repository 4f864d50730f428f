#!/usr/bin/env bash
# GPU check in one command: everything this project could not verify on a CPU, within 8 minutes
# on a machine with one NVIDIA GPU, into one JSON of results.
#
#   bash benchmarks/gpu_check.sh [--wheels DIR] [--out FILE] [--python PY] [--venv DIR] [--cpu-dry-run]
#
# UNVERIFIED ON A GPU: written and tested on a CPU-only machine (where every GPU piece prints a
# skip line and the JSON is still written; tests/test_gpu_check.py). Expect to fix details on
# the first real run.
#
# What it assumes: no network; a Python 3.12 with CUDA torch and triton (and numpy) installed,
# but not diffusers, peft or the other dependencies. It
#   1. makes a venv with --system-site-packages (so it sees the system torch / triton),
#   2. installs each missing requirement from --wheels DIR with
#      `pip install --no-index --find-links DIR` (one at a time: a missing wheel costs only the
#      pieces that need it, and prints a skip line),
#   3. installs this project with --no-deps (using the torch it finds),
#   4. runs benchmarks/gpu_check.py with what is left of the 8-minute budget: the `-m gpu`
#      tests with Triton compiled (TRITON_INTERPRET unset), `tte2tee bench kernels --device
#      cuda`, `tte2tee bench e2e` on CUDA (skipped while it has no --device), ONNX Runtime CUDA /
#      TensorRT providers and a TensorRT plan where installed, the pytest-benchmark suites on
#      CUDA and `tte2tee bench denoiser --device cuda`; one line per piece ("skip: trt:
#      tensorrt not installed"), results and logs in --out and beside it.
#
# Filling the wheels folder, on any Linux x86_64 machine with network (wheels for CPython 3.12;
# the versions are the ones this project is developed with; `python benchmarks/gpu_check.py
# --wheel-list` prints this line for the environment it runs in). Several are binary wheels
# (scipy, pillow, matplotlib, onnx, onnxruntime, safetensors, tokenizers, ...): --no-deps, so
# every dependency is listed; torch, triton, numpy and torch's own dependencies are not:
#
#   pip download --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#     --only-binary=:all: --no-deps -d wheels \
#     accelerate annotated-doc annotated-types anyio certifi charset-normalizer click contourpy \
#     cycler diffusers flatbuffers fonttools h11 hf-xet httpcore2 httpx2 huggingface-hub idna \
#     importlib-metadata iniconfig kiwisolver lazy-importer markdown-it-py matplotlib mdurl \
#     ml-dtypes monai onnx onnxruntime packaging peft pillow pluggy protobuf psutil py-cpuinfo2 \
#     pydantic pydantic-core pygments pyparsing pytest pytest-benchmark python-dateutil pyyaml \
#     regex requests rich safetensors scipy shellingham tokenizers tqdm transformers truststore \
#     typer typing-inspection tzdata urllib3 zipp
#
# (peft needs transformers, accelerate and tokenizers: most of the list.) For ONNX Runtime's CUDA
# / TensorRT providers download onnxruntime-gpu instead of onnxruntime; for TensorRT plans add
# tensorrt (and its tensorrt-cu12-* wheels). Without them those pieces are skipped.
set -u

WHEELS=""
OUT="gpu_check.json"
PY="${PYTHON:-python3}"
VENV=".venv-gpu-check"
DRY=""
BUDGET=480
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --venv) VENV="$2"; shift 2 ;;
        --cpu-dry-run) DRY="--cpu-dry-run"; shift ;;
        -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
cd "$ROOT" || exit 2
SECONDS=0

# 1. a venv that sees the system torch / triton
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$VENV" || { echo "gpu_check.sh: cannot make $VENV" >&2; exit 2; }
fi
VPY="$ROOT/$VENV/bin/python"
case "$VENV" in /*) VPY="$VENV/bin/python" ;; esac
PIP=("$VPY" -m pip install --disable-pip-version-check --no-input -q)

# 2. the missing requirements, from the wheels folder only
mapfile -t MISSING < <("$VPY" benchmarks/gpu_check.py --missing 2>/dev/null)
for req in "${MISSING[@]}"; do
    [ -n "$req" ] || continue
    if [ -z "$WHEELS" ]; then
        echo "skip: install $req: no --wheels DIR"
    elif ! "${PIP[@]}" --no-index --find-links "$WHEELS" "$req" >/dev/null 2>&1; then
        echo "skip: install $req: not in $WHEELS (or one of its dependencies is not)"
    fi
done

# 3. the project itself, no dependencies (setuptools from the system, else from the wheels);
#    setuptools builds in ./build: removed again unless it was there before
HAD_BUILD=""; [ -e build ] && HAD_BUILD=1
if ! "${PIP[@]}" --no-deps --no-build-isolation . >/dev/null 2>&1; then
    FIND=()
    [ -n "$WHEELS" ] && FIND=(--no-index --find-links "$WHEELS")
    "${PIP[@]}" --no-deps "${FIND[@]}" . >/dev/null 2>&1 \
        || echo "skip: install tte2tee-fast: pip could not build it (setuptools>=68 missing?)"
fi
[ -z "$HAD_BUILD" ] && rm -rf build
echo "gpu_check.sh: venv ready in ${SECONDS} s"

# 4. the checks, with what is left of the budget
LEFT=$(( BUDGET - SECONDS ))
[ "$LEFT" -lt 60 ] && LEFT=60
env -u TRITON_INTERPRET "$VPY" benchmarks/gpu_check.py --out "$OUT" --budget "$LEFT" $DRY
