#!/usr/bin/env bash
# The GPU checks in one run: the CUDA tests, then the GPU benchmarks (issue 18).
#
# Run on the GPU machine from the repository root, after tools/gpu_prepare.sh made the
# wheels here. Installs them into a private folder (no network, no dependencies
# resolved), runs every test marked `cuda` with a missing GPU made an error, then the
# benchmarks with small repeat counts. Logs and tables go to OUT_DIR.
#
# Usage: tools/gpu_check.sh OUT_DIR
# Environment: WHEELS (default .whl), HIGHER_CORE_REQUIRE_CUDA (default 1; 0 to rehearse
# on a CPU), TEST_WORKERS (pytest-xdist workers where installed, default 8),
# GPU_CHECK_SITE (where the wheels go; default a new temporary folder),
# BENCH_REPEATS (default 3), BENCH_ARGS (more arguments for benchmarks/run.py),
# SKIP_INNER_LOOP_BENCH=1 (run only the batched-tasks benchmark after the tests).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: tools/gpu_check.sh OUT_DIR}
mkdir -p "$out"
wheels=${WHEELS:-.whl}
site=${GPU_CHECK_SITE:-$(mktemp -d)}
export HIGHER_CORE_REQUIRE_CUDA=${HIGHER_CORE_REQUIRE_CUDA:-1}
export HIGHER_CORE_STRICT_PLUGINS=1
export PYTHONDONTWRITEBYTECODE=1
start=$SECONDS
status=0

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
    || { echo "installing the wheels failed" | tee "$out/summary.txt"; exit 1; }
export PYTHONPATH="$site"
# -P: import higher_core from the installed wheel, not from the working tree
py="python3 -P"
export HIGHER_CORE_TORCH=$($py -c 'import torch; print(torch.__version__.split("+")[0])')
$py tools/check_torch.py 2>&1 | tee "$out/environment.txt" || status=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$out/environment.txt" 2>&1 || true

workers=()
if $py -c 'import xdist' 2>/dev/null; then workers=(-n "${TEST_WORKERS:-8}"); fi
echo "== CUDA tests ($((SECONDS - start)) s)"
timeout 240 $py -m pytest tests/test_cuda.py tests/test_patch_zoo.py -m cuda -q -p no:cacheprovider -p no:benchmark \
    "${workers[@]}" -rfE >"$out/cuda_tests.log" 2>&1 || status=1
tail -n 25 "$out/cuda_tests.log"

repeats=${BENCH_REPEATS:-3}
device=cpu
[ "$HIGHER_CORE_REQUIRE_CUDA" = 1 ] && device=cuda
if [ "${SKIP_INNER_LOOP_BENCH:-0}" != 1 ]; then
    echo "== benchmarks on $device ($((SECONDS - start)) s)"
    timeout 220 $py benchmarks/run.py --device "$device" --repeats "$repeats" ${BENCH_ARGS:-} \
        --json "$out/bench.json" >"$out/bench.md" 2>&1 || status=1
    tail -n 30 "$out/bench.md"
fi
if [ -f benchmarks/batched_tasks.py ]; then
    echo "== batched tasks on $device ($((SECONDS - start)) s)"
    timeout 120 $py benchmarks/batched_tasks.py --device "$device" --repeats "$repeats" >"$out/batched.md" 2>&1 || status=1
    tail -n 20 "$out/batched.md"
fi
echo "total $((SECONDS - start)) s, status $status" | tee -a "$out/summary.txt"
exit $status
