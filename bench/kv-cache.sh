#!/usr/bin/env bash
# Reproduces the figures of docs/kv-cache.md:
#   1. perplexity (-c 512, $CHUNKS chunks) of pycoder-29m on pycode-dev.txt for every KV type, H2O at 50% and 25%
#      of the context, and the ablations; KV bytes per token of each; the table and docs/kv-cache.svg;
#   2. decode speed at context 2048 for each type (fitlm run, a 2048-token prompt, 32 generated tokens);
#   3. peak RSS at context 4096 on the synthetic llama-0.8b Q4_0 file, f16 KV against the compressed types.
# Usage: bench/kv-cache.sh [ppl|speed|rss|all]   (env: CHUNKS=100 THREADS=2 SYNTH=/tmp/synth/llama-0.8b-q4_0.gguf)
# Runs one measurement at a time (the machine has 2 cores); about 40 minutes for everything.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
ART=${FITLM_ARTIFACTS:-/tmp/art-kv}
CHUNKS=${CHUNKS:-100}
THREADS=${THREADS:-2}
MODEL=../shared/models/pycoder-29m
DATA=../shared/data/pycode-dev.txt
SYNTH=${SYNTH:-/tmp/synth/llama-0.8b-q4_0.gguf}
OUT=${OUT:-bench/out/kv-cache}
mkdir -p "$OUT"
# FITLM_DLL: a fitlm.dll already built (a snapshot, so colleagues' rebuilds cannot change it mid-run).
if [ -z "${FITLM_DLL:-}" ]; then
    FITLM_ARTIFACTS=$ART dotnet build -c Release src/FitLM.Cli -v q -nologo >/dev/null
    FITLM_DLL=$ART/bin/FitLM.Cli/release/fitlm.dll
fi
fitlm() { dotnet "$FITLM_DLL" "$@"; }

# The issue's types, then H2O at 50% and 25% of the context, then the ablations (docs/kv-cache.md, "Variants").
TYPES="f32 f16 kivi4 kivi2 xquant4 xquant3 xquant2 xquant-cl"
VARIANTS="kivi4:r0 kivi2:r32 xquant4:proj xquant3:proj xquant2:proj xquant4:x xquant4:pt xquant-cl:b2"

# A prompt of at least $1 tokens (for $2), cut from the evaluation text.
prompt() {
    local want=$1 model=$2 file="$OUT/prompt-$1-$(basename "$2").txt" chars=$(( $1 * 3 )) n
    for _ in 1 2 3 4 5 6 7 8; do
        head -c "$chars" "$DATA" > "$file"
        n=$(fitlm tokenize -m "$model" "$(cat "$file")" | wc -w)
        [ "$n" -ge "$want" ] && [ "$n" -le $(( want + 8 )) ] && break
        chars=$(( chars + (want - n) * 3 + (n < want ? 8 : -2) ))
    done
    echo "$file"
}

if [ "$what" = ppl ] || [ "$what" = all ]; then
    : > "$OUT/perplexity.tsv"
    run_ppl() { # spec keep extra-flags...
        local spec=$1 keep=$2; shift 2
        local line
        line=$(fitlm perplexity -m "$MODEL" -f "$DATA" -c 512 --chunks "$CHUNKS" -t "$THREADS" --kv "$spec" "$@" 2>/dev/null | grep 'Final estimate')
        echo "$spec $keep: $line"
        echo "$line" | awk -v s="$spec" -v k="$keep" '{print s "\t" k "\t" $5 "\t" $7}' >> "$OUT/perplexity.tsv"
    }
    for t in $TYPES; do run_ppl "$t" 0; done
    run_ppl f16 256 --kv-evict h2o --kv-keep 256 --kv-sinks 4
    run_ppl f16 128 --kv-evict h2o --kv-keep 128 --kv-sinks 4
    for t in $VARIANTS; do run_ppl "$t" 0; done
fi

if [ "$what" = speed ] || [ "$what" = all ]; then
    : > "$OUT/speed.tsv"
    p=$(prompt 2048 "$MODEL")
    for t in $TYPES xquant4:proj; do
        ms=$(fitlm run -m "$MODEL" -f "$p" -n 33 --temp 0 -c 2100 -t "$THREADS" --kv "$t" 2>&1 >/dev/null | sed -n 's/.*(\s*\([0-9.]*\) ms per token.*/\1/p')
        echo "decode at 2048, $t: $ms ms per token"
        printf '%s\t%s\n' "$t" "$ms" >> "$OUT/speed.tsv"
    done
fi

if [ "$what" = rss ] || [ "$what" = all ]; then
    [ -f "$SYNTH" ] || fitlm synth -o "$SYNTH" --shape llama-0.8b --type q4_0
    p=$(prompt 4072 "$SYNTH")
    : > "$OUT/rss.txt"
    for t in f16 kivi2 xquant4:proj xquant-cl; do
        rss=$(fitlm run -m "$SYNTH" -f "$p" -n 8 --temp 0 -c 4096 -t "$THREADS" --kv "$t" 2>&1 >/dev/null | grep -E 'peak RSS|prompt eval|eval time' | tr '\n' ' ')
        echo "llama-0.8b q4_0, context 4096, $t: $rss" | tee -a "$OUT/rss.txt"
    done
fi

if [ -s "$OUT/perplexity.tsv" ]; then
    FITLM_ARTIFACTS=$ART dotnet run bench/kv-cache-report.cs -- "$MODEL" "$OUT/perplexity.tsv" "$OUT/speed.tsv" docs/kv-cache.svg | grep -E "^\||^$" | tee "$OUT/tables.md"
fi
