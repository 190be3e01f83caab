#!/usr/bin/env python3
"""Summarizes bench/cpu-speed.sh: per file and test, the median tokens/s of FitLM and llama.cpp over the
interleaved rounds, their ratio, and decode's weight read rate against the machine's read bandwidth.
Usage: cpu-speed.py OUT_DIR FILE..."""
import glob
import json
import statistics
import sys

out, files = sys.argv[1], sys.argv[2:]


def load(pattern):
    rows = []
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            rows.extend(json.load(f))
    return rows


print("| file | threads | test | FitLM tok/s (rounds) | llama.cpp tok/s (rounds) | FitLM / llama.cpp |")
print("| --- | ---: | --- | --- | --- | ---: |")
bandwidth = []
threads = sorted({int(p.split(".fitlm.t")[1].split(".")[0]) for p in glob.glob(f"{out}/*.fitlm.t*.json")})
for name, t in [(n, t) for n in files for t in threads]:
    fit = load(f"{out}/{name}.fitlm.t{t}.*.json")
    ref = load(f"{out}/{name}.llama.t{t}.*.json")
    tests = sorted({r["test"] for r in fit} | {f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}" for r in ref},
                   key=lambda t: (t[:2] != "tg", int(t[2:])))
    for test in tests:
        a = [r["avg_ts"] for r in fit if r["test"] == test]
        b = [r["avg_ts"] for r in ref
             if (f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}") == test]
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        fa = ", ".join(f"{x:.1f}" for x in a)
        fb = ", ".join(f"{x:.1f}" for x in b)
        print(f"| {name} | {t} | {test} | **{ma:.2f}** ({fa}) | **{mb:.2f}** ({fb}) | **{ma / mb:.2f}×** |")
        if test.startswith("tg"):
            per_token = next(r["weight_bytes_per_token"] for r in fit if r["test"] == test)
            bw = [r["memory_bandwidth_bytes_per_s"] for r in fit if r.get("memory_bandwidth_bytes_per_s")]
            bandwidth.append((name, t, per_token, ma, mb, bw[0] if bw else None))

print()
print("| file | threads | weight bytes / token | FitLM GB/s | llama.cpp GB/s | machine read GB/s (same run, same threads) | FitLM % of it |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, t, per_token, ma, mb, bw in bandwidth:
    pct = f"{100 * per_token * ma / bw:.0f}%" if bw else "–"
    bws = f"{bw / 1e9:.1f}" if bw else "–"
    print(f"| {name} | {t} | {per_token / 2**20:.1f} MiB | {per_token * ma / 1e9:.2f} | {per_token * mb / 1e9:.2f} | {bws} | {pct} |")
