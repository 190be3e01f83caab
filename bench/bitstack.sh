#!/usr/bin/env bash
# Reproduces docs/bitstack.md: BitStack compression of pycoder-29m, perplexity along the size ladder beside
# llama.cpp's quantized files (table + SVG plot), a live resize, and decode speed.
#
#   bench/bitstack.sh            # everything (about 45 minutes on a 2-core machine)
#   CHUNKS=10 bench/bitstack.sh  # a quicker look (perplexity on 10 chunks instead of 100)
#
# Data split (calibration and evaluation never overlap): ../shared/data/pycode-dev.txt is cut at the first line
# break after byte (size - 153600). Everything after that line break (the last ~150 KB) is the calibration text;
# everything before it is the evaluation text. Both files are written to $WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
WORK=${WORK:-/tmp/fitlm-bitstack}
CHUNKS=${CHUNKS:-100}
THREADS=${THREADS:-$(nproc)}
mkdir -p "$WORK"

ART=${FITLM_ARTIFACTS:-$WORK/artifacts}
FITLM_ARTIFACTS=$ART dotnet build -c Release src/FitLM.Cli >/dev/null
fitlm() { dotnet "$ART/bin/FitLM.Cli/release/fitlm.dll" "$@"; }

# 1. Split the data.
DATA=$SHARED/data/pycode-dev.txt
size=$(stat -c%s "$DATA")
tail -c +$((size - 153600 + 1)) "$DATA" | tail -n +2 > "$WORK/calib.txt"
calib=$(stat -c%s "$WORK/calib.txt")
head -c $((size - calib)) "$DATA" > "$WORK/eval.txt"
cmp <(cat "$WORK/eval.txt" "$WORK/calib.txt") "$DATA"
echo "calibration: $calib bytes (last part of pycode-dev.txt); evaluation: $((size - calib)) bytes (the rest)"

# 2. Compress (16 blocks per matrix, rank 4; defaults).
STACK=$WORK/pycoder-29m.bitstack.gguf
if [ ! -f "$STACK" ]; then
  fitlm compress -m "$SHARED/models/pycoder-29m" --method bitstack --calib "$WORK/calib.txt" -o "$STACK" -t "$THREADS" | tee "$WORK/compress.txt"
fi
fitlm info -m "$STACK" | sed -n '/^stack/,/^tensors:/p' | tee "$WORK/ladder.txt"

# 3. A live resize: load at 3.5 bits per weight, shrink by 10%, grow back.
params=$(fitlm info -m "$SHARED/models/pycoder-29m" | sed -n 's/^parameters: *\([0-9,]*\).*/\1/p' | tr -d ,)
fitlm ladder -m "$STACK" -f "$WORK/eval.txt" --chunks 1 --weights $((params * 35 / 80)) --resize-test 10 -t "$THREADS" | tee "$WORK/resize.txt"

# 4. Perplexity along the ladder and at each llama.cpp file's size (llama.cpp protocol: -c 512, $CHUNKS chunks).
Q=$SHARED/models/pycoder-29m-gguf
fitlm ladder -m "$STACK" -f "$WORK/eval.txt" -c 512 --chunks "$CHUNKS" --bits 2.25,2.5,3,3.5,4,4.5,5,5.5 \
  --compare "$Q/pycoder-29m-q2_k.gguf" "$Q/pycoder-29m-q3_k_m.gguf" "$Q/pycoder-29m-q4_0.gguf" "$Q/pycoder-29m-q4_k_m.gguf" \
  --reference "$SHARED/models/pycoder-29m" --plot docs/bitstack-ppl.svg --table "$WORK/table.md" -t "$THREADS"

# 5. Decode speed, one thread (least disturbed on a shared machine), interleaved rounds: the stack at 3 bits per
#    weight with each matrix cache (and the direct kernel) against llama.cpp's Q4_K_M and Q8_0 files.
w3=$((params * 3 / 8))
: > "$WORK/bench.txt"
for round in 1 2 3; do
  for cache in q8_0 f16 none; do
    echo "stack 3 bits/weight, --stack-cache $cache" | tee -a "$WORK/bench.txt"
    fitlm bench -m "$STACK" --weights "$w3" --stack-cache $cache -p 0 -n 32 -r 10 --no-bandwidth -t 1 | grep -E "tg32|peak" | tee -a "$WORK/bench.txt"
  done
  for q in q4_k_m q8_0; do
    echo "llama.cpp $q" | tee -a "$WORK/bench.txt"
    fitlm bench -m "$Q/pycoder-29m-$q.gguf" -p 0 -n 32 -r 10 --no-bandwidth -t 1 | grep -E "tg32|peak" | tee -a "$WORK/bench.txt"
  done
done
echo "results in $WORK (table.md, resize.txt, bench.txt) and docs/bitstack-ppl.svg"
