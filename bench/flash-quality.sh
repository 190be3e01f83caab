#!/usr/bin/env bash
# Reproduces the tables of docs/flash.md: quality of LLM-in-a-flash FFN sparsity on the real models.
#   - pycoder-reglu-31m (ReLU-gated FFN): perplexity with predicted neurons against dense, predictor recall,
#     the share of neurons held in the window cache and read fresh per token, for several predictors and windows;
#     and the same statistics in decode (fitlm run, 200 tokens).
#   - pycoder-29m (SwiGLU): 50% and 25% of neurons per token chosen by the predictor, against random choices.
#
#   CHUNKS=20 bench/flash-quality.sh    # the tables of docs/flash.md: about 45 minutes on a (busy) 2-core machine
#   bench/flash-quality.sh              # 100 chunks per perplexity run: about 3-4 hours (the runs go token by
#                                       # token through the window, 50-250 tokens/s)
#
# Data split (calibration and evaluation never overlap), as bench/bitstack.sh: ../shared/data/pycode-dev.txt is
# cut at the first line break after byte (size - 153600); the last ~150 KB is the calibration text, the rest the
# evaluation text. Work files go to $WORK, by default on tmpfs (/dev/shm): there the prepared files are read
# through memory instead of with direct I/O, so these quality runs do not wait on storage (the neurons chosen,
# and hence perplexity and every counter, are the same either way). Finished runs are kept: a rerun only does
# what is missing (delete $WORK to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
WORK=${WORK:-/dev/shm/fitlm-flash}
CHUNKS=${CHUNKS:-100}
SWEEP_CHUNKS=${SWEEP_CHUNKS:-10}   # window sweep: the window changes what is read, not what is computed
THREADS=${THREADS:-1}              # one thread: least disturbed on a shared machine; any count gives the same numbers
mkdir -p "$WORK/log"

ART=${FITLM_ARTIFACTS:-$WORK/artifacts}
FITLM_ARTIFACTS=$ART dotnet build -c Release src/FitLM.Cli >/dev/null
# Run from a copy, so rebuilding the checkout while this runs does not pull the binaries from under it.
rm -rf "$WORK/bin" && cp -r "$ART/bin/FitLM.Cli/release" "$WORK/bin"
fitlm() { nice -n 5 dotnet "$WORK/bin/fitlm.dll" "$@"; }

# 1. Split the data.
DATA=$SHARED/data/pycode-dev.txt
size=$(stat -c%s "$DATA")
tail -c +$((size - 153600 + 1)) "$DATA" | tail -n +2 > "$WORK/calib.txt"
calib=$(stat -c%s "$WORK/calib.txt")
head -c $((size - calib)) "$DATA" > "$WORK/eval.txt"
cmp <(cat "$WORK/eval.txt" "$WORK/calib.txt") "$DATA"
echo "calibration: $calib bytes (last part of pycode-dev.txt); evaluation: $((size - calib)) bytes (the rest)"

# 2. Convert (BF16, as the weights are stored: nothing is lost) and prepare (row-column bundled FFN).
for m in pycoder-reglu-31m pycoder-29m; do
  [ -f "$WORK/$m.gguf" ] || fitlm convert -m "$SHARED/models/$m" -o "$WORK/$m.gguf" --type bf16
  [ -f "$WORK/$m.flash.gguf" ] || fitlm prepare -m "$WORK/$m.gguf" -o "$WORK/$m.flash.gguf"
done

# 3. Predictors: NAME MODEL calibrate-options...
calibrate() {
  local name=$1 model=$2; shift 2
  [ -f "$WORK/$name.pred.gguf" ] && return
  /usr/bin/time -f "calibrate: %e s wall, %U s user, %S s sys, peak %M KB" \
    dotnet "$WORK/bin/fitlm.dll" calibrate -m "$WORK/$model.flash.gguf" -f "$WORK/calib.txt" -o "$WORK/$name.pred.gguf" -t "$THREADS" "$@" \
    > "$WORK/log/calibrate-$name.txt" 2>&1
  tail -2 "$WORK/log/calibrate-$name.txt"
}
calibrate reglu-r64 pycoder-reglu-31m --rank 64
calibrate reglu-r128 pycoder-reglu-31m --rank 128
calibrate reglu-r256 pycoder-reglu-31m --rank 256
calibrate reglu-r128-995 pycoder-reglu-31m --rank 128 --recall 0.995
calibrate swiglu-r128 pycoder-29m --rank 128
calibrate swiglu-r256 pycoder-29m --rank 256

# 4. Perplexity runs. ppl NAME MODEL-FILE chunks options...: runs unless its log (NAME-cCHUNKS.txt) has a result.
ppl() {
  local log=$WORK/log/$1-c$3.txt model=$2 chunks=$3; shift 3
  if ! grep -q "Final estimate" "$log" 2>/dev/null; then
    fitlm perplexity -m "$WORK/$model" -f "$WORK/eval.txt" -c 512 --chunks "$chunks" -t "$THREADS" "$@" > "$log" 2>&1 || { cat "$log"; exit 1; }
  fi
}
value() { sed -n "s/^Final estimate: PPL = \([0-9.]*\).*/\1/p" "$1"; }
# One table row from a run: row LABEL NAME CHUNKS DENSE-PPL -> | label | PPL | change vs dense | chosen | window | fresh | recall |
row() {
  local label=$1 log=$WORK/log/$2-c$3.txt dense=$4
  local p ffn
  p=$(value "$log")
  ffn=$(grep "^ffn:" "$log" || true)
  local chosen held fresh recall
  chosen=$(sed -n 's/^ffn: [a-z]* \([0-9.]*%\).*/\1/p' <<< "$ffn")
  held=$(sed -n 's/.*window holds \([0-9.]*%\).*/\1/p' <<< "$ffn")
  fresh=$(sed -n 's/.*fresh \([0-9.]*%\).*/\1/p' <<< "$ffn")
  recall=$(sed -n 's/.*recall \([0-9.]*\).*/\1/p' <<< "$ffn")
  printf "| %s | %s | %+.2f%% | %s | %s | %s | %s |\n" "$label" "$p" "$(echo "100 * ($p - $dense) / $dense" | bc -l)" \
    "${chosen:-100%}" "${held:--}" "${fresh:--}" "${recall:--}"
}
header() { echo "| $1 | PPL | vs dense | neurons computed | window holds | fresh per token | recall |"; echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"; }

TABLES=$WORK/tables.md
: > "$TABLES"

# 4a. ReLU model: dense, then each predictor with a window of 4 previous tokens (and the recall measured).
R=pycoder-reglu-31m
ppl reglu-dense $R.gguf "$CHUNKS"
dense=$(value "$WORK/log/reglu-dense-c$CHUNKS.txt")
for p in reglu-r128 reglu-r256 reglu-r128-995 reglu-r64; do
  ppl "$p-k4" $R.flash.gguf "$CHUNKS" --predictor "$WORK/$p.pred.gguf" --ffn-window 4 --ffn-recall
done
{
  echo "### pycoder-reglu-31m, $CHUNKS chunks, window k = 4"; echo; header predictor
  row "dense" reglu-dense "$CHUNKS" "$dense"
  row "rank 64, recall target 0.99" reglu-r64-k4 "$CHUNKS" "$dense"
  row "rank 128, recall target 0.99" reglu-r128-k4 "$CHUNKS" "$dense"
  row "rank 256, recall target 0.99" reglu-r256-k4 "$CHUNKS" "$dense"
  row "rank 128, recall target 0.995" reglu-r128-995-k4 "$CHUNKS" "$dense"
  echo
} >> "$TABLES"

# 4b. SwiGLU model: a fixed share of neurons per token, by the predictor or at random.
S=pycoder-29m
ppl swiglu-dense $S.gguf "$CHUNKS"
dense=$(value "$WORK/log/swiglu-dense-c$CHUNKS.txt")
for f in 0.5 0.25; do
  ppl "swiglu-pred-$f" $S.flash.gguf "$CHUNKS" --predictor "$WORK/swiglu-r128.pred.gguf" --ffn-fraction $f --ffn-window 4 --ffn-recall
  ppl "swiglu-random-$f" $S.flash.gguf "$CHUNKS" --ffn-fraction $f --random-neurons --ffn-window 4 --ffn-recall
done
ppl "swiglu-pred256-0.5" $S.flash.gguf "$CHUNKS" --predictor "$WORK/swiglu-r256.pred.gguf" --ffn-fraction 0.5 --ffn-window 4 --ffn-recall
{
  echo "### pycoder-29m, $CHUNKS chunks, window k = 4"; echo; header neurons
  row "dense" swiglu-dense "$CHUNKS" "$dense"
  for f in 0.5 0.25; do
    row "$f, predicted (rank 128)" "swiglu-pred-$f" "$CHUNKS" "$dense"
    row "$f, random" "swiglu-random-$f" "$CHUNKS" "$dense"
  done
  row "0.5, predicted (rank 256)" "swiglu-pred256-0.5" "$CHUNKS" "$dense"
  echo
} >> "$TABLES"

# 4c. The window (k previous tokens kept) changes what is read, never what is computed: a sweep on fewer chunks.
BEST=${BEST:-reglu-r128}
ppl reglu-dense $R.gguf "$SWEEP_CHUNKS"
sdense=$(value "$WORK/log/reglu-dense-c$SWEEP_CHUNKS.txt")
for k in 0 1 2 4 8; do ppl "$BEST-k$k" $R.flash.gguf "$SWEEP_CHUNKS" --predictor "$WORK/$BEST.pred.gguf" --ffn-window $k; done
{
  echo "### pycoder-reglu-31m, predictor $BEST, $SWEEP_CHUNKS chunks, window sizes"; echo; header window
  for k in 0 1 2 4 8; do row "k = $k" "$BEST-k$k" "$SWEEP_CHUNKS" "$sdense"; done
  echo
} >> "$TABLES"

# 4d. Decode: up to 200 tokens generated one at a time (greedy), the statistics over prompt and decode.
# The prompt ends inside a function body, so that the model goes on writing code (given a longer header, this
# model ended the file at once); run -n stops early only at the end-of-text token.
PROMPT='def read_config(path):
    result = {}
'
for k in 0 4; do
  log=$WORK/log/decode-$BEST-k$k.txt
  grep -q "^ffn:" "$log" 2>/dev/null || fitlm run -m "$WORK/$R.flash.gguf" -p "$PROMPT" -n 200 --temp 0 -t "$THREADS" \
    --predictor "$WORK/$BEST.pred.gguf" --ffn-window $k --ffn-recall > "$log" 2>&1 || { cat "$log"; exit 1; }
  echo "decode (fitlm run -n 200), $BEST, k = $k: $(grep -E '^(prompt eval|eval) time' "$log" | sed 's/ *=.*\/ *\([0-9]*\) \(tokens\|runs\).*/ \1/' | tr '\n' ' ')$(grep '^ffn:' "$log")" >> "$TABLES"
done
echo >> "$TABLES"

cat "$TABLES"
echo "logs in $WORK/log, tables in $TABLES"
