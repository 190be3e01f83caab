#!/usr/bin/env bash
# Builds and runs bench/cuda-matvec.cu on a GPU machine with the CUDA toolkit (nvcc; sm_90 and later: the variants use
# programmatic launch). Usage: bench/cuda-matvec.sh [VARIANT-SUBSTRING]  (main's kernels always run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${TMPDIR:-/tmp}/fitlm-cuda-matvec
nvcc -O3 -arch=sm_90 -std=c++17 -I "$root/src/FitLM/Backends/Cuda/Kernels" "$root/bench/cuda-matvec.cu" -o "$out"
"$out" "$@"
