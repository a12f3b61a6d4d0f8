#!/usr/bin/env bash
# Prepare the GPU check (tools/gpu_check.sh) on a machine with network access.
#
# Builds wheels of higher-core and every plugin under plugins/ (--no-deps), and downloads
# the test and benchmark dependencies that the GPU machine lacks, as wheels for its
# Python (default 3.12, x86_64 manylinux), into one folder (default .whl/, git-ignored).
# The GPU machine has torch, pluggy, pytest and numpy already and no network.
#
# Usage: tools/gpu_prepare.sh [WHEEL_DIR] [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl}
python_version=${2:-3.12}
rm -rf "$dir" && mkdir -p "$dir"
python3 -m pip wheel -q --no-deps -w "$dir" . plugins/*/
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
# the third-party plugins' references, the benchmark competitors and TorchOpt's needs
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
    --implementation cp "${platforms[@]}" -d "$dir" \
    lion-pytorch==0.2.5 prodigyopt==1.1.2 higher==0.2.1 torchopt==0.7.3 optree==0.20.0 graphviz==0.21
ls "$dir"
