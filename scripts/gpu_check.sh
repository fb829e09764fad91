#!/usr/bin/env bash
# The GPU tier's prepared check (issue 16), as one command with a time limit, for a machine with
# an NVIDIA GPU and this repository's environment (torch with CUDA, onnxruntime-gpu, xgboost with
# CUDA, nvidia-ml-py: the `gpu` and `test` extras). Nothing is downloaded.
#
#   scripts/gpu_check.sh                      # output under a new temp directory (printed)
#   OUT=/some/dir GPU_CHECK_TIMEOUT=300 scripts/gpu_check.sh
#
# 1. what the driver reports (nvidia-smi);
# 2. the device contract on the real device (tests/pod/test_devices.py: NVML and torch cases);
# 3. bench/gpu.py --device cuda: demotions past device memory, a ~1 GB promotion against a reload
#    from disk, memory back after load/unload cycles per runtime, on every GPU.
# The bench refuses to start (before building anything) when a framework has no CUDA. Its
# default limit (300 s) and cycles (50) fit a 15-minute device loan with time for a rerun;
# give GPU_CHECK_CYCLES=200 where time allows. Put gpu.txt into docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d)}
LIMIT=${GPU_CHECK_TIMEOUT:-300}
CYCLES=${GPU_CHECK_CYCLES:-50}
mkdir -p "$OUT"
echo "output: $OUT"
nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv \
  | tee "$OUT/nvidia-smi.csv"
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/pod/test_devices.py 2>&1 \
  | tee "$OUT/devices.txt"
timeout "$LIMIT" "$PY" bench/gpu.py --device cuda --cycles "$CYCLES" --json "$OUT/gpu.json" 2>&1 \
  | tee "$OUT/gpu.txt"
