#!/usr/bin/env python3
"""Compares the tensors two safetensors files share (f32/f64/i64 only; no third-party packages):
prints one line per tensor with the relative error max|a - b| / max(max|b|, 1e-4) and exits 1
when any exceeds the tolerance. Usage: compare_safetensors.py OURS THEIRS [TOL] [KEY...]"""
import json, struct, sys
from array import array

def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        code = {"F32": "f", "F64": "d", "I64": "q"}.get(v["dtype"])
        if code is None:
            continue
        a, b = v["data_offsets"]
        arr = array(code)
        arr.frombytes(data[a:b])
        out[k] = [float(x) for x in arr]
    return out

ours, theirs = load(sys.argv[1]), load(sys.argv[2])
tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
keys = sys.argv[4:] or sorted(set(ours) & set(theirs))
bad = 0
for k in keys:
    if k not in ours or k not in theirs:
        print(f"{k}: missing ({'ours' if k not in ours else 'theirs'})")
        bad += 1
        continue
    a, b = ours[k], theirs[k]
    if len(a) != len(b):
        print(f"{k}: {len(a)} vs {len(b)} elements")
        bad += 1
        continue
    scale = max([abs(x) for x in b] + [1e-4])
    err = max([abs(x - y) if x == x else float("inf") for x, y in zip(a, b)] + [0.0]) / scale
    ok = err <= tol
    bad += not ok
    print(f"{k}: rel err {err:.3e} {'ok' if ok else 'FAIL'} (tol {tol:g})")
print("compared", len(keys), "tensors,", bad, "failed")
sys.exit(1 if bad or not keys else 0)
