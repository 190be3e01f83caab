#!/usr/bin/env bash
# The CUDA switches that are off by default, measured against the default on a GPU machine with a published fitlm
# (tests/gpu.sh --publish; docs/cuda.md, "Decode probes"):
#   1. devices --check with FITLM_CUDA_FOLD_NORM=1 FITLM_CUDA_FUSED_ATTN=1 FITLM_CUDA_FUSED_ACT=1 FITLM_CUDA_PERSISTENT=3
#      FITLM_CUDA_PINNED_IO=1 on the models given (Q4_0/Q8_0 ones exercise the folded norm and the fused activation);
#   2. llama-7b (fitlm synth) tg128, q4_0 and q8_0: each probe and all five against none, and greedy text each way;
#   3. KIVI decode after a prompt of 9000 characters of DATA, FITLM_CUDA_KIVI_TILES=1 against 0, kivi4 and kivi2,
#      beside f16; run's prompt eval with the warm-up and with --no-warmup.
# Usage: FITLM=path VOCAB=vocab.gguf DATA=text [OUT=dir] [SHAPE=llama-7b] bench/cuda-probes.sh [MODEL.gguf...]
# Numbers only; nothing here passes or fails.
set -uo pipefail
fitlm=${FITLM:?FITLM: the published fitlm}
vocab=${VOCAB:?VOCAB: the tokenizer GGUF fitlm synth gives its models}
data=${DATA:?DATA: a text file for the long prompt}
out=${OUT:-/tmp/fitlm-cuda-probes}
shape=${SHAPE:-llama-7b}
mkdir -p "$out"
for t in q4_0 q8_0; do
    [[ -f $out/$shape-$t.gguf ]] || "$fitlm" synth --shape "$shape" --type $t --vocab "$vocab" -o "$out/$shape-$t.gguf" -t 8 > /dev/null 2>&1
done

if (( $# > 0 )); then
    echo "== devices --check with the five decode probes on"
    FITLM_CUDA_FOLD_NORM=1 FITLM_CUDA_FUSED_ATTN=1 FITLM_CUDA_FUSED_ACT=1 FITLM_CUDA_PERSISTENT=3 FITLM_CUDA_PINNED_IO=1 "$fitlm" devices --check -m "$@" > "$out/probes-check.log" 2>&1
    echo "exit $?"; grep -vE "^ +[a-z0-9_]+ +[0-9]" "$out/probes-check.log" | tail -40
fi

echo "== $shape tg128 -r 3: fold (FITLM_CUDA_FOLD_NORM), fused (FITLM_CUDA_FUSED_ATTN), persistent (FITLM_CUDA_PERSISTENT), pinned (FITLM_CUDA_PINNED_IO), act (FITLM_CUDA_FUSED_ACT)"
tg() { # type fold fused persistent pinned act
    echo "$1 fold=$2 fused=$3 persistent=$4 pinned=$5 act=$6: $(FITLM_CUDA_FOLD_NORM=$2 FITLM_CUDA_FUSED_ATTN=$3 FITLM_CUDA_PERSISTENT=$4 FITLM_CUDA_PINNED_IO=$5 FITLM_CUDA_FUSED_ACT=$6 \
        "$fitlm" bench -m "$out/$shape-$1.gguf" --device cuda -p 0 -n 128 -r 3 2>&1 | grep -E 'tg128|achieved|rror' | sed -E 's/ +/ /g' | tr '\n' ' ' | cut -c1-300)"
}
tg q4_0 0 0 0 0 0; tg q4_0 1 0 0 0 0; tg q4_0 0 1 0 0 0; tg q4_0 0 0 3 0 0; tg q4_0 0 0 6 0 0; tg q4_0 0 0 0 1 0; tg q4_0 0 0 0 0 1
tg q4_0 1 1 0 1 1; tg q4_0 1 1 3 1 1; tg q4_0 0 0 0 0 0
tg q8_0 0 0 0 0 0; tg q8_0 1 0 0 0 0; tg q8_0 0 1 0 0 0; tg q8_0 0 0 2 0 0; tg q8_0 0 0 0 1 0; tg q8_0 0 0 0 0 1; tg q8_0 1 1 2 1 1; tg q8_0 0 0 0 0 0
echo "== greedy text, $shape q4_0, 32 tokens"
for v in "0 0 0 0 0" "1 0 0 0 0" "0 1 0 0 0" "0 0 3 0 0" "0 0 0 1 0" "0 0 0 0 1" "1 1 3 1 1"; do
    set -- $v
    echo "fold=$1 fused=$2 persistent=$3 pinned=$4 act=$5: $(FITLM_CUDA_FOLD_NORM=$1 FITLM_CUDA_FUSED_ATTN=$2 FITLM_CUDA_PERSISTENT=$3 FITLM_CUDA_PINNED_IO=$4 FITLM_CUDA_FUSED_ACT=$5 "$fitlm" run \
        -m "$out/$shape-q4_0.gguf" --device cuda -p 'def f(x):' -n 32 --temp 0 2> "$out/err.txt" | md5sum | cut -c1-8) $(grep -ciE 'warning|rror' "$out/err.txt") warnings"
done

echo "== after a 9000-character prompt (-c 4096): KIVI decode with FITLM_CUDA_KIVI_TILES=1 and 0, f16; the warm-up"
head -c 9000 "$data" > "$out/long.txt"
long() { # label, environment assignment, fitlm run arguments...
    local label=$1 assign=$2; shift 2
    env "$assign" "$fitlm" run -m "$out/$shape-q4_0.gguf" --device cuda -c 4096 -f "$out/long.txt" --temp 0 "$@" > "$out/out.txt" 2> "$out/err.txt"
    echo "$label: exit $?; $(grep -E 'load time|prompt eval|eval time|rror' "$out/err.txt" | sed -E 's/ +/ /g' | tr '\n' ';' | cut -c1-400) text $(md5sum < "$out/out.txt" | cut -c1-8)"
}
for kv in kivi4 kivi2; do for tiles in 1 0; do long "$kv tiles=$tiles" "FITLM_CUDA_KIVI_TILES=$tiles" --kv $kv -n 64; done; done
long "f16" "FITLM_CUDA_KIVI_TILES=0" --kv f16 -n 64
long "f16, warm-up" "FITLM_CUDA_KIVI_TILES=0" --kv f16 -n 16
long "f16, --no-warmup" "FITLM_CUDA_KIVI_TILES=0" --kv f16 -n 16 --no-warmup
