#!/usr/bin/env bash
# The GPU checks of one short device session, in order of value, each time-boxed (about 5 minutes in all on an
# H200): tests/test_cuda.py, the planner's regret on the GPU in float32 and bfloat16 (calibrate.py, which also
# fits the bfloat16 GEMM rate, Machine.half), then the layer table with the fitted constants and CUDA graphs.
# Run from the repository root on a machine with CUDA and PyTorch; logs and JSON go to $OUT (default out/gpu).
# Not yet run as a whole: the second device call of 2026-11-30 was refused.
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv,noheader
echo "=== 1 tests/test_cuda.py"
timeout 60 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_cuda.py >"$OUT/cuda_tests.log" 2>&1
echo "rc=$?"; tail -4 "$OUT/cuda_tests.log"
echo "=== 2 calibrate $(($(date +%s) - T0)) s"
timeout 130 python3 benchmarks/calibrate.py --device cuda --dtypes float32,bfloat16 --batches 64,1024,8192 \
    --repeats 5 --search 0 --json "$OUT/cal.json" >"$OUT/cal.log" 2>&1
echo "rc=$?"; grep -v "^|" "$OUT/cal.log" | tail -14
echo "=== 3 layer table $(($(date +%s) - T0)) s"
M=""; [ -s "$OUT/cal.json" ] && M="--machine $OUT/cal.json"
timeout 110 python3 benchmarks/gpu.py $M --graphs 1024 --json "$OUT/gpu.json" >"$OUT/gpu.log" 2>&1
echo "rc=$?"; cut -c1-240 "$OUT/gpu.log"
echo "=== end $(($(date +%s) - T0)) s"
