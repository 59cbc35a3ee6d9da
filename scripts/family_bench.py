#!/usr/bin/env python3
"""Every member of the family at BERT-base size against kiln's BERT, interleaved.

Runs `kiln bench --op family_step_<model_type>` (one training step: forward, backward, AdamW; see
src/lab/train_step.rs `family_specs`) one family per process, the order rotated every round, and
reports each family's median step time and its ratio to BERT's in the same round (median and range over
the rounds). A member whose ratio is above 1.10 has a slow path.

    cargo build --release
    python3 scripts/family_bench.py --rounds 3 [--steps 3] [--json docs/results/.../family_bench.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

FAMILIES = ["bert", "roberta", "albert", "distilbert", "electra", "openai-gpt", "gpt2"]


def run_one(kiln: str, family: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rows.jsonl")
        subprocess.run([kiln, "bench", "--op", f"family_step_{family}", "--train-steps", str(steps), "--json", "--out", out],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = [json.loads(line) for line in open(out) if line.startswith("{")]
    row = next(r for r in rows if r.get("op") == f"family_step_{family}")
    if row.get("status") != "ok":
        sys.exit(f"{family}: {row.get('status')}")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--kiln", default=os.path.join(root, "target", "release", "kiln"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row (after 2 warm-up steps)")
    ap.add_argument("--json", help="write every row here (JSON lines)")
    a = ap.parse_args()
    ms: dict[str, list[float]] = {f: [] for f in FAMILIES}
    ratios: dict[str, list[float]] = {f: [] for f in FAMILIES}
    rows = []
    for r in range(a.rounds):
        order = FAMILIES[r % len(FAMILIES):] + FAMILIES[: r % len(FAMILIES)]
        got = {}
        for f in order:
            row = run_one(a.kiln, f, a.steps)
            row["round"] = r
            rows.append(row)
            got[f] = row["median_ms"]
        for f in FAMILIES:
            ms[f].append(got[f])
            ratios[f].append(got[f] / got["bert"])
        print(f"round {r + 1}: " + "  ".join(f"{f} {got[f]:.0f} ms ({got[f] / got['bert']:.2f})" for f in FAMILIES), flush=True)
    print(f"\n| family | params | step (median ms) | ÷ BERT, median (min–max) |\n|---|---|---|---|")
    params = {r["op"][len("family_step_"):]: r.get("params") for r in rows}
    for f in FAMILIES:
        q = ratios[f]
        print(f"| {f} | {params[f] / 1e6:.1f} M | {statistics.median(ms[f]):.0f} | **{statistics.median(q):.2f}** ({min(q):.2f}–{max(q):.2f}) |")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
