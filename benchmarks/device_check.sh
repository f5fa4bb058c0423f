#!/usr/bin/env bash
# The whole GPU check in one call, for a machine lent for a few minutes: the GPU tests (every kernel
# against float64 numpy, outputs and shared memory poisoned first), then benchmarks/gpu_check.py
# (correctness and timings side by side, with the copy-bandwidth floor). Logs and JSON go to $OUT
# (default ./out).
#
#   bash benchmarks/device_check.sh            # full sizes
#   bash benchmarks/device_check.sh --quick    # smaller timing sizes (extra flags go to gpu_check.py)
#
# The kernels and call paths not yet run on a GPU when this was written (the tensor-core linear
# steps, "mma"; the prefetched long-row softmax, "prefetch"; the row losses' cuLaunchKernel path,
# "direct") are tested in a process of their own first: a kernel that traps kills its CUDA context,
# and with it every later result of that process. If they fail, gpu_check.py runs the established
# kernels alone, then each new one in a separate process.
#
# Build the fatbin first (cmake -S . -B build && cmake --build build) and bring
# kernels/gpugrad_kernels.fatbin{,.sha256} along, or each kernel compiles with NVRTC at its first use.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$OUT/device.txt"
NEW="mma or tensor_core or prefetch or direct"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_kernels.py -k "not ($NEW)" 2>&1 |
    tee "$OUT/gpu_tests.log" | tail -15
tests=${PIPESTATUS[0]}
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_kernels.py -k "$NEW" 2>&1 |
    tee "$OUT/gpu_tests_new.log" | tail -15
new=${PIPESTATUS[0]}
if [ "$new" -eq 0 ]; then
    python3 benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log" | tail -45
    check=${PIPESTATUS[0]}
else
    python3 benchmarks/gpu_check.py --out "$OUT" --linear-variants simt --long-rows-variants stream,block \
        --row-calls cupy "$@" 2>&1 |
        tee "$OUT/gpu_check.log" | tail -40
    check=${PIPESTATUS[0]}
    python3 benchmarks/gpu_check.py --out "$OUT" --only linear --linear-variants mma "$@" 2>&1 |
        tee "$OUT/gpu_check_mma.log" | tail -25
    python3 benchmarks/gpu_check.py --out "$OUT" --only long-rows --long-rows-variants prefetch "$@" 2>&1 |
        tee "$OUT/gpu_check_prefetch.log" | tail -25
    python3 benchmarks/gpu_check.py --out "$OUT" --only row-calls "$@" 2>&1 |
        tee "$OUT/gpu_check_direct.log" | tail -25
fi
echo "gpu tests exit $tests, new-kernel tests exit $new, gpu_check exit $check"
[ "$tests" -eq 0 ] && [ "$new" -eq 0 ] && [ "$check" -eq 0 ]
