#!/usr/bin/env bash
# The whole GPU check in one command: benchmarks/gpu_check.py (the GPU tests, every kernel against
# float64 numpy in a pytest process per group of kernel variants, then the timings with the
# copy-bandwidth floor), then benchmarks/trainer_check.py (training on the card against numpy).
# Each stage runs under a time limit, and all of them end within GG_BUDGET_S seconds (default 540).
# The log ($OUT/device_check.log, each stage's exit status and duration in it) and the JSON results
# go to $OUT (default ./out).
#
#   bash benchmarks/device_check.sh            # full sizes
#   bash benchmarks/device_check.sh --quick    # the tests without their largest sizes; timings still
#                                              # at the target shapes (extra flags go to gpu_check.py)
#
# Build the fatbin first (cmake -S . -B build && cmake --build build) and bring
# kernels/gpugrad_kernels.fatbin{,.sha256} along; without a current one the script builds it first
# (sm_90 only), where cmake and nvcc are found.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
LOG="$OUT/device_check.log"  # every stage's output, one after the other: one file to read or send
DEADLINE=$((SECONDS + ${GG_BUDGET_S:-540}))  # end on our own, logs intact, before an outer time limit stops the whole command

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
stage gpu_check 420 python3 benchmarks/gpu_check.py --out "$OUT" "$@"
check=$?
# Training on the card (the trainer, the estimators, gpugrad train) against numpy, epochs beside PyTorch.
stage trainer_check 150 python3 benchmarks/trainer_check.py --out "$OUT"
trainer=$?
echo "gpu_check exit $check, trainer_check exit $trainer" | tee -a "$LOG"
[ "$check" -eq 0 ] && [ "$trainer" -eq 0 ]
