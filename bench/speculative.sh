#!/usr/bin/env bash
# Speculative decoding on pycoder-29m q8_0 (docs/speculative.md): plain greedy decoding against --lookup and --draft
# on a code-editing prompt (a function from pycode-dev.txt, to be written again with a variable renamed), -n 200.
# Prints tokens/s and tokens per target pass of each, interleaved over REPS rounds, and checks that the three greedy
# texts are identical. Usage: bench/speculative.sh [REPS] (env: FITLM, MODEL, DRAFT, PROMPT, THREADS, N, LOOKUP).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
SHARED=${SHARED:-../shared}
MODEL=${MODEL:-$SHARED/models/pycoder-29m-gguf/pycoder-29m-q8_0.gguf}
DRAFT=${DRAFT:-$SHARED/models/pycoder-29m-gguf/pycoder-29m-q2_k.gguf}
THREADS=${THREADS:-2}
N=${N:-200}
LOOKUP=${LOOKUP:-5}
if [ -z "${FITLM:-}" ]; then
  dotnet build -c Release src/FitLM.Cli -v q -nologo >/dev/null
  FITLM="dotnet ${FITLM_ARTIFACTS:-artifacts}/bin/FitLM.Cli/release/fitlm.dll"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# The prompt: check_seedable_sampler (pycode-dev.txt lines 358-381), then the instruction and the new signature.
if [ -n "${PROMPT:-}" ]; then cp "$PROMPT" "$out/prompt.txt"; else
{
  sed -n 358,381p "$SHARED/data/pycode-dev.txt"
  printf '\n\n# The same function again, with the variable train_dl renamed to loader:\ndef check_seedable_sampler():\n'
} > "$out/prompt.txt"
fi

run() { # name, extra flags...
  local name=$1; shift
  $FITLM run -m "$MODEL" -f "$out/prompt.txt" -n "$N" --temp 0 --ignore-eos -t "$THREADS" "$@" >"$out/$name.txt" 2>"$out/$name.err"
  # Decode rate: tokens after the prompt's pass over the eval time (the same count for every variant).
  local ms; ms=$(sed -n 's/^ *eval time = *\([0-9.]*\) ms.*/\1/p' "$out/$name.err")
  local passes; passes=$(sed -n 's/.*eval time = .*\/ *\([0-9]*\) runs.*/\1/p' "$out/$name.err")
  awk -v n="$N" -v ms="$ms" -v p="$passes" -v name="$name" 'BEGIN { printf "%-8s %8.2f tok/s  %5.2f tokens per target pass  (%d passes, %.0f ms)\n", name, (n - 1) / ms * 1000, (n - 1) / p, p, ms }' | tee -a "$out/rates.txt"
}

for r in $(seq 1 "$REPS"); do
  echo "round $r"
  run plain
  run lookup --lookup "$LOOKUP"
  run draft --draft "$DRAFT"
  grep -h '^speculative' "$out/lookup.err" "$out/draft.err" | sed 's/^/  /'
done

# Medians over the rounds: each variant's rate, and its per-round ratio to plain decoding (the machine may be busy).
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
rate() { awk -v v="$1" '$1 == v { print $2 }' "$out/rates.txt"; }
summary="median over $REPS rounds: plain $(rate plain | median) tok/s"
for v in lookup draft; do
  ratio=$(paste <(rate "$v") <(rate plain) | awk '{ printf "%.3f\n", $1 / $2 }' | median)
  summary="$summary, $v $(rate "$v" | median) tok/s (${ratio}x plain, median of per-round ratios)"
done
echo "$summary"

same=yes
for v in lookup draft; do
  if ! diff -q "$out/plain.txt" "$out/$v.txt" >/dev/null; then same=no; echo "$v: text differs from plain decoding"; diff "$out/plain.txt" "$out/$v.txt" | head -20; fi
done
echo "identical greedy text (plain = lookup = draft): $same"
echo "--- generated text ---"
cat "$out/plain.txt"
