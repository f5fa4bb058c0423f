#!/usr/bin/env bash
# The whole GPU check in one command: the GPU tests (every kernel
# against float64 numpy, outputs and shared memory poisoned first), then benchmarks/gpu_check.py
# (correctness and timings side by side, with the copy-bandwidth floor). Each stage runs under a
# time limit, and all of them end within GG_BUDGET_S seconds (default 540: give the call ~570).
# The log ($OUT/device_check.log, each stage's exit status and duration in it) and gpu_check's
# JSON go to $OUT (default ./out).
#
#   bash benchmarks/device_check.sh            # full sizes
#   bash benchmarks/device_check.sh --quick    # fewer large correctness sizes; timings still at the
#                                              # target shapes (extra flags go to gpu_check.py)
#
# The kernel variants without a measured result yet (benchmarks/RESULTS.md: the tensor-core linear
# steps, "mma"; the prefetched long-row softmax, "prefetch"; the row losses' cuLaunchKernel path,
# "direct"; the linear step for float32 X normalised, float64 X and uint8 X under float64
# weights, "other_kinds") are tested in a process of their own first: a kernel that traps kills
# its CUDA context, and with it every later result of that process. If they fail, gpu_check.py
# runs the established kernels alone, then each new one in a separate process.
#
# Build the fatbin first (cmake -S . -B build && cmake --build build) and bring
# kernels/gpugrad_kernels.fatbin{,.sha256} along; without a current one the script builds it first
# (sm_90 only), where cmake and nvcc are found.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
LOG="$OUT/device_check.log"  # every stage's output, one after the other: one file to read or send
DEADLINE=$((SECONDS + ${GG_BUDGET_S:-540}))  # end on our own, logs intact, before the call's limit

# stage NAME CAP CMD...: run CMD under `timeout`, at most CAP seconds and never past DEADLINE (a
# hung kernel must not take the later stages with it). Its output goes to $OUT/current.log while it
# runs (so a killed call still returns it), then onto $LOG; its last lines are printed here.
# Returns CMD's status: 124 when stopped at its limit, 125 when too little time was left to start.
stage() {
    local name=$1 cap=$2 left rc status t0=$SECONDS
    shift 2
    left=$((DEADLINE - SECONDS))
    if [ "$left" -lt "${GG_MIN_STAGE_S:-30}" ]; then
        echo "== stage $name: not started, ${left} s left" | tee -a "$LOG"
        return 125
    fi
    [ "$cap" -le "$left" ] || cap=$left
    PYTHONUNBUFFERED=1 timeout -k 10 "$cap" "$@" > "$OUT/current.log" 2>&1
    rc=$?
    status="== stage $name: exit $rc after $((SECONDS - t0)) s (limit $cap s)"
    tail -n 60 "$OUT/current.log"
    { echo "== stage $name: $*"; cat "$OUT/current.log"; echo "$status"; } >> "$LOG"
    rm -f "$OUT/current.log"
    echo "$status"
    return $rc
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$LOG"
# A fatbin matching the sources, else NVRTC compiles each kernel at its first use (and the first-call
# timing has no fatbin row): build it here if it was not brought along (nvcc 13 on 16 cores).
if ! python3 -c "from gpugrad.backends import kernels as k; raise SystemExit(k.fatbin_path() is None)"; then
    if command -v cmake > /dev/null && command -v nvcc > /dev/null; then
        stage fatbin 150 bash -c "cmake -S . -B build-device -DGPUGRAD_CUDA_ARCHS=90 && cmake --build build-device"
    else
        echo "== no current fatbin and no cmake/nvcc: kernels compile through NVRTC" | tee -a "$LOG"
    fi
fi
NEW="mma or tensor_core or prefetch or direct or other_kinds"
TESTS=(python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_kernels.py)
stage tests 240 "${TESTS[@]}" -k "not ($NEW)"
tests=$?
stage new-tests 150 "${TESTS[@]}" -k "$NEW"
new=$?
if [ "$new" -eq 0 ]; then
    stage gpu_check 360 python3 benchmarks/gpu_check.py --out "$OUT" "$@"
    check=$?
else
    stage gpu_check-established 240 python3 benchmarks/gpu_check.py --out "$OUT" --linear-variants simt \
        --long-rows-variants stream,block --row-calls cupy --skip-other-kinds "$@"
    check=$?
    stage gpu_check-mma 90 python3 benchmarks/gpu_check.py --out "$OUT" --only linear --linear-variants mma "$@"
    stage gpu_check-prefetch 60 python3 benchmarks/gpu_check.py --out "$OUT" --only long-rows \
        --long-rows-variants prefetch "$@"
    stage gpu_check-direct 60 python3 benchmarks/gpu_check.py --out "$OUT" --only row-calls "$@"
    stage gpu_check-other-kinds 60 python3 benchmarks/gpu_check.py --out "$OUT" --only other-kinds "$@"
fi
# Training on the card (the trainer, the estimators, gpugrad train) against numpy, epochs beside PyTorch.
stage trainer_check 150 python3 benchmarks/trainer_check.py --out "$OUT"
trainer=$?
echo "gpu tests exit $tests, new-kernel tests exit $new, gpu_check exit $check, trainer_check exit $trainer" | tee -a "$LOG"
[ "$tests" -eq 0 ] && [ "$new" -eq 0 ] && [ "$check" -eq 0 ] && [ "$trainer" -eq 0 ]
