#!/bin/bash
# issue 4 acceptance 2: naive / dense / flash-5% on llama-7b q8_0 at --memory 4GiB: plan (prediction) then run (measured)
cd "${SYNTH:-/tmp/synth}"   # llama-7b-q8_0.gguf and its .flash.gguf (fitlm synth, fitlm prepare)
F=${FITLM:-fitlm}
run_mode() { # name, n, args...
  name=$1; n=$2; shift 2
  echo "=== $name: $*"
  $F plan "$@" --memory 4GiB -c 256 -t 2 2>&1 | grep -E "^predicted|read from storage|sequential 4.0 MiB"
  $F run "$@" --memory 4GiB -c 256 -p "def main():" -n $n --temp 0 -t 2 2>&1 | grep -E "eval time|peak RSS|fresh|window|plan:"
}
run_mode naive 4 -m llama-7b-q8_0.gguf --stream naive
run_mode dense 8 -m llama-7b-q8_0.gguf
run_mode flash5 24 -m llama-7b-q8_0.flash.gguf --ffn-fraction 0.05
