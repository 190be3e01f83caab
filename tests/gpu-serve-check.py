#!/usr/bin/env python3
"""Part of tests/gpu.sh: `fitlm serve --device cuda --parallel 4` against `fitlm run --device cuda`.

Four completions at temperature 0, first concurrently (one batched decode on the GPU), then one at a time: each must
equal the other and `fitlm run`'s text for the same prompt (a request's output does not depend on what else runs).
Also one embedding (unit length). Usage: tests/gpu-serve-check.py FITLM MODEL [DEVICE]; DEVICE defaults to cuda
(cpu runs the same check on a machine without a GPU). Exits non-zero on a difference."""
import json, subprocess, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

F, model = sys.argv[1], sys.argv[2]
device = sys.argv[3] if len(sys.argv) > 3 else "cuda"
N = 40
prompts = ["def fibonacci(n):", "import os\nimport sys\n", "class Stack:\n    def __init__(self):", "for i in range(10):"]
srv = subprocess.Popen([F, "serve", "-m", model, "--device", device, "--parallel", "4", "--port", "8093", "-c", "1024"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
line = srv.stdout.readline()
print("server:", line.strip())
if "listening" not in line:
    print(srv.stderr.read()); sys.exit(1)

def post(path, body):
    req = urllib.request.Request("http://127.0.0.1:8093" + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())

MODEL = json.loads(urllib.request.urlopen("http://127.0.0.1:8093/v1/models", timeout=30).read())["data"][0]["id"]

def complete(p):
    return post("/v1/completions", {"model": MODEL, "prompt": p, "max_tokens": N, "temperature": 0})["choices"][0]["text"]

t0 = time.time()
with ThreadPoolExecutor(4) as ex:
    texts = list(ex.map(complete, prompts))
print(f"4 concurrent completions of {N} tokens: {time.time() - t0:.2f} s")
alone = [complete(p) for p in prompts]
emb = post("/v1/embeddings", {"model": MODEL, "input": "def f(x):\n    return x"})["data"][0]["embedding"]
norm = sum(v * v for v in emb) ** 0.5
print(f"embedding: {len(emb)} values, norm {norm:.4f}")
srv.terminate(); srv.wait(timeout=30)
print("server stderr tail:", srv.stderr.read()[-400:])
fails = 0 if abs(norm - 1) < 1e-3 else 1
for p, t, a in zip(prompts, texts, alone):
    run = subprocess.run([F, "run", "-m", model, "-p", p, "-n", str(N), "--temp", "0", "-c", "1024", "--device", device], capture_output=True, text=True)
    expected = run.stdout[len(p):-1] if run.stdout.startswith(p) else None
    ok = expected == t and t == a
    fails += not ok
    print(f"{'same' if ok else 'DIFFERENT'}: {p!r}: concurrent == alone: {t == a}; == fitlm run: {expected == t}")
    if not ok:
        print("  serve:", repr(t[:120])); print("  alone:", repr(a[:120])); print("  run:  ", repr((expected or run.stdout + run.stderr)[:120]))
print("serve check:", "passed" if fails == 0 else f"{fails} of {len(prompts)} differ")
sys.exit(1 if fails else 0)
