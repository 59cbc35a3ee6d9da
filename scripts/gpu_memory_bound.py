#!/usr/bin/env python3
"""Checks and times kiln's memory-bound CUDA kernels (GELU, LayerNorm, softmax; forward and backward)
on a GPU beside PyTorch eager, against the copy bandwidth measured in the same run.

Like gpu_attention.py (whose NVRTC/driver-API loader it uses) it needs only PyTorch with CUDA:
kernels/*.cu are compiled with NVRTC and launched on PyTorch tensors. Each kernel is first checked
against PyTorch (outputs poisoned with NaN before the launch), then timed (median of CUDA events).
Bytes = every input read once + every output written once (+ saved statistics); GB/s and % of the
copy ceiling (bytes read + written by `y.copy_(x)` on the same buffer size).

  python scripts/gpu_memory_bound.py --out DIR [--rows 131072 --cols 1024]  # 268 MB per bf16 tensor
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_attention import I64, SUFFIX, Module, rel_err, time_ms  # noqa: E402

SM_COUNT = None


def buf(like, poison):
    """An output buffer shaped like `like`: NaN-filled for a check, uninitialised for timing."""
    return torch.full_like(like, float("nan")) if poison else torch.empty_like(like)


def grid1d(n, per_thread):
    return (min(math.ceil(n / (256 * per_thread)), SM_COUNT * 32), 1, 1)


def run(out_dir, rows, cols, dtypes):
    global SM_COUNT
    SM_COUNT = torch.cuda.get_device_properties(0).multi_processor_count
    mods = {m: Module(m) for m in ("gelu", "softmax", "layer_norm")}
    fails = 0
    f = open(os.path.join(out_dir, "memory_bound.jsonl"), "w")

    def emit(row):
        f.write(json.dumps(row) + "\n")
        print(f"{row['op']:16s} {row['variant']:6s} {row['dtype']:5s} {row['median_ms']:8.3f} ms {row['gb_per_s']:8.1f} GB/s "
              f"{row.get('pct_of_copy', 0):5.1f}% of copy  err {row.get('max_rel_err', 0):.1e}", flush=True)

    for dt in dtypes:
        s = SUFFIX[dt]
        n = rows * cols
        esz = torch.tensor([], dtype=dt).element_size()
        x = torch.randn(rows, cols, device="cuda", dtype=dt)
        g = torch.randn(rows, cols, device="cuda", dtype=dt)
        w = torch.randn(cols, device="cuda", dtype=dt)
        b = torch.randn(cols, device="cuda", dtype=dt)
        y = torch.empty_like(x)
        med, lo, hi = time_ms(lambda: y.copy_(x))
        copy_gbs = 2 * n * esz / med / 1e6
        emit({"op": "copy", "variant": "torch", "device": "cuda", "dtype": s, "shape": [rows, cols], "median_ms": med,
              "min_ms": lo, "max_ms": hi, "gb_per_s": copy_gbs, "pct_of_copy": 100.0})

        def measure(op, kiln_fn, torch_fn, check, nbytes, kiln_variant="kiln"):
            nonlocal fails
            got, want = kiln_fn(), torch_fn()
            torch.cuda.synchronize()
            errs = [rel_err(a, b_) for a, b_ in zip(check(got), check(want))]
            err = max(errs)
            tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dt]
            ok = err <= tol
            fails += not ok
            for var, fn in ((kiln_variant, kiln_fn), ("torch", torch_fn)):
                if var != "torch" and not ok:
                    emit({"op": op, "variant": var, "device": "cuda", "dtype": s, "shape": [rows, cols], "median_ms": float("nan"),
                          "gb_per_s": 0.0, "error": f"WRONG: max rel err {err:.2e} > {tol}"})
                    continue
                # kiln's outputs are poisoned with NaN for the check only: the timed calls get
                # uninitialised buffers from the caching allocator, as PyTorch's ops do
                med, lo, hi = time_ms(fn if var == "torch" else lambda: fn(poison=False))
                gbs = nbytes / med / 1e6
                emit({"op": op, "variant": var, "device": "cuda", "dtype": s, "shape": [rows, cols], "median_ms": med, "min_ms": lo,
                      "max_ms": hi, "gb_per_s": gbs, "pct_of_copy": 100 * gbs / copy_gbs, "max_rel_err": err if var != "torch" else 0.0})

        for tanh in (0, 1):
            name = "gelu_tanh" if tanh else "gelu"
            approx = "tanh" if tanh else "none"

            def k_fwd(poison=True, tanh=tanh):
                o = buf(x, poison)
                mods["gelu"].launch(f"gelu_fwd_{s}", grid1d(n, 16 // esz), (256, 1, 1), 0, o, x, I64(n), tanh)
                return o

            def k_bwd(poison=True, tanh=tanh):
                o = buf(x, poison)
                mods["gelu"].launch(f"gelu_bwd_{s}", grid1d(n, 16 // esz), (256, 1, 1), 0, o, x, g, I64(n), tanh)
                return o
            measure(f"{name}_fwd", k_fwd, lambda approx=approx: F.gelu(x, approximate=approx), lambda t: [t], 2 * n * esz)
            measure(f"{name}_bwd", k_bwd, lambda approx=approx: torch.ops.aten.gelu_backward(g, x, approximate=approx), lambda t: [t], 3 * n * esz)

        yt = torch.softmax(x.float(), -1).to(dt)

        def sm_fwd(poison=True):
            o = buf(x, poison)
            mods["softmax"].launch(f"softmax_fwd_{s}", (rows, 1, 1), (256, 1, 1), 0, o, x, rows, cols)
            return o

        def sm_bwd(poison=True):
            o = buf(x, poison)
            mods["softmax"].launch(f"softmax_bwd_{s}", (rows, 1, 1), (256, 1, 1), 0, o, yt, g, rows, cols)
            return o
        def sm_fwd_w(poison=True):
            o = buf(x, poison)
            mods["softmax"].launch(f"softmax_fwd_warp{row_e}_{s}", (math.ceil(rows / 8), 1, 1), (256, 1, 1), 0, o, x, rows, cols)
            return o

        def sm_bwd_w(poison=True):
            o = buf(x, poison)
            mods["softmax"].launch(f"softmax_bwd_warp{row_e}_{s}", (math.ceil(rows / 8), 1, 1), (256, 1, 1), 0, o, yt, g, rows, cols)
            return o
        # the warp-per-row kernels as kiln picks them: the fewest elements per lane E that hold a row
        row_e = next((e for e in (8, 16, 24, 32, 48, 64) if 32 * e >= cols), None)
        warp_ok = cols % (16 // esz) == 0 and row_e is not None
        measure("softmax_fwd", sm_fwd, lambda: torch.softmax(x, -1), lambda t: [t], 2 * n * esz)
        measure("softmax_bwd", sm_bwd, lambda: torch.ops.aten._softmax_backward_data(g, yt, -1, dt), lambda t: [t], 3 * n * esz)
        if warp_ok:
            measure("softmax_fwd", sm_fwd_w, lambda: torch.softmax(x, -1), lambda t: [t], 2 * n * esz, "warp")
            measure("softmax_bwd", sm_bwd_w, lambda: torch.ops.aten._softmax_backward_data(g, yt, -1, dt), lambda t: [t], 3 * n * esz, "warp")

        eps = 1e-5
        _, mean_t, rstd_t = torch.ops.aten.native_layer_norm(x, [cols], w, b, eps)
        mean_f, rstd_f = mean_t.reshape(rows).float().contiguous(), rstd_t.reshape(rows).float().contiguous()
        stats = 2 * rows * 4

        def ln_fwd(poison=True):
            o = buf(x, poison)
            mean = buf(mean_f, poison)
            rstd = buf(mean_f, poison)
            mods["layer_norm"].launch(f"layer_norm_fwd_{s}", (rows, 1, 1), (256, 1, 1), 0, o, mean, rstd, x, w, b, rows, cols, eps)
            return o, mean, rstd
        def ln_fwd_w(poison=True):
            o = buf(x, poison)
            mean = buf(mean_f, poison)
            rstd = buf(mean_f, poison)
            mods["layer_norm"].launch(f"layer_norm_fwd_warp{row_e}_{s}", (math.ceil(rows / 8), 1, 1), (256, 1, 1), 0, o, mean, rstd, x, w, b, rows, cols, eps)
            return o, mean, rstd

        # the block backward (kiln's row_parts blocks) and the warp-per-row one (kiln's default where it
        # applies: the fewest elements per lane that hold a row, 4-warp blocks, as many as kiln picks)
        ln_e = next((e for e in (8, 16, 24, 32, 48) if 32 * e >= cols), None)

        def ln_bwd_with(kernel, parts, threads, smem, poison):
            dx = buf(x, poison)
            dwp = torch.empty(parts, cols, device="cuda")
            dbp = torch.empty(parts, cols, device="cuda")
            dw = buf(w, poison)
            db = buf(b, poison)
            mods["layer_norm"].launch(kernel, (parts, 1, 1), (threads, 1, 1), smem, dx, dwp, dbp, mean_f, rstd_f, g, x, w, rows, cols)
            mods["layer_norm"].launch(f"layer_norm_bwd_reduce_{s}", (math.ceil(cols / 32), 1, 1), (256, 1, 1), 0, dw, db, dwp, dbp, parts, cols)
            return dx, dw, db

        def ln_bwd(poison=True):
            return ln_bwd_with(f"layer_norm_bwd_{s}", min(max(math.ceil(rows / 32), 1), 512), 256, (2 * cols + 32) * 4, poison)

        def ln_bwd_w(poison=True):
            return ln_bwd_with(f"layer_norm_bwd_warp{ln_e}_{s}", min(max(math.ceil(rows / 32), 1), 1024), 128, 2 * cols * 4, poison)
        measure("layer_norm_fwd", ln_fwd, lambda: torch.ops.aten.native_layer_norm(x, [cols], w, b, eps),
                lambda t: [t[0], t[1].reshape(-1), t[2].reshape(-1)], 2 * n * esz + stats)
        if warp_ok:
            measure("layer_norm_fwd", ln_fwd_w, lambda: torch.ops.aten.native_layer_norm(x, [cols], w, b, eps),
                    lambda t: [t[0], t[1].reshape(-1), t[2].reshape(-1)], 2 * n * esz + stats, "warp")
        measure("layer_norm_bwd", ln_bwd, lambda: torch.ops.aten.native_layer_norm_backward(g, x, [cols], mean_t, rstd_t, w, b, [True, True, True]),
                lambda t: list(t), 3 * n * esz + stats)
        if warp_ok and ln_e is not None:
            measure("layer_norm_bwd", ln_bwd_w, lambda: torch.ops.aten.native_layer_norm_backward(g, x, [cols], mean_t, rstd_t, w, b, [True, True, True]),
                    lambda t: list(t), 3 * n * esz + stats, "warp")
        del x, g, y, yt
        torch.cuda.empty_cache()
    f.close()
    return fails


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=131072)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--dtypes", default="bf16,f32")
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    dts = [{"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[d] for d in a.dtypes.split(",")]
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    fails = run(a.out, a.rows, a.cols, dts)
    print("memory-bound:", "all checks ok" if fails == 0 else f"{fails} kernels WRONG", flush=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
