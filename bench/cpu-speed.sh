#!/usr/bin/env bash
# Issue 14's yardstick: FitLM against llama.cpp's llama-bench on the same files, interleaved — each round runs
# llama-bench once and then fitlm bench once on every file, so both see the same state of this noisy VM — and a
# table of medians and ratios (bench/cpu-speed.py): decode (tg64), prefill (pp128, pp512), and the weight bytes
# decode reads per second against the machine's read bandwidth measured by `fitlm bench` in the same run.
# Usage: bench/cpu-speed.sh   (env: FITLM=path/to/fitlm, LLAMA_BENCH=../shared/peers/llama.cpp/llama-bench,
#        DIR=/tmp/synth, OUT=bench/out/cpu-speed, VOCAB=../shared/tokenizer-tests/ggml-vocab-llama-spm.gguf,
#        FILES="llama-0.8b-q8_0 llama-0.8b-q4_0 llama-0.8b-q4_k_m llama-0.8b-f16 llama-7b-q4_0", ROUNDS=3,
#        THREADS="2" (a list: "1 2 4" measures each count), PROMPTS="128 512", GEN=64, PIN="taskset -c 0,1" to pin to two cores on a larger machine,
#        FITLM_ARGS="" extra flags for fitlm bench)
# Missing files are synthesized (`fitlm synth`, random weights of the named shape and type): the 7B one takes a few
# minutes and 3.6 GiB of disk. The files are read through the page cache, as llama-bench reads them (mmap).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${DIR:-/tmp/synth}
OUT=${OUT:-bench/out/cpu-speed}
VOCAB=${VOCAB:-../shared/tokenizer-tests/ggml-vocab-llama-spm.gguf}
FILES=${FILES:-llama-0.8b-q8_0 llama-0.8b-q4_0 llama-0.8b-q4_k_m llama-0.8b-f16 llama-7b-q4_0}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
PROMPTS=${PROMPTS:-128 512}
GEN=${GEN:-64}
PIN=${PIN:-}
LLAMA_BENCH=${LLAMA_BENCH:-../shared/peers/llama.cpp/llama-bench}
if [ -z "${FITLM:-}" ]; then
    FITLM_ARTIFACTS=${FITLM_ARTIFACTS:-/tmp/art-bench} dotnet build -c Release src/FitLM.Cli -v q -nologo >/dev/null
    FITLM="dotnet ${FITLM_ARTIFACTS:-/tmp/art-bench}/bin/FitLM.Cli/release/fitlm.dll"
fi
mkdir -p "$DIR" "$OUT"
rm -f "$OUT"/*.json
for f in $FILES; do
    path=$DIR/$f.gguf
    if [ ! -f "$path" ]; then
        shape=${f%-*}; type=${f##*-}
        case $f in *-q4_k_m) shape=${f%-q4_k_m}; type=q4_k_m ;; esac
        $FITLM synth -o "$path" --shape "$shape" --type "$type" --vocab "$VOCAB"
    fi
done
{ lscpu | grep -E 'Model name|^CPU\(s\)'; lscpu | grep -o -E 'avx512[a-z_0-9]*|avx_vnni|amx[a-z_0-9]*|f16c' | sort -u | tr '\n' ' '; echo; } > "$OUT/machine.txt" || true
cat "$OUT/machine.txt"
plist=$(echo $PROMPTS | tr ' ' ',')
for r in $(seq 1 "$ROUNDS"); do
    for f in $FILES; do
        path=$DIR/$f.gguf
        cat "$path" > /dev/null   # in the page cache for both
        for t in $THREADS; do
            echo "round $r: $f, $t thread(s)" >&2
            $PIN "$LLAMA_BENCH" -m "$path" -p "$plist" -n "$GEN" -t "$t" -r 1 -o json > "$OUT/$f.llama.t$t.$r.json" 2>/dev/null
            bw=--no-bandwidth; [ "$r" = 1 ] && bw=""
            first=1
            for p in $PROMPTS; do
                n=0; [ "$first" = 1 ] && n=$GEN
                # shellcheck disable=SC2086
                $PIN $FITLM bench -m "$path" -p "$p" -n "$n" -t "$t" -r 1 --json $bw ${FITLM_ARGS:-} > "$OUT/$f.fitlm.t$t.$r.p$p.json"
                bw=--no-bandwidth; first=0
            done
        done
    done
done
python3 bench/cpu-speed.py "$OUT" $FILES | tee "$OUT/summary.md"
