#!/usr/bin/env bash
# Issue 17's acceptance 1 (docs/variable-memory.md): `fitlm run` decoding 400 tokens while its memory budget moves,
# RSS sampled from outside every 50 ms by bench/pressure.py. Four scenarios:
#   stacked-cgroup  a BitStack pycoder-29m, --memory cgroup:FILE, the file rewritten 512 MiB -> 90 MiB -> 512 MiB
#                   at tokens 100 and 250 of 400
#   stacked-auto    the same model, --memory auto, a balloon process takes the machine's memory at token 400 and gives it
#                   back at 1200 of 2000 (it decodes ~300 tokens/s, and a balloon of ~22 GiB takes seconds to fill)
#   0.8b-cgroup     fitlm synth --shape llama-0.8b --type q4_0, --memory cgroup:FILE: 1 GiB -> 400 MiB -> 1 GiB
#   0.8b-auto       the same with a balloon: a cut of about 200 MiB
#   0.8b-auto-deep  a cut of about 400 MiB, below the smallest plan (~210 MiB at this context) on this machine
# The machine's own cgroups are never created or changed: the cgroup mode reads a file this script rewrites.
# In the auto scenarios a first balloon takes all but 1-2 GiB more than auto's reserve before fitlm starts (filling
# ~20 GiB takes ~10 s here, and while a balloon fills it also takes what fitlm gives back), then a second one, at the
# given token, takes what leaves the machine the reserve less a cut (the process's budget falls by about the cut).
# Usage: bench/pressure.sh [SCENARIO...]   (env: FITLM=..., OUT=bench/out/pressure, SYNTH=/tmp/synth, WORK=/tmp/fitlm-pressure)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/pressure}
WORK=${WORK:-/tmp/fitlm-pressure}
SYNTH=${SYNTH:-/tmp/synth}
SHARED=${SHARED:-../shared}
TOKENS=${TOKENS:-400}
mkdir -p "$OUT" "$WORK"
if [ -z "${FITLM:-}" ]; then
    FITLM_ARTIFACTS=${FITLM_ARTIFACTS:-$WORK/artifacts} dotnet build -c Release src/FitLM.Cli -v q -nologo >/dev/null
    FITLM="dotnet ${FITLM_ARTIFACTS:-$WORK/artifacts}/bin/FitLM.Cli/release/fitlm.dll"
fi
cc -O2 -o "$WORK/balloon" bench/balloon.c

STACK=$WORK/pycoder-29m.bitstack.gguf
if [ ! -f "$STACK" ]; then
    # A quick compression (fewer calibration and scoring windows than bench/bitstack.sh): the ladder's quality is not measured here.
    tail -c 153552 "$SHARED/data/pycode-dev.txt" > "$WORK/calib.txt"
    $FITLM compress -m "$SHARED/models/pycoder-29m" --calib "$WORK/calib.txt" -o "$STACK" --calib-windows 16 --score-windows 2 --score-levels 3
fi
L08=$SYNTH/llama-0.8b-q4_0.gguf
[ -f "$L08" ] || $FITLM synth --shape llama-0.8b --type q4_0 --vocab "$SHARED/tokenizer-tests/ggml-vocab-llama-spm.gguf" -o "$L08"

# What `--memory auto` leaves the rest of the machine (BudgetSpec.AutoReserve): printed by fitlm itself.
reserve=$($FITLM run -m "$STACK" --memory auto --verbose -n 1 -p x 2>&1 >/dev/null | sed -n 's/.*(\([0-9]*\) bytes) left to the machine.*/\1/p' | head -1)
reserve=${reserve:-0}
echo "auto reserve: $reserve bytes"

run() { python3 bench/pressure.py --fitlm "$FITLM" --out "$OUT" --tokens "${TOKENS}" --balloon "$WORK/balloon" --auto-reserve "$reserve" "$@"; }
mib() { echo $(( $1 * 1024 * 1024 )); }
# Leave the machine the reserve less SHRINK_MIB: auto's budget falls by about that much below what the process holds.
leave() { echo $(( reserve - $(mib "$1") )); }

scenarios=${*:-stacked-cgroup stacked-auto 0.8b-cgroup 0.8b-auto 0.8b-auto-deep}
status=0
for s in $scenarios; do
    case $s in
    stacked-cgroup)
        run --name "$s" --model "$STACK" --memory "cgroup:$WORK/limit" --cgroup-file "$WORK/limit" --start-budget 512MiB \
            --at 100:budget:90MiB --at 250:budget:512MiB -- --kv f16 || status=1 ;;
    stacked-auto)
        TOKENS=2000 run --name "$s" --model "$STACK" --memory auto --pre-leave "$(leave -1024)" --balloon-leave "$(leave 60)" --at 400:balloon:0 --at 1200:release -- --kv f16 -c 2048 || status=1 ;;
    0.8b-cgroup)
        run --name "$s" --model "$L08" --memory "cgroup:$WORK/limit" --cgroup-file "$WORK/limit" --start-budget 1GiB \
            --at 100:budget:400MiB --at 250:budget:1GiB -- --kv f16 -c 1024 || status=1 ;;
    0.8b-auto)
        run --name "$s" --model "$L08" --memory auto --pre-leave "$(leave -2048)" --balloon-leave "$(leave 200)" --at 100:balloon:0 --at 250:release -- --kv f16 -c 1024 || status=1 ;;
    0.8b-auto-deep)
        run --name "$s" --model "$L08" --memory auto --pre-leave "$(leave -2048)" --balloon-leave "$(leave 400)" --at 100:balloon:0 --at 250:release -- --kv f16 -c 1024 || status=1 ;;
    *) echo "unknown scenario $s"; status=1 ;;
    esac
done
exit $status
