#!/usr/bin/env bash
# Reproduces docs/memory.md's "Native AOT" table: the JIT publish of `fitlm` beside the Native AOT one, on the demo
# model: peak RSS from outside (/usr/bin/time, the kernel's VmHWM), whether `run` prints the same text, the runtime
# footprint each really has (peak minus what `plan --json` counts for everything else), the smallest --memory at
# which `run` and `bench` succeed and stay under it, and pp/tg speed interleaved (jit, aot, jit, aot).
#
#   bench/aot-memory.sh                     # both publishes (~5 min on 2 cores for the AOT one), then measures
#   SKIP_PUBLISH=1 bench/aot-memory.sh      # measure the binaries already in $WORK/jit and $WORK/aot
#   ISA=native bench/aot-memory.sh          # the AOT build for this CPU only (-p:IlcInstructionSet=native)
#   BIG=/tmp/synth/llama-0.8b-q8_0.gguf bench/aot-memory.sh   # also bench a larger model (-p 64 -n 32 -r 2)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/fitlm-aot}
MODEL=${MODEL:-models/pycoder-29m-q4_k_m.gguf}
ART=${FITLM_ARTIFACTS:-$WORK/artifacts}
mkdir -p "$WORK"

if [ -z "${SKIP_PUBLISH:-}" ]; then
    FITLM_ARTIFACTS=$ART dotnet publish src/FitLM.Cli -c Release -o "$WORK/jit" -v q -nologo >/dev/null
    aot_args=(-r linux-x64 -p:PublishAot=true)
    # The AOT linker is driven by `clang`; a machine with only a versioned one (clang-14) names it.
    if ! command -v clang >/dev/null; then
        cc=$(compgen -c clang- | grep -E '^clang-[0-9]+$' | sort -V | tail -1 || true)
        [ -n "$cc" ] && aot_args+=("-p:CppCompilerAndLinker=$cc")
    fi
    [ -n "${ISA:-}" ] && aot_args+=("-p:IlcInstructionSet=$ISA")
    FITLM_ARTIFACTS=$ART dotnet publish src/FitLM.Cli -c Release "${aot_args[@]}" -o "$WORK/aot" -v q -nologo >/dev/null
fi

peak() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; }   # KiB
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# The runtime footprint a command really had: its peak minus everything else `plan --json` counts at that budget.
others() { "$1" plan -m "$MODEL" --memory $2 --json | awk -F'[:,]' '/"total_bytes"/ { t = $2 } /"runtime_bytes"/ { r = $2 } END { print t - r }'; }

for b in jit aot; do
    f=$WORK/$b/fitlm
    "$f" run -m "$MODEL" -p "def fibonacci(n):" -n 32 --temp 0 2>/dev/null > "$WORK/$b.txt"
    echo "$b: run peak $(mib "$(peak "$f" run -m "$MODEL" -p "def fibonacci(n):" -n 32 --temp 0)") MiB," \
        "--help $(mib "$(peak "$f" --help)") MiB, binary $(du -shL "$WORK/$b" | cut -f1)"
    # At context 256, as at the smallest budgets: the KV cache the plan counts is small, so its untouched pages barely skew this.
    o=$(others "$f" "100MiB -c 256")
    for cmd in "run -p hi -n 8" "bench -p 8 -n 8 -r 1 --no-bandwidth" "bench -p 128 -n 64 -r 1 --no-bandwidth"; do
        p=$(peak "$f" $cmd -m "$MODEL" -c 256 --memory 100MiB)
        echo "  $cmd -c 256 --memory 100MiB: peak $(mib "$p") MiB, runtime really $(mib $(( p - o / 1024 ))) MiB"
    done
    # The smallest budget, in whole MiB, at which run and bench both succeed and peak under it.
    for m in $(seq 40 100); do
        ok=1
        for cmd in "run -p hi -n 8" "bench -p 8 -n 8 -r 1 --no-bandwidth"; do
            read -r rc p < <(/usr/bin/time -f '%x %M' "$f" $cmd -m "$MODEL" --memory ${m}MiB 2>&1 >/dev/null | tail -1)
            [ "$rc" = 0 ] && [ "$p" -le $(( m * 1024 )) ] || { ok=0; break; }
        done
        if [ $ok = 1 ]; then echo "  smallest --memory: ${m}MiB"; break; fi
    done
done
cmp -s "$WORK/jit.txt" "$WORK/aot.txt" && echo "run text: identical" || echo "run text: DIFFERS"

speed() { "$1" bench -m "$2" "${@:3}" --no-bandwidth 2>/dev/null | awk -F'|' '/ (pp|tg)[0-9]+ / { gsub(/ /, "", $7); gsub(/ /, "", $8); printf "%s %s  ", $7, $8 }'; }
for round in 1 2; do
    for b in jit aot; do echo "$b demo:  $(speed "$WORK/$b/fitlm" "$MODEL" -p 128 -n 64 -r 3)"; done
done
if [ -n "${BIG:-}" ]; then
    for round in 1 2; do
        for b in jit aot; do echo "$b $(basename "$BIG"):  $(speed "$WORK/$b/fitlm" "$BIG" -p 64 -n 32 -r 2)"; done
    done
fi
