#!/usr/bin/env bash
# The whole GPU check in one call, for a machine lent for a few minutes: the GPU tests (every kernel
# against float64 numpy, outputs poisoned first), then benchmarks/gpu_check.py (correctness and
# timings side by side, with the copy-bandwidth floor). Logs and JSON go to $OUT (default ./out).
#
#   bash benchmarks/device_check.sh            # full sizes
#   bash benchmarks/device_check.sh --quick    # smaller timing sizes (extra flags go to gpu_check.py)
#
# Build the fatbin first (cmake -S . -B build && cmake --build build) and bring
# kernels/gpugrad_kernels.fatbin{,.sha256} along, or the first call compiles with NVRTC (~20 s).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$OUT/device.txt"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_kernels.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
tests=${PIPESTATUS[0]}
python3 benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log" | tail -45
check=${PIPESTATUS[0]}
echo "gpu tests exit $tests, gpu_check exit $check"
[ "$tests" -eq 0 ] && [ "$check" -eq 0 ]
