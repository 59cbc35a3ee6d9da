#!/usr/bin/env python3
"""Interleaved GEMM comparison: every CPU variant of `kiln bench --op matmul` (kiln = the dispatch
rule's choice, avx512, avx2, matrixmultiply) against PyTorch's torch.mm, same shapes, same run.

Each round runs `kiln bench --op matmul` and `scripts/torch_bench.py --op matmul` (kiln first in odd
rounds, PyTorch first in even ones), after waiting until the 1-minute load average is below
--max-load (other work on a 2-vCPU machine skews everything). Per row and variant it reports the
median over rounds of each side's median time and of the per-round ratio torch_ms / variant_ms,
with its min-max. The CPU (lscpu's model name and flags) is printed first.

  /work/venv-torch/bin/python scripts/gemm_side_by_side.py --rounds 5 --json out.jsonl
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VARIANTS = ["kiln", "avx512", "avx2", "matrixmultiply"]


def load1():
    return os.getloadavg()[0]


def wait_quiet(max_load, max_wait_s):
    t0 = time.time()
    while load1() >= max_load and time.time() - t0 < max_wait_s:
        time.sleep(5)
    return load1()


def read_rows(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if "env" in r or r.get("op") != "matmul" or "median_ms" not in r or r.get("status", "ok") != "ok":
                continue
            out[(r["id"], r.get("variant") or "torch")] = r["median_ms"]
    return out


def run(cmd, out):
    res = subprocess.run(cmd + ["--json", "--out", out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        sys.exit(f"gemm_side_by_side: {' '.join(cmd)} failed (rc {res.returncode}):\n{res.stderr[-2000:]}")
    return read_rows(out)


def lscpu():
    txt = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    get = lambda k: next((l.split(":", 1)[1].strip() for l in txt.splitlines() if l.startswith(k + ":")), "?")
    return get("Model name"), get("Flags")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--target-s", type=float, default=0.5)
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target", "release", "kiln"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-load", type=float, default=1.3, help="wait for a 1-minute load average below this")
    ap.add_argument("--max-wait-s", type=float, default=600)
    ap.add_argument("--json", help="write one JSON line per (row, variant) here")
    a = ap.parse_args()
    model, flags = lscpu()
    print(f"# lscpu model name: {model}\n# flags: {flags}", flush=True)
    kiln_cmd = [a.kiln, "bench", "--device", "cpu", "--op", "matmul", "--variant", ",".join(VARIANTS), "--target-s", str(a.target_s), "--no-sweep"]
    torch_cmd = [sys.executable, os.path.join(HERE, "torch_bench.py"), "--device", "cpu", "--threads", str(a.threads), "--op", "matmul", "--target-s", str(a.target_s), "--no-sweep"]
    per = {}  # (id, variant) -> [(ms, torch_ms)]
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.rounds):
            res = {}
            order = [("kiln", kiln_cmd), ("torch", torch_cmd)]
            if i % 2:
                order.reverse()
            for name, cmd in order:
                start = round(wait_quiet(a.max_load, a.max_wait_s), 2)
                res[name] = run(cmd, os.path.join(tmp, f"{name}{i}.jsonl"))
                loads.append(f"{name} {start}-{load1():.2f}")
            torch = {rid: ms for (rid, v), ms in res["torch"].items()}
            for (rid, v), ms in res["kiln"].items():
                if rid in torch:
                    per.setdefault((rid, v), []).append((ms, torch[rid]))
            print(f"# round {i + 1}/{a.rounds} done, load at the start and end of its runs: {loads[-2:]}", file=sys.stderr, flush=True)
    print(f"# {a.rounds} rounds, 1-minute load at each run's start and end: {loads}")
    print(f"{'row':44s} {'variant':15s} {'kiln ms':>9s} {'torch ms':>9s} {'torch/kiln':>10s}  min-max")
    out = open(a.json, "w") if a.json else None
    for (rid, v) in sorted(per, key=lambda x: (x[0], VARIANTS.index(x[1]) if x[1] in VARIANTS else 9)):
        pairs = per[(rid, v)]
        ratios = [t / k for k, t in pairs]
        km, tm = statistics.median(k for k, _ in pairs), statistics.median(t for _, t in pairs)
        r = statistics.median(ratios)
        print(f"{rid:44s} {v:15s} {km:9.3f} {tm:9.3f} {r:10.2f}  {min(ratios):.2f}-{max(ratios):.2f}")
        if out:
            out.write(json.dumps({"id": rid, "variant": v, "kiln_ms": km, "torch_ms": tm, "ratio": r, "ratio_min": min(ratios),
                                  "ratio_max": max(ratios), "rounds": len(pairs), "cpu": model, "loads": loads}) + "\n")


if __name__ == "__main__":
    main()
