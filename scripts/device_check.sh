#!/usr/bin/env bash
# Device check: everything a lent GPU machine can tell us, in one short run (target: under 8 minutes on an
# H100/H200). For a machine that already has torch and Triton installed and no network: nothing is
# pip-installed. Steps, each under its own time limit so one slow step cannot eat the others':
#
#   1. build the C++/CUDA extension in place against the installed torch, for the visible GPU's
#      architecture (TORCH_CUDA_ARCH_LIST from the device);
#   2. the GPU tests: tests/test_gpu.py (cuda and triton backends through the public API, sync-free default
#      path, launch counts), tests/test_triton_ratio.py, tests/test_penalty_and_grad_gpu.py (the fused
#      value-and-gradient op) and tests/test_large_planes.py (the large-plane paths, 224 x 224 included) on
#      the compiled kernels (pytest-xdist when present);
#   3. python -m benchmarks --gpu --quick: the headline freq_penalty cases, and each large-plane transform path
#      forced at (32, 3, 224, 224) and cutoffs 0.25 / 0.5 (the GEMM / cuFFT crossover) and the two small-plane
#      paths (dft, packed) at (4096, 3, 32, 32), next to the eager penalty and the copy of J, results as JSON +
#      markdown named after the device;
#   4. python -m benchmarks --gpu --only training: the training steps side by side (standard, double
#      backward, finite differences, lazy and sub-batch finite differences; small CNN and PreAct ResNet-18;
#      ResNet-18 also with bf16 + channels_last, and compiled), each as a ratio to the standard step of the
#      same run, plus a profiled finite-difference step (penalty vs the rest, host vs device busy);
#   5. scripts/triton_launch_probe.py: host microseconds of a Triton launch, our launcher, one ATen op;
#   6. tests/test_triton.py on the compiled kernels (the energy and magnitude kernels);
#   and last, the quick run's targets table.
#
# Usage: scripts/device_check.sh. Environment: PYTHON (default python3), RESULTS_DIR (default
# benchmarks/results), JAFR_GIT_REVISION (the commit a copied tree was made from; recorded instead of what
# its .git says), and the steps' limits in seconds, BUILD_TIMEOUT / TEST_TIMEOUT / BENCH_TIMEOUT /
# STEP_TIMEOUT / PROBE_TIMEOUT / TRITON_TIMEOUT (90 / 120 / 130 / 150 / 30 / 120; 0 skips a step). On an
# H100 the steps took 37 / 43 / 49 / - / 5 s before the large-plane, value-and-gradient and training-step
# cases were added; the Triton suite ran 42% of its tests in 100 s with 16 workers (it is last and the least
# needed). At most about 11 minutes in all. Each benchmark stops starting cases 40 s before its limit (the
# compiled cases come last), so it always writes the results of the cases it timed.
# DRY_RUN=1 to print the commands instead of running them (works without a GPU).
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
RESULTS_DIR="${RESULTS_DIR:-benchmarks/results}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-90}"
TEST_TIMEOUT="${TEST_TIMEOUT:-120}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-130}"
STEP_TIMEOUT="${STEP_TIMEOUT:-150}"
TRITON_TIMEOUT="${TRITON_TIMEOUT:-120}"
PROBE_TIMEOUT="${PROBE_TIMEOUT:-30}"
DRY_RUN="${DRY_RUN:-0}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # compiled kernels only

if [ "$DRY_RUN" != "1" ] && ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "device_check: no CUDA device is visible to torch ($PYTHON); this script needs a GPU machine" >&2
    exit 2
fi

if [ "$DRY_RUN" = "1" ]; then
    arch="9.0"
    device="dry-run"
else
    arch="$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")"
    device="$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0))" | tr -c 'A-Za-z0-9._\n-' '_')"
fi
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$RESULTS_DIR"
log="$RESULTS_DIR/device-check-${device}-${stamp}.log"
status=0
xdist=""
workers="$(nproc 2>/dev/null || echo 8)"; [ "$workers" -gt 16 ] && workers=16
if "$PYTHON" -c "import xdist" 2>/dev/null; then xdist="-n $workers"; fi
timeout_opt=""
if "$PYTHON" -c "import pytest_timeout" 2>/dev/null; then timeout_opt="--timeout=120"; fi

step() {  # step <name> <seconds> <command...>: run with a time limit, log it, remember failures
    local name="$1" limit="$2"
    shift 2
    echo "\$ $*" | tee -a "$log"
    if [ "$DRY_RUN" = "1" ]; then return 0; fi
    if [ "$limit" = "0" ]; then echo "[$name: skipped (its time limit is 0)]" | tee -a "$log"; return 0; fi
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "[$name: exit $rc after $((SECONDS - start)) s$([ "$rc" -eq 124 ] && echo ", stopped at its ${limit} s limit")]" | tee -a "$log"
    [ "$rc" -eq 0 ] || status=1
}

{
    echo "# device_check on ${device} (compute capability ${arch}) at ${stamp}"
    [ "$DRY_RUN" = "1" ] || "$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    echo "git ${JAFR_GIT_REVISION:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
} | tee "$log"

step build "$BUILD_TIMEOUT" env TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-8}" JAFR_FORCE_CUDA=1 \
    "$PYTHON" setup.py -q build_ext --inplace
step gpu-tests "$TEST_TIMEOUT" env JAFR_TRITON_TEST_DEVICE=cuda "$PYTHON" -m pytest -q -rs -s -p no:cacheprovider \
    $xdist $timeout_opt tests/test_gpu.py tests/test_triton_ratio.py tests/test_penalty_and_grad_gpu.py tests/test_large_planes.py
step bench "$BENCH_TIMEOUT" "$PYTHON" -m benchmarks --gpu --quick --no-readme --out "$RESULTS_DIR" \
    --time-limit "$((BENCH_TIMEOUT > 80 ? BENCH_TIMEOUT - 40 : BENCH_TIMEOUT / 2))"
step train-steps "$STEP_TIMEOUT" "$PYTHON" -m benchmarks --gpu --only training --no-readme --out "$RESULTS_DIR" \
    --time-limit "$((STEP_TIMEOUT > 80 ? STEP_TIMEOUT - 40 : STEP_TIMEOUT / 2))"
step launch-probe "$PROBE_TIMEOUT" "$PYTHON" scripts/triton_launch_probe.py
step triton-tests "$TRITON_TIMEOUT" env JAFR_TRITON_TEST_DEVICE=cuda "$PYTHON" -m pytest -q -rs -p no:cacheprovider \
    $xdist $timeout_opt tests/test_triton.py

echo "device_check: $([ $status -eq 0 ] && echo passed || echo FAILED); log: $log" | tee -a "$log"
quick="$(ls -t "$RESULTS_DIR"/quick-cuda-*.md 2>/dev/null | head -n 1)"
if [ -n "$quick" ]; then  # end with the targets table of this run's quick benchmark
    sed -n '/^#### Targets/,/^#### freq_penalty/p' "$quick" | sed '$d' | tee -a "$log"
fi
exit $status
