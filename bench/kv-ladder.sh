#!/usr/bin/env bash
# The cost of each step of the KV ladder a running model moves down when memory is short (issue 17,
# Transformer.ChangeKv): f16 → kivi4 → kivi2, and the 32-token-window variants. Perplexity (-c 512) of
# pycoder-29m q8_0 over the first $CHUNKS chunks of pycode-dev.txt for each type, its cost relative to f16, and the
# KV bytes per token at 512 tokens (`fitlm plan --json`'s kv_bytes_per_token). Prints a markdown table. Each type is
# used from the first token: the cost of a step once the whole context is in it (a cache converted mid-run pays less).
# The TSV keeps each run's wall time too; it is not tabled, as the machine is shared and it measures the load.
# A few minutes on 2 cores at the default 20 chunks (6 minutes at 30 on a busy machine); docs/kv-cache.md has the 100-chunk numbers of the same types.
#   bench/kv-ladder.sh                      # build, then measure
#   FITLM_DLL=/tmp/x/fitlm.dll CHUNKS=40 TYPES="f16 kivi2" bench/kv-ladder.sh
#   TABLE_ONLY=1 bench/kv-ladder.sh         # the table again from bench/out/kv-ladder/kv-ladder.tsv
set -euo pipefail
cd "$(dirname "$0")/.."
ART=${FITLM_ARTIFACTS:-/tmp/art-kvladder}
CHUNKS=${CHUNKS:-20}
THREADS=${THREADS:-2}
MODEL=${MODEL:-../shared/models/pycoder-29m-gguf/pycoder-29m-q8_0.gguf}
DATA=${DATA:-../shared/data/pycode-dev.txt}
TYPES=${TYPES:-f16 kivi4 kivi2 kivi4:r32 kivi2:r32}
[ -f "$MODEL" ] || { echo "error: $MODEL not found (set MODEL=)" >&2; exit 1; }
# FITLM_DLL: a fitlm.dll already built (a snapshot, so colleagues' rebuilds cannot change it mid-run).
if [ -z "${FITLM_DLL:-}" ]; then
    FITLM_ARTIFACTS=$ART dotnet build -c Release src/FitLM.Cli -v q -nologo >/dev/null
    FITLM_DLL=$ART/bin/FitLM.Cli/release/fitlm.dll
fi
fitlm() { dotnet "$FITLM_DLL" "$@"; }

OUT=${OUT:-bench/out/kv-ladder}
mkdir -p "$OUT"
TSV=$OUT/kv-ladder.tsv   # type, perplexity, ±, bytes/token, seconds: TABLE_ONLY=1 reprints the table from it

if [ -z "${TABLE_ONLY:-}" ]; then
    : > "$TSV"
    # f16 first: the reference every row is compared to (listed once).
    for t in f16 $TYPES; do
        if [ "$t" = f16 ] && grep -q "^f16	" "$TSV"; then continue; fi
        start=$(date +%s.%N)
        line=$(fitlm perplexity -m "$MODEL" -f "$DATA" -c 512 --chunks "$CHUNKS" -t "$THREADS" --kv "$t" 2>/dev/null | grep 'Final estimate')
        secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
        ppl=$(echo "$line" | awk '{print $5}'); err=$(echo "$line" | awk '{print $7}')
        bpt=$(fitlm plan -m "$MODEL" --memory 1GiB -c 512 --kv "$t" --json 2>/dev/null \
            | awk -F'[:,]' '/"kv_bytes_per_token"/ { gsub(/ /, "", $2); print $2 }')
        printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$ppl" "$err" "${bpt:-?}" "$secs" >> "$TSV"
        echo "measured $t: PPL $ppl ± $err, ${bpt:-?} bytes/token (${secs}s)" >&2
    done
fi

echo
echo "pycoder-29m q8_0, $(basename "$DATA"), -c 512, $CHUNKS chunks:"
echo
echo "| --kv | perplexity | vs f16 | KV bytes/token (512 tokens) | smaller than f16 |"
echo "| --- | ---: | ---: | ---: | ---: |"
awk -F'\t' '
    $1 == "f16" { p0 = $2; b0 = $4 }
    { t[NR] = $1; p[NR] = $2; e[NR] = $3; b[NR] = $4; s[NR] = $5 }
    END {
        for (i = 1; i <= NR; i++) {
            ratio = (b[i] != "?" && b0 != "?") ? sprintf("%.2fx", b0 / b[i]) : "?"
            printf "| `%s` | %.4f ± %.4f | %+.2f%% | %s | %s |\n", t[i], p[i], e[i], (p[i] / p0 - 1) * 100, b[i], ratio
        }
    }' "$TSV"
