#!/usr/bin/env bash
# GPU benchmark of issue 20 item 6, in one call: at most 8 minutes on one H100/H200.
# Never in CI. Writes one JSON of figures (default results/bench-gpu/gpu.json; under $OUT
# when the device runner sets it). Extra arguments go to bench_gpu.py (e.g. --images 40000,
# --skip online). On a machine without CUDA: bench/gpu/run.sh --smoke (the CPU path).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUTFILE=${OUT:-results/bench-gpu}/gpu.json
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
exec timeout 480 "$PY" bench/gpu/bench_gpu.py --out "$OUTFILE" "$@"
