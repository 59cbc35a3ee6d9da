#!/usr/bin/env python3
"""Interleaved kiln-vs-PyTorch CPU comparison: ratios that survive a noisy machine.

A shared 2-vCPU VM drifts by ±15-30% between runs a minute apart, so two separate runs (all of kiln,
then all of PyTorch) can put either side ahead. This script alternates short runs of
`kiln bench --json` and `scripts/torch_bench.py --json` for R rounds (kiln first in odd rounds,
PyTorch first in even ones), pairs the two medians of every row within each round, and reports per
row the median over rounds of each side and of the per-round ratio torch_ms / kiln_ms, with its
min-max. The ratio is what the issues' ">= 1.0x PyTorch" targets are read from.

  .venv-torch/bin/python scripts/side_by_side.py --op layer_norm,softmax --rounds 7
  .venv-torch/bin/python scripts/side_by_side.py --op attention_fwd --rounds 5 --target-s 1.0 \\
      --json docs/results/cpu-DATE/side_by_side.jsonl

Only kiln's default variant (the one `kiln` itself uses: the `*` rows) is compared. --kiln picks the
binary (default target/release/kiln; build it with `cargo build --release` first).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_VARIANTS = "avx2,avx512,matrixmultiply,rayon-memcpy,kiln"


def rows(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or not line.startswith("{"):
                continue
            r = json.loads(line)
            if "env" in r or r.get("status", "ok") != "ok" or "median_ms" not in r:
                continue
            if r.get("variant") not in (None, "torch", "kiln") and not r.get("default"):
                continue
            out[r["id"]] = r
    return out


def run(cmd, out):
    res = subprocess.run(cmd + ["--json", "--out", out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        sys.exit(f"side_by_side: {' '.join(cmd)} failed (rc {res.returncode}):\n{res.stderr[-2000:]}")
    return rows(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--op", required=True, help="comma-separated op names (copy, layer_norm_fwd, attention_fwd_bwd, train_step_gpt, ...)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--target-s", type=float, default=0.5, help="timing budget per row per side per round")
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target", "release", "kiln"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sweep", action="store_true", help="include the attention sweep rows")
    ap.add_argument("--json", help="write one JSON line per row here")
    a = ap.parse_args()
    if a.rounds < 1:
        sys.exit("side_by_side: --rounds must be >= 1")
    if not os.path.exists(a.kiln):
        sys.exit(f"side_by_side: no kiln binary at {a.kiln} (cargo build --release)")

    ops = [o.strip() for o in a.op.split(",") if o.strip()]
    sweep = [] if a.sweep else ["--no-sweep"]
    # the SIMD variants (only the best one this CPU has is the default), plus the single-variant rows
    kiln_cmd = [a.kiln, "bench", "--device", "cpu", "--op", ",".join(ops), "--variant", DEFAULT_VARIANTS,
                "--target-s", str(a.target_s)] + sweep
    torch_cmd = [sys.executable, os.path.join(HERE, "torch_bench.py"), "--device", "cpu", "--threads", str(a.threads),
                 "--op", ",".join(ops), "--target-s", str(a.target_s)] + sweep
    per = {}  # id -> list of (kiln_ms, torch_ms)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.rounds):
            order = [("kiln", kiln_cmd), ("torch", torch_cmd)]
            if i % 2:
                order.reverse()
            got = {}
            for name, cmd in order:
                got[name] = run(cmd, os.path.join(tmp, f"{name}.jsonl"))
            for rid, k in got["kiln"].items():
                t = got["torch"].get(rid)
                if t is not None:
                    per.setdefault(rid, []).append((k["median_ms"], t["median_ms"]))
            print(f"round {i + 1}/{a.rounds}: {len(per)} paired rows", file=sys.stderr)
    if not per:
        sys.exit("side_by_side: no row was measured by both kiln and PyTorch (check --op)")

    out = open(a.json, "w") if a.json else None
    print(f"{'row':<44} {'kiln ms':>9} {'torch ms':>9} {'torch/kiln':>10}  {'min-max over rounds':>20}")
    for rid, pairs in per.items():
        ks, ts = [p[0] for p in pairs], [p[1] for p in pairs]
        ratios = [t / k for k, t in pairs]
        r = {"id": rid, "rounds": len(pairs), "kiln_ms": statistics.median(ks), "torch_ms": statistics.median(ts),
             "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
        print(f"{rid:<44} {r['kiln_ms']:>9.3f} {r['torch_ms']:>9.3f} {r['ratio']:>10.2f}  "
              f"{r['ratio_min']:>9.2f}-{r['ratio_max']:.2f}")
        if out:
            out.write(json.dumps(r) + "\n")
    if out:
        out.close()


if __name__ == "__main__":
    main()
