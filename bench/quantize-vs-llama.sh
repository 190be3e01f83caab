#!/usr/bin/env bash
# fitlm quantize vs llama.cpp's llama-quantize on pycoder-29m: the same F32 GGUF (fitlm convert --type f32)
# quantized by both, then llama-perplexity and fitlm perplexity on both files (4 numbers per type).
# Prints a markdown table (docs/quantize.md holds one run's).
#
# usage: bench/quantize-vs-llama.sh [TYPE ...]        (default: every type fitlm quantize writes)
# env:   FITLM   the fitlm command (default: fitlm on PATH, else `dotnet run -c Release --project src/FitLM.Cli --`)
#        SHARED  ../shared beside the checkout;  WORK  scratch folder (default: a temp folder, removed at exit)
#        CHUNKS  perplexity chunks of 512 tokens (default 40);  THREADS (default 2)
#        FULL=1  also measure the second file when the two are byte-identical (by default its numbers are reused:
#                identical bytes give identical perplexity, and each perplexity run takes a minute on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
LLAMA=$SHARED/peers/llama.cpp
CHUNKS=${CHUNKS:-40}
THREADS=${THREADS:-2}
if [[ -z "${FITLM:-}" ]]; then
  if command -v fitlm >/dev/null; then FITLM=fitlm; else FITLM="dotnet run -c Release --project src/FitLM.Cli --"; fi
fi
for f in "$LLAMA/llama-quantize" "$LLAMA/llama-perplexity" "$SHARED/models/pycoder-29m/config.json" "$SHARED/data/pycode-dev.txt"; do
  [[ -e $f ]] || { echo "error: $f is missing (set SHARED)" >&2; exit 1; }
done
TYPES=("$@")
[[ ${#TYPES[@]} -gt 0 ]] || TYPES=(Q8_0 Q6_K Q5_K_M Q5_K_S Q5_1 Q5_0 Q4_K_M Q4_K_S Q4_1 Q4_0 Q3_K_L Q3_K_M Q3_K_S Q2_K F16 BF16)
if [[ -z "${WORK:-}" ]]; then WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT; fi
DATA=$SHARED/data/pycode-dev.txt

llama_ppl() { "$LLAMA/llama-perplexity" -m "$1" -f "$DATA" -c 512 --chunks "$CHUNKS" -t "$THREADS" 2>&1 | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'; }
fitlm_ppl() { $FITLM perplexity -m "$1" -f "$DATA" -c 512 --chunks "$CHUNKS" -t "$THREADS" 2>/dev/null | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'; }
secs() { local t0=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(date +%s.%N) - $t0" | bc; }

$FITLM convert -m "$SHARED/models/pycoder-29m" -o "$WORK/f32.gguf" --type f32 >/dev/null
echo "| type | size (MiB) | bytes | quantize s (llama / fitlm, $THREADS threads) | llama-perplexity: llama's file | llama-perplexity: fitlm's file | fitlm perplexity: llama's file | fitlm perplexity: fitlm's file | fitlm file vs llama file |"
echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for t in "${TYPES[@]}"; do
  L=$WORK/llama-$t.gguf; F=$WORK/fitlm-$t.gguf
  sl=$(secs "$LLAMA/llama-quantize" "$WORK/f32.gguf" "$L" "$t" "$THREADS")
  sf=$(secs $FITLM quantize "$WORK/f32.gguf" "$F" "$t" --threads "$THREADS")
  same=$(cmp -s "$L" "$F" && echo identical || echo differ)
  size=$(awk -v b="$(stat -c %s "$F")" 'BEGIN { printf "%.1f", b / 1048576 }')
  a=$(llama_ppl "$L"); c=$(fitlm_ppl "$L")
  if [[ $same == identical && -z "${FULL:-}" ]]; then b=$a; d=$c; else b=$(llama_ppl "$F"); d=$(fitlm_ppl "$F"); fi
  rel=$(awk -v x="$b" -v y="$a" 'BEGIN { printf "%+.2f%%", 100 * (x - y) / y }')
  printf '| %s | %s | %s | %.1f / %.1f | %s | %s | %s | %s | %s |\n' "$t" "$size" "$same" "$sl" "$sf" "$a" "$b" "$c" "$d" "$rel"
  rm -f "$L" "$F"
done
