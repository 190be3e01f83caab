#!/usr/bin/env bash
# A mixture of experts at a real shape under a budget (docs/moe.md): `fitlm synth --shape olmoe-7b --type q4_0`
# (16 layers, 64 experts of width 1024, top-8; 3.55 GiB) decoded with --memory 2GiB (every weight but the routed
# experts resident, the experts in the expert cache), against (a) naive expert streaming (--expert-policy none:
# every routed expert read each time it runs) under the same budget and (b) the whole model resident. For each:
# the cost model's prediction (fitlm plan, with its storage probe), measured decode tokens/s, the expert line, and
# peak RSS from /usr/bin/time -v. Greedy ids must be the same in all three.
#
#   bench/moe-speed.sh                       # synthesizes the model into $WORK first (about 5 minutes) unless MODEL is given
#   MODEL=/path/olmoe-7b-q4_0.gguf N=32 bench/moe-speed.sh
#   FITLM_DLL=/path/to/fitlm.dll             # a build already made (no build here)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
WORK=${WORK:-/tmp/fitlm-moe-speed}
N=${N:-32}
CTX=${CTX:-512}
BUDGET=${BUDGET:-2GiB}
ART=${FITLM_ARTIFACTS:-/tmp/fitlm-moe-speed-build}
DLL=${FITLM_DLL:-$ART/bin/FitLM.Cli/release/fitlm.dll}
[ -n "${FITLM_DLL:-}" ] || FITLM_ARTIFACTS=$ART dotnet build src/FitLM.Cli -c Release -v q -nologo >/dev/null
fitlm() { dotnet "$DLL" "$@"; }
mkdir -p "$WORK"
MODEL=${MODEL:-$WORK/olmoe-7b-q4_0.gguf}
if [[ ! -f $MODEL ]]; then
  fitlm synth --shape olmoe-7b --type q4_0 --vocab models/pycoder-29m-q4_k_m.gguf -o "$MODEL"
fi
PROMPT='def main():'

# name | flags
cases=("expert cache (predict)|--memory $BUDGET" "naive: every routed expert read|--memory $BUDGET --expert-policy none" "whole model resident|")
printf '| %-32s | %9s | %9s | %12s | %s |\n' run "predicted" "measured" "peak RSS" "experts"
printf '| %-32s | %9s | %9s | %12s | %s |\n' -------------------------------- --------: --------: -----------: -------
first_ids=""
for c in "${cases[@]}"; do
  name=${c%%|*}; flags=${c#*|}
  # shellcheck disable=SC2086
  predicted=$(fitlm plan -m "$MODEL" -c "$CTX" $flags 2>/dev/null | sed -n 's/^predicted decode: \([0-9.]*\) tok\/s.*/\1/p')
  # shellcheck disable=SC2086
  /usr/bin/time -v -o "$WORK/time.txt" dotnet "$DLL" run -m "$MODEL" -c "$CTX" -p "$PROMPT" -n "$N" --temp 0 --ignore-eos --ids $flags \
    > "$WORK/ids.txt" 2> "$WORK/run.txt"
  measured=$(sed -n 's/.*eval time = .*(.* ms per token, *\([0-9.]*\) tokens per second)/\1/p' "$WORK/run.txt" | grep -v '^$' | tail -1)
  rss_kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$WORK/time.txt")
  experts=$(grep '^experts:' "$WORK/run.txt" || echo "-")
  ids=$(cat "$WORK/ids.txt")
  [[ -z $first_ids ]] && first_ids=$ids
  same=$([[ $ids == "$first_ids" ]] && echo "" || echo " (GREEDY IDS DIFFER)")
  printf '| %-32s | %9s | %9s | %9.1f MiB | %s%s |\n' "$name" "${predicted:-?}" "${measured:-?}" "$(echo "$rss_kb / 1024" | bc -l)" "$experts" "$same"
done
