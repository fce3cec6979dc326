#!/usr/bin/env bash
# GPU check (make gpu-check): on a CUDA machine, run the GPU tests and the kernel benchmarks, and keep a
# log named after the device under benchmarks/results/.
#
#   0. scripts/triton_compile_check.py for this device's architecture (registers and spills per kernel);
#   1. tests/test_triton.py with JAFR_TRITON_TEST_DEVICE=cuda: every Triton test on the compiled kernels
#      (no interpreter), plus the bf16 / TF32 / large-batch checks marked `gpu`;
#   2. every other test marked `gpu` (pytest -m gpu), if any;
#   3. the kernel benchmarks (python -m benchmarks --gpu --only kernels), which write their own
#      results/<device>-<time>-<rev>.json and .md.
#
# Usage: scripts/gpu_check.sh [extra pytest args for step 1]. Env: PYTHON (default: .venv/bin/python if
# present, else python), JAFR_GPU_CHECK_SKIP_BENCH=1 to skip step 3.
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
unset TRITON_INTERPRET  # compiled kernels only

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to torch; nothing to check here" >&2
    exit 2
fi

device="$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0))" | tr -c 'A-Za-z0-9._\n-' '_' )"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p benchmarks/results
log="benchmarks/results/gpu-check-${device}-${stamp}.log"

status=0
{
    echo "# gpu_check on ${device} at ${stamp}"
    "$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    git rev-parse --short HEAD 2>/dev/null | sed 's/^/git /'
} | tee "$log"

run() {
    echo "\$ $*" | tee -a "$log"
    "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "(exit $rc)" | tee -a "$log"
    [ "$rc" -eq 0 ] || status=1
}

arch="$("$PYTHON" -c "import torch; m, n = torch.cuda.get_device_capability(0); print(10 * m + n)")"
run "$PYTHON" scripts/triton_compile_check.py --arch "$arch"
run env JAFR_TRITON_TEST_DEVICE=cuda "$PYTHON" -m pytest tests/test_triton.py -q -rs -p no:cacheprovider "$@"
# Other modules' GPU tests (exit code 5 = none collected, which is fine).
echo "\$ $PYTHON -m pytest tests -m gpu --ignore=tests/test_triton.py" | tee -a "$log"
"$PYTHON" -m pytest tests -m gpu -q -rs -p no:cacheprovider --ignore=tests/test_triton.py 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
echo "(exit $rc)" | tee -a "$log"
[ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || status=1

if [ "${JAFR_GPU_CHECK_SKIP_BENCH:-0}" != "1" ]; then
    run "$PYTHON" -m benchmarks --gpu --only kernels
fi

echo "gpu_check: $([ $status -eq 0 ] && echo passed || echo FAILED); log in $log" | tee -a "$log"
exit $status
