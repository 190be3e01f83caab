#!/usr/bin/env bash
# Issue 3's figures: random-weight llama-0.8b files from `fitlm synth` in the four types llama.cpp's targets name,
# then `fitlm bench` (pp128, tg64, 2 threads, 5 repetitions) on each — twice, to show how far the machine's numbers
# move between runs (pass 1 prints the table, pass 2 the JSON llama-bench scripts read).
# Usage: bench/cpu-speed.sh   (env: FITLM=path/to/fitlm, DIR=/tmp/synth, OUT=bench/out/cpu-speed,
#        VOCAB=../shared/tokenizer-tests/ggml-vocab-llama-spm.gguf, PIN="taskset -c 0,1" to pin to two cores on a
#        larger machine, TYPES="q8_0 q4_0 q4_k_m f16", REPS=5)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${DIR:-/tmp/synth}
OUT=${OUT:-bench/out/cpu-speed}
VOCAB=${VOCAB:-../shared/tokenizer-tests/ggml-vocab-llama-spm.gguf}
TYPES=${TYPES:-q8_0 q4_0 q4_k_m f16}
REPS=${REPS:-5}
PIN=${PIN:-}
if [ -z "${FITLM:-}" ]; then
    FITLM_ARTIFACTS=${FITLM_ARTIFACTS:-/tmp/art-bench} dotnet build -c Release src/FitLM.Cli -v q -nologo >/dev/null
    FITLM="dotnet ${FITLM_ARTIFACTS:-/tmp/art-bench}/bin/FitLM.Cli/release/fitlm.dll"
fi
mkdir -p "$DIR" "$OUT"
for t in $TYPES; do
    f=$DIR/llama-0.8b-$t.gguf
    [ -f "$f" ] || $FITLM synth -o "$f" --shape llama-0.8b --type "$t" --vocab "$VOCAB"
done
lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | sed 's/Flags:.*\(avx512[a-z_]*\).*/Flags: ... \1 .../' > "$OUT/machine.txt" || true
for t in $TYPES; do
    $PIN $FITLM bench -m "$DIR/llama-0.8b-$t.gguf" -p 128 -n 64 -t 2 -r "$REPS" 2>&1 | tee "$OUT/bench-$t-1.txt"
done
for t in $TYPES; do
    $PIN $FITLM bench -m "$DIR/llama-0.8b-$t.gguf" -p 128 -n 64 -t 2 -r "$REPS" --json > "$OUT/bench-$t-2.json"
    cat "$OUT/bench-$t-2.json"
done
