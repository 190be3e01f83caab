#!/usr/bin/env python3
"""Issue 17's measurement: `fitlm run` decoding while its memory budget moves, sampled from outside.

One scenario = one `fitlm run --ids --verbose` decoding N tokens. While it decodes, this driver changes the memory
the process may use at given token counts, either by rewriting a file in cgroup `memory.max` format that fitlm reads
(`--memory cgroup:FILE`; the machine's own cgroups are never touched), or by starting and stopping a balloon process
that takes real memory away from the machine (`--memory auto`). Every 50 ms it reads the process's resident set
(/proc/PID/status VmRSS) and the budget in force, and it timestamps every generated token.

Reported per phase (between two changes): the budget, the peak RSS sampled, the time from the change until RSS
was at or under the new budget, tokens/s; and that the generation finished (exit 0, N tokens, no kill).
Writes OUT/NAME.json, OUT/NAME.svg (budget, RSS and tokens/s over time) and prints a markdown table.
"""
import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

MiB = 1 << 20


def read_kb(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss(pid):
    return read_kb(f"/proc/{pid}/status", "VmRSS:")


def mem_available():
    return read_kb("/proc/meminfo", "MemAvailable:")


def parse_size(s):
    s = s.strip()
    units = {"k": 10, "m": 20, "g": 30}
    if s[-3:].lower() in ("kib", "mib", "gib"):
        return int(float(s[:-3]) * (1 << units[s[-3].lower()]))
    return int(s)


class Run:
    def __init__(self, args):
        self.args = args
        self.samples = []      # (t, rss, budget)
        self.tokens = []       # t of each generated token
        self.events = []       # (t, description, budget after)
        self.adaptations = []  # fitlm's own lines
        self.budget = None
        self.balloon = None
        self.t0 = None
        self.lock = threading.Lock()

    def now(self):
        return time.monotonic() - self.t0

    def set_file_budget(self, nbytes):
        tmp = self.args.cgroup_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{nbytes}\n")
        os.replace(tmp, self.args.cgroup_file)
        with self.lock:
            self.budget = nbytes
            self.events.append((self.now(), f"budget file -> {nbytes // MiB} MiB", nbytes))

    def auto_budget(self, pid):
        # What `--memory auto` sees (BudgetSpec): available memory plus the process's anonymous and shared pages (its
        # file pages are page cache, already in MemAvailable), less the reserve it leaves the machine.
        own = read_kb(f"/proc/{pid}/status", "RssAnon:") + read_kb(f"/proc/{pid}/status", "RssShmem:")
        return mem_available() + own - self.args.auto_reserve

    def start_balloon(self, mib):
        # mib 0: what leaves the machine --balloon-leave available now. A fixed size, not "until only that much is left":
        # fitlm gives memory back while the balloon fills, and a balloon that took that too would chase it down.
        if mib <= 0:
            mib = max(64, (mem_available() - self.args.balloon_leave) // MiB)
        size = str(mib)
        with self.lock:
            self.events.append((self.now(), f"balloon takes {mib} MiB", None))
        self.balloon = subprocess.Popen([self.args.balloon, size, "3600"], stdout=subprocess.PIPE, text=True)
        line = self.balloon.stdout.readline().strip()  # "balloon: holding N MiB" once it holds all of it
        with self.lock:
            self.events.append((self.now(), f"({line})", None))

    def release_balloon(self):
        if self.balloon:
            self.balloon.send_signal(signal.SIGTERM)
            self.balloon.wait()
            with self.lock:
                self.events.append((self.now(), "balloon released", None))
            self.balloon = None

    def act(self, action):
        kind, value = action
        if kind == "budget":
            self.set_file_budget(value)
        elif kind == "balloon":
            # Waits until it holds all of it (seconds for many GiB): fitlm keeps decoding meanwhile.
            self.start_balloon(value)
        elif kind == "release":
            self.release_balloon()

    def execute(self):
        a = self.args
        pre = None
        if a.pre_leave:
            # Most of the machine's memory taken before fitlm starts (filling ~20 GiB takes seconds here), so that the
            # balloon of the measurement is small and quick: while a balloon fills, what fitlm gives back is taken too.
            pre = subprocess.Popen([a.balloon, f"leave:{a.pre_leave // MiB}", "3600"], stdout=subprocess.PIPE, text=True)
            print(f"pre-balloon: {pre.stdout.readline().strip()}", flush=True)
        try:
            return self.measure()
        finally:
            if pre:
                pre.send_signal(signal.SIGTERM)
                pre.wait()

    def measure(self):
        a = self.args
        self.t0 = time.monotonic()
        if a.cgroup_file:
            self.set_file_budget(a.start_budget)
        cmd = a.fitlm.split() + ["run", "-m", a.model, "--memory", a.memory, "--verbose", "--ids", "--temp", "0",
                                 "--ignore-eos", "-n", str(a.tokens), "-p", a.prompt, "-t", str(a.threads)] + a.extra
        self.t0 = time.monotonic()
        self.events.clear()
        if a.cgroup_file:
            self.events.append((0.0, f"budget file = {a.start_budget // MiB} MiB", a.start_budget))
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stderr_lines = []

        def read_stderr():
            for raw in p.stderr:
                line = raw.decode(errors="replace").rstrip()
                stderr_lines.append(line)
                if "budget" in line and "->" in line:
                    with self.lock:
                        self.adaptations.append((self.now(), line))

        def sample():
            while p.poll() is None:
                r = rss(p.pid)
                b = self.budget if a.cgroup_file else self.auto_budget(p.pid)
                if r > 0:
                    with self.lock:
                        self.samples.append((self.now(), r, b))
                time.sleep(0.05)

        threading.Thread(target=read_stderr, daemon=True).start()
        threading.Thread(target=sample, daemon=True).start()
        actions = sorted(a.actions, key=lambda x: x[0])
        pending = queue.Queue()
        count = 0

        def read_tokens():
            # Token ids are space-separated and flushed one by one: a completed id is followed by a space. Read on a
            # thread of its own so that an action that takes seconds (a balloon filling) never delays a timestamp.
            nonlocal count
            buf = b""
            while ch := p.stdout.read(1):
                buf += ch
                if ch == b" " and buf.strip():
                    count += 1
                    self.tokens.append(self.now())
                    buf = b""
                    while actions and actions[0][0] <= count:
                        pending.put(actions.pop(0)[1])
            if buf.strip():
                count += 1
                self.tokens.append(self.now())
            pending.put(None)

        def run_actions():
            while (action := pending.get()) is not None:
                self.act(action)

        reader = threading.Thread(target=read_tokens, daemon=True)
        actor = threading.Thread(target=run_actions, daemon=True)
        reader.start()
        actor.start()
        reader.join()
        actor.join()
        code = p.wait()
        self.release_balloon()
        time.sleep(0.1)
        return code, count, stderr_lines


def phases(run):
    """Spans between budget changes: [(start, end, label)]."""
    marks = [e for e in run.events if e[1].startswith("budget file ->") or e[1].startswith("balloon takes") or e[1] == "balloon released"]
    end = run.tokens[-1] if run.tokens else run.now()
    starts = [0.0] + [m[0] for m in marks]
    labels = ["start"] + [m[1] for m in marks]
    return [(starts[i], starts[i + 1] if i + 1 < len(starts) else end, labels[i]) for i in range(len(starts))]


def report(run, code, count, stderr_lines, name, out):
    rows = []
    for (s, e, label) in phases(run):
        samples = [x for x in run.samples if s <= x[0] < e]
        toks = [t for t in run.tokens if s <= t < e]
        peak = max((x[1] for x in samples), default=0)
        budgets = [x[2] for x in samples if x[2]]
        budget = min(budgets) if budgets else None
        # Time from the change until the first sample at or under the budget in force then.
        under = next((x[0] - s for x in samples if x[2] and x[1] <= x[2]), None)
        # The longest stretch over the budget in force (a balloon lowers it step by step as it fills): from the first
        # sample over it to the first one under it again.
        longest, since = 0.0, None
        for x in samples:
            if x[2] and x[1] > x[2]:
                since = x[0] if since is None else since
            elif since is not None:
                longest, since = max(longest, x[0] - since), None
        if since is not None:
            longest = max(longest, e - since)
        # Settled peak: the highest RSS after it first got under the budget (should stay under).
        settled = max((x[1] for x in samples if under is not None and x[0] - s >= under), default=0)
        over = [x for x in samples if x[2] and x[1] > x[2] and under is not None and x[0] - s >= under]
        rate = (len(toks) - 1) / (toks[-1] - toks[0]) if len(toks) > 1 else 0
        rows.append(dict(phase=label, start_s=round(s, 2), end_s=round(e, 2), budget_mib=budget / MiB if budget else None,
                         peak_rss_mib=peak / MiB, settled_peak_mib=settled / MiB, seconds_to_under=under, longest_over_s=longest,
                         samples_over_after=len(over), tokens=len(toks), tokens_per_s=rate))
    result = dict(name=name, exit_code=code, tokens=count, rows=rows, adaptations=run.adaptations,
                  events=run.events, samples=run.samples, token_times=run.tokens, stderr_tail=stderr_lines[-12:])
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name + ".json.tmp"), "w") as f:
        json.dump(result, f, indent=1)
    os.replace(os.path.join(out, name + ".json.tmp"), os.path.join(out, name + ".json"))
    svg(run, os.path.join(out, name + ".svg"), name)
    print(f"\n### {name}: exit {code}, {count} tokens generated" + (" (killed!)" if code < 0 else ""))
    print("| phase | budget (min, MiB) | peak RSS (MiB) | under budget after | longest over budget | peak RSS once under (MiB) | samples over after that | tokens | tok/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        under = "n/a" if r["seconds_to_under"] is None else f"{r['seconds_to_under']:.2f} s"
        b = "—" if r["budget_mib"] is None else f"{r['budget_mib']:.1f}"
        print(f"| {r['phase']} | {b} | {r['peak_rss_mib']:.1f} | {under} | {r['longest_over_s']:.2f} s | {r['settled_peak_mib']:.1f} | {r['samples_over_after']} | {r['tokens']} | {r['tokens_per_s']:.1f} |")
    for t, line in run.adaptations:
        print(f"    {line}")
    return result


def svg(run, path, title):
    W, H, L, R, T, B = 760, 360, 60, 60, 30, 40
    if not run.samples:
        return
    tmax = max(run.samples[-1][0], run.tokens[-1] if run.tokens else 0) or 1
    ymax = max(max(x[1] for x in run.samples), max((x[2] or 0) for x in run.samples)) / MiB * 1.1
    # tokens/s over a sliding 0.5 s window
    rates = []
    for i, t in enumerate(run.tokens):
        j = i
        while j > 0 and t - run.tokens[j - 1] <= 0.5:
            j -= 1
        if i > j:
            rates.append((t, (i - j) / (t - run.tokens[j])))
    rmax = max((r for _, r in rates), default=1) * 1.1

    def X(t): return L + (W - L - R) * t / tmax
    def Y(v): return H - B - (H - T - B) * v / ymax
    def Yr(v): return H - B - (H - T - B) * v / rmax

    def poly(points, color, width=1.5, dash=""):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        d = f' stroke-dasharray="{dash}"' if dash else ""
        return f'<polyline fill="none" stroke="{color}" stroke-width="{width}"{d} points="{pts}"/>'

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{L}" y="18" font-size="13">{title}: budget, RSS (MiB, left) and tokens/s (right) over time</text>',
             f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
             f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>',
             f'<line x1="{W-R}" y1="{T}" x2="{W-R}" y2="{H-B}" stroke="black"/>']
    for i in range(6):
        v = ymax * i / 5
        parts.append(f'<text x="{L-6}" y="{Y(v)+4:.1f}" text-anchor="end">{v:.0f}</text>')
        r = rmax * i / 5
        parts.append(f'<text x="{W-R+6}" y="{Yr(r)+4:.1f}">{r:.0f}</text>')
        t = tmax * i / 5
        parts.append(f'<text x="{X(t):.1f}" y="{H-B+16}" text-anchor="middle">{t:.1f} s</text>')
    budget_pts = []
    for t, _, b in run.samples:
        if b:
            if budget_pts:
                budget_pts.append((X(t), budget_pts[-1][1]))
            budget_pts.append((X(t), Y(b / MiB)))
    parts.append(poly(budget_pts, "#d62728", 2, "6,3"))
    parts.append(poly([(X(t), Y(r / MiB)) for t, r, _ in run.samples], "#1f77b4", 2))
    parts.append(poly([(X(t), Yr(r)) for t, r in rates], "#2ca02c", 1))
    for t, line in run.adaptations:
        parts.append(f'<line x1="{X(t):.1f}" y1="{T}" x2="{X(t):.1f}" y2="{H-B}" stroke="#999" stroke-dasharray="2,3"/>')
    ly = T + 8
    for color, label in (("#d62728", "budget"), ("#1f77b4", "RSS (sampled every 50 ms)"), ("#2ca02c", "tokens/s"), ("#999", "adaptation")):
        parts.append(f'<line x1="{L+10}" y1="{ly}" x2="{L+30}" y2="{ly}" stroke="{color}" stroke-width="2"/>'
                     f'<text x="{L+36}" y="{ly+4}">{label}</text>')
        ly += 14
    parts.append("</svg>")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(parts))
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fitlm", required=True, help="command that runs fitlm, e.g. 'dotnet /path/fitlm.dll'")
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", default="bench/out/pressure")
    ap.add_argument("--memory", required=True, help="auto, or cgroup:FILE")
    ap.add_argument("--cgroup-file")
    ap.add_argument("--start-budget", default="1GiB")
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", default="def quicksort(items):")
    ap.add_argument("--balloon", default="/tmp/balloon")
    ap.add_argument("--balloon-leave", default="1GiB", help="memory the balloon leaves available (size 0 = take all but this)")
    ap.add_argument("--auto-reserve", default="0", help="the reserve `--memory auto` keeps (for the sampled budget)")
    ap.add_argument("--pre-leave", default="0", help="before fitlm starts, a balloon takes all but this much of the machine's available memory")
    ap.add_argument("--at", action="append", default=[], help="TOKENS:budget:SIZE | TOKENS:balloon:MIB(0: all but --balloon-leave) | TOKENS:release")
    ap.add_argument("extra", nargs="*", help="more fitlm run flags (after --)")
    a = ap.parse_args()
    a.start_budget = parse_size(a.start_budget)
    a.balloon_leave = parse_size(a.balloon_leave)
    a.auto_reserve = parse_size(a.auto_reserve)
    a.pre_leave = parse_size(a.pre_leave)
    a.actions = []
    for spec in a.at:
        parts = spec.split(":")
        n = int(parts[0])
        if parts[1] == "budget":
            a.actions.append((n, ("budget", parse_size(parts[2]))))
        elif parts[1] == "balloon":
            a.actions.append((n, ("balloon", int(parts[2]))))
        elif parts[1] == "release":
            a.actions.append((n, ("release", 0)))
        else:
            sys.exit(f"--at {spec}: unknown action")
    run = Run(a)
    code, count, err = run.execute()
    report(run, code, count, err, a.name, a.out)
    return 0 if code == 0 and count == a.tokens else 1


if __name__ == "__main__":
    sys.exit(main())
