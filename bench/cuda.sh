#!/usr/bin/env bash
# Issue 16's GPU measurements (docs/cuda.md), run on a GPU machine with a published fitlm (tests/gpu.sh --publish):
#   1. perplexity on the GPU against the CPU's for each GGUF given (same file, same text, same chunks);
#   2. decode (tg) and prefill (pp512) of llama-7b shapes, q4_0 and q8_0 (fitlm synth), fully resident on the GPU:
#      tokens/s, the fraction of the card's copy bandwidth decode reaches (fitlm bench prints it), prefill TFLOP/s.
#   3. llama-7b q4_0 with --gpu-memory 2GiB: layers streamed from pinned host memory, and the naive loop.
# Usage: FITLM=path DATA=text VOCAB=vocab.gguf [OUT=dir] [CHUNKS=40] bench/cuda.sh MODEL.gguf...
# Numbers only; nothing here passes or fails (tests/gpu.sh is the test run).
set -uo pipefail
fitlm=${FITLM:?FITLM: the published fitlm}
data=${DATA:?DATA: a text file for perplexity}
vocab=${VOCAB:?VOCAB: the tokenizer GGUF fitlm synth gives its models}
out=${OUT:-/tmp/fitlm-cuda-bench}
chunks=${CHUNKS:-40}
mkdir -p "$out"

echo "== perplexity, GPU against CPU (-c 512, first $chunks chunks)"
printf '%-28s %12s %12s %10s\n' file cpu cuda "diff %"
for m in "$@"; do
    name=$(basename "$m" .gguf)
    for d in cpu cuda; do
        "$fitlm" perplexity -m "$m" -f "$data" -c 512 --chunks "$chunks" --device "$d" >"$out/ppl-$name-$d.log" 2>&1
    done
    cpu=$(grep -o 'PPL = [0-9.]*' "$out/ppl-$name-cpu.log" | tail -1 | cut -d' ' -f3)
    gpu=$(grep -o 'PPL = [0-9.]*' "$out/ppl-$name-cuda.log" | tail -1 | cut -d' ' -f3)
    if [[ -n "$cpu" && -n "$gpu" ]]; then
        printf '%-28s %12s %12s %10s\n' "$name" "$cpu" "$gpu" "$(awk -v a="$cpu" -v b="$gpu" 'BEGIN { printf "%.4f", 100 * (b - a) / a }')"
    else
        echo "$name: no perplexity (see $out/ppl-$name-*.log)"; tail -3 "$out/ppl-$name-cuda.log"
    fi
done

for t in q4_0 q8_0; do
    f="$out/llama-7b-$t.gguf"
    [[ -f "$f" ]] || "$fitlm" synth --shape llama-7b --type "$t" --vocab "$vocab" -o "$f" -t "$(nproc)" || continue
    echo "== llama-7b $t on the GPU: pp512, tg128"
    "$fitlm" bench -m "$f" --device cuda -p 512 -n 128 -r 3 2>&1 | tee "$out/bench-7b-$t.log"
    # Prefill arithmetic: 2 FLOP per weight per token (matrix products; attention's share at 512 tokens is small).
    awk -v params=6738415616 '/pp512/ { split($0, c, "|"); split(c[8], v, " "); printf "pp512: %.1f TFLOP/s of matrix products (2 x %.2fB weights x %s tok/s)\n", 2 * params * v[1] / 1e12, params / 1e9, v[1] }' "$out/bench-7b-$t.log"
done

# 3. Bigger than the budget: llama-7b q4_0 in 2 GiB of GPU memory, the other layers streamed from pinned host memory
#    (fitlm bench prints the host-to-device bound), against the naive loop that reads and uploads every streamed layer
#    from the file right before it runs (--stream naive).
f="$out/llama-7b-q4_0.gguf"
if [[ -f "$f" ]]; then
    echo "== llama-7b q4_0, --gpu-memory 2GiB: streamed (prefetch) and naive"
    "$fitlm" bench -m "$f" --device cuda --gpu-memory 2GiB -p 0 -n 32 -r 2 2>&1 | tee "$out/bench-7b-stream.log"
    "$fitlm" bench -m "$f" --device cuda --gpu-memory 2GiB --stream naive -p 0 -n 4 -r 1 2>&1 | tee "$out/bench-7b-naive.log"
fi
