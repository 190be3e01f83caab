#!/usr/bin/env python3
"""Aggregate decode speed of `fitlm serve` at N concurrent streams (stdlib only).

usage: bench/serve_concurrency.py URL [max_tokens] [streams...]   e.g. http://127.0.0.1:8080 128 1 8
Each stream asks for max_tokens at temperature 0 with a different prompt; the figure is all completion
tokens over the wall time of the whole batch (prefill included), plus the server's own decode counter.
"""
import json, sys, threading, time, urllib.request

url = sys.argv[1].rstrip("/")
max_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 128
counts = [int(a) for a in sys.argv[3:]] or [1, 8]

def metric(name):
    for line in urllib.request.urlopen(url + "/metrics").read().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])

def stream(i, out):
    body = json.dumps({"messages": [{"role": "user", "content": f"def function_{i}(values):\n    \"\"\"Step {i}.\"\"\"\n"}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
                       # a stop string nothing matches: generation runs to max_tokens
                       "stop": ["<never-generated>"]}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        for line in r:
            line = line.decode().strip()
            if line.startswith("data: {"):
                d = json.loads(line[6:])
                if d.get("usage"):
                    out[i] = d["usage"]["completion_tokens"]

stream(0, {})  # warm-up
for n in counts:
    out = {}
    rows0, secs0 = metric("fitlm_decode_tokens_total"), metric("fitlm_decode_seconds_total")
    t0 = time.time()
    threads = [threading.Thread(target=stream, args=(i, out)) for i in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.time() - t0
    rows, secs = metric("fitlm_decode_tokens_total") - rows0, metric("fitlm_decode_seconds_total") - secs0
    print(f"{n:3d} streams: {sum(out.values()):5d} tokens in {wall:6.2f} s = {sum(out.values()) / wall:7.1f} tok/s aggregate "
          f"(server decode passes: {rows / secs:7.1f} tok/s)")
