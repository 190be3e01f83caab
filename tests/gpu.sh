#!/usr/bin/env bash
# The GPU test run (docs/cuda.md). CI has no GPU; this runs on a machine that has one, with the NVIDIA driver and
# NVRTC (the CUDA toolkit or pip's nvidia-cuda-nvrtc) but no .NET. Two halves:
#
#   tests/gpu.sh --publish [DIR]   on a machine with the .NET SDK: publish a self-contained fitlm into DIR
#                                  (default gpu-out/, git-ignored): Native AOT, one file, checked under 60 MiB.
#   tests/gpu.sh [FITLM [MODEL...]] on the GPU machine: `fitlm devices`, then `fitlm devices --check` (every GPU
#                                  kernel against the CPU, and its bandwidth against a measured copy), then with each
#                                  MODEL the whole forward pass on the GPU against the CPU (prefill and decode logits,
#                                  KV cache f32 and f16), then `fitlm serve --device cuda` on the first MODEL against
#                                  `fitlm run --device cuda` (tests/gpu-serve-check.py, python3). FITLM is the
#                                  published binary (default: $FITLM, else gpu-out/fitlm); MODEL defaults to the demo
#                                  model. Exits non-zero on failure.
#
# The publish also writes FITLM.gz (about 40% of the size): a device run carries at most 64 MiB with the working tree.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if [[ "${1:-}" == "--publish" ]]; then
    out=${2:-$root/gpu-out}
    rm -rf "$out"
    mkdir -p "$out"
    # Native AOT links with clang, or gcc where clang is missing (the ILCompiler targets pick it).
    dotnet publish "$root/src/FitLM.Cli" -c Release -r linux-x64 -p:PublishAot=true -o "$out/publish"
    cp "$out/publish/fitlm" "$out/fitlm"
    rm -rf "$out/publish"
    size=$(stat -c %s "$out/fitlm")
    gzip -9 -k -f "$out/fitlm"
    echo "published $out/fitlm: $((size / 1024 / 1024)) MiB ($(( $(stat -c %s "$out/fitlm.gz") / 1024 / 1024 )) MiB as fitlm.gz)"
    if (( size >= 60 * 1024 * 1024 )); then
        echo "error: $out/fitlm is $((size / 1024 / 1024)) MiB, over the 60 MiB a device run can carry" >&2
        exit 1
    fi
    exit 0
fi

fitlm=${1:-${FITLM:-$root/gpu-out/fitlm}}
shift || true
models=("$@")
(( ${#models[@]} > 0 )) || models=("$root/models/pycoder-29m-q4_k_m.gguf")
if [[ ! -x "$fitlm" ]]; then
    echo "error: no fitlm at $fitlm (run tests/gpu.sh --publish on a machine with the .NET SDK, carry gpu-out/)" >&2
    exit 2
fi

echo "== fitlm devices"
"$fitlm" devices
echo "== fitlm devices --check -m ${models[*]}"
"$fitlm" devices --check -m "${models[@]}"
# The server's batched decode on the GPU: concurrent requests against `fitlm run`, token for token.
if command -v python3 > /dev/null; then
    echo "== tests/gpu-serve-check.py ${models[0]}"
    python3 "$root/tests/gpu-serve-check.py" "$fitlm" "${models[0]}"
else
    echo "python3 not found: the serve check (tests/gpu-serve-check.py) did not run" >&2
    exit 1
fi
echo "== GPU test run passed"
