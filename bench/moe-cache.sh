#!/usr/bin/env bash
# The expert cache on a mixture of experts (docs/moe.md): for each policy, the hit rate, bytes read and I/O wait per
# token over held-out text decoded one token at a time (perplexity with -b 1: every token a decode step, the
# perplexity itself the check that the output does not change), and whether greedy text equals the resident run's.
# The cache holds 25% of the expert bytes (pycoder-moe: 8 of 32 experts a layer, 4.5 MiB).
#
#   bench/moe-cache.sh                                  # pycoder-moe, 20 chunks of 512 tokens (~10k decode steps)
#   CHUNKS=4 bench/moe-cache.sh                         # shorter
#   MODEL=../shared/models/zoo/tiny-qwen3moe CACHE=64KiB bench/moe-cache.sh
#   FITLM_DLL=/path/to/fitlm.dll bench/moe-cache.sh    # a build already made (no build here)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-../shared/models/pycoder-moe}
TEXT=${TEXT:-../shared/data/pycode-dev.txt}
CACHE=${CACHE:-4608KiB}
CHUNKS=${CHUNKS:-20}
ART=${FITLM_ARTIFACTS:-/tmp/fitlm-moe-cache}
DLL=${FITLM_DLL:-$ART/bin/FitLM.Cli/release/fitlm.dll}
[ -n "${FITLM_DLL:-}" ] || FITLM_ARTIFACTS=$ART dotnet build src/FitLM.Cli -c Release -v q -nologo >/dev/null
fitlm() { dotnet "$DLL" "$@"; }
PROMPT=${PROMPT:-$'import numpy as np\n\n\ndef softmax(x, axis=-1):\n    """Compute the softmax of x along axis."""\n'}

greedy() { fitlm run -m "$MODEL" -p "$PROMPT" -n 64 --temp 0 --ids --no-warmup "$@" 2>/dev/null; }
ppl() { fitlm perplexity -m "$MODEL" -f "$TEXT" -c 512 --chunks "$CHUNKS" -b 1 "$@" 2>&1; }

reference_ids=$(greedy)
reference_ppl=$(ppl | sed -n 's/^Final estimate: PPL = \([0-9.]*\).*/\1/p')
echo "model $MODEL, cache $CACHE, $CHUNKS chunks of 512 tokens decoded one at a time; resident PPL $reference_ppl"
printf '| %-11s | %6s | %8s | %9s | %14s | %16s | %8s | %11s |\n' policy margin "hit rate" "read/token" "I/O wait/token" "read ahead (used)" PPL "greedy same"
printf '| %-11s | %6s | %8s | %9s | %14s | %16s | %8s | %11s |\n' ----------- -----: -------: ---------: -------------: ---------------: -------: -----------
run() {
    local policy=$1 margin=$2 out line hit read wait ahead p same
    out=$(ppl --expert-cache "$CACHE" --expert-policy "$policy" --expert-margin "$margin")
    line=$(grep '^experts:' <<<"$out")
    hit=$(sed -n 's/.*hit rate \([0-9.]*%\).*/\1/p' <<<"$line")
    read=$(sed -n 's/.*uses, \(.*\) read per token.*/\1/p' <<<"$line")
    wait=$(sed -n 's/.*I\/O wait \([0-9.]* ms\) per token.*/\1/p' <<<"$line")
    ahead=$(sed -n 's/.*, \([0-9]*\) read ahead (\([0-9]*%\) used.*/\1 (\2)/p' <<<"$line")
    p=$(sed -n 's/^Final estimate: PPL = \([0-9.]*\).*/\1/p' <<<"$out")
    [ "$p" = "$reference_ppl" ] || p="$p (differs!)"
    same=no; [ "$(greedy --expert-cache "$CACHE" --expert-policy "$policy" --expert-margin "$margin")" = "$reference_ids" ] && same=yes
    printf '| %-11s | %6s | %8s | %9s | %14s | %16s | %8s | %11s |\n' "$policy" "$margin" "$hit" "$read" "$wait" "${ahead:--}" "$p" "$same"
}
for policy in none lru frequency predict-lru predict; do run "$policy" 0; done
for margin in 1 2; do run predict "$margin"; run predict-lru "$margin"; done
