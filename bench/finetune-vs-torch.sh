#!/usr/bin/env bash
# Issue 13, acceptance 4: one LoRA training step on pycoder-29m (batch 4 × 128, rank 8 on all seven projections,
# AdamW) in FitLM and in PyTorch (../shared/tools/torch-lora-reference.py --bench: Debian's python3-torch with
# libopenblas0-pthread, 2 threads), interleaved ROUNDS times, so machine noise hits both alike. Prints each run's
# tokens/s and peak RSS (from /usr/bin/time -v: the process's whole life, model load included) and the ratios.
# Usage: bench/finetune-vs-torch.sh   (env: FITLM=path/to/fitlm, ROUNDS=3, STEPS=10, OUT=bench/out/finetune-vs-torch)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=../shared
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-10}
OUT=${OUT:-bench/out/finetune-vs-torch}
if [ -z "${FITLM:-}" ]; then
    FITLM_ARTIFACTS=${FITLM_ARTIFACTS:-/tmp/art-bench} dotnet build -c Release src/FitLM.Cli -v q -nologo >/dev/null
    FITLM="dotnet ${FITLM_ARTIFACTS:-/tmp/art-bench}/bin/FitLM.Cli/release/fitlm.dll"
fi
/usr/bin/python3 -c "import torch" 2>/dev/null || { echo "needs Debian's python3-torch (apt-get install python3-torch libopenblas0-pthread)"; exit 1; }
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
rss() { grep "Maximum resident" "$1" | awk '{printf "%.0f", $6 / 1024}'; }
printf "%-6s %-8s %12s %14s\n" round engine "tokens/s" "peak RSS MiB" | tee "$OUT/table.txt"
for r in $(seq 1 "$ROUNDS"); do
    # FitLM: STEPS + 1 steps on the fixed batch from the reference adapter; the first step is the warm-up.
    rm -rf "$TMP/ft"
    /usr/bin/time -v $FITLM finetune -m $SHARED/models/pycoder-29m --train-ids $SHARED/finetune/lora-batch.json \
        --adapter-init $SHARED/finetune --lr 1e-3 --lr-schedule constant --clip 0 --steps $((STEPS + 1)) -t 2 \
        -o "$TMP/ft" > "$TMP/fitlm.out" 2> "$TMP/fitlm.err"
    f_tps=$(grep -E "^training speed" "$TMP/fitlm.err" | sed -E 's/.* ([0-9.]+) tokens\/s after warm-up.*/\1/')
    f_rss=$(rss "$TMP/fitlm.err")
    printf "%-6s %-8s %12s %14s\n" "$r" fitlm "$f_tps" "$f_rss" | tee -a "$OUT/table.txt"
    /usr/bin/time -v /usr/bin/python3 $SHARED/tools/torch-lora-reference.py $SHARED/models/pycoder-29m \
        $SHARED/finetune/lora-batch.json "$TMP/torch" --bench "$STEPS" > "$TMP/torch.out" 2> "$TMP/torch.err"
    t_tps=$(grep "torch LoRA step" "$TMP/torch.out" | sed -E 's/.*step: ([0-9.]+) tokens\/s.*/\1/')
    t_rss=$(rss "$TMP/torch.err")
    printf "%-6s %-8s %12s %14s\n" "$r" torch "$t_tps" "$t_rss" | tee -a "$OUT/table.txt"
    echo "round $r: FitLM / PyTorch = $(echo "$f_tps / $t_tps" | bc -l | cut -c1-5)× tokens/s, $(echo "$f_rss / $t_rss" | bc -l | cut -c1-5)× peak RSS" | tee -a "$OUT/table.txt"
done
