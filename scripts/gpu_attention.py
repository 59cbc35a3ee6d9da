#!/usr/bin/env python3
"""Checks and times kiln's CUDA attention kernels on a GPU, straight from kernels/*.cu, beside PyTorch.

Needs only PyTorch with CUDA and NVRTC (the GPU machine has both; no Rust): the .cu files are
compiled with NVRTC through ctypes exactly as kiln does (in-memory headers, -std=c++17, CUBIN for
the device's sm_XX), loaded with the driver API into PyTorch's context and launched on PyTorch
tensors. So the kernels can be validated and measured even before the Rust launchers run there.

  python scripts/gpu_attention.py --check            # correctness vs an f32 reference (odd shapes)
  python scripts/gpu_attention.py --bench --out DIR  # FlashAttention sweep vs SDPA flash, JSONL

Checks: every kernel's outputs are poisoned with NaN before the launch and compared with an f32
PyTorch reference (max |err| / max |ref|); for bf16/f16 also against the error of a plain PyTorch
implementation run in the same dtype (the issue's bar: ours <= 2x theirs).
Bench: the sweep of shared/notes/perf-anchors.md (B*N = 16k tokens, H*d = 2048, N 512..16k,
d 64/128, causal on/off); FLOPs fwd = 4*B*H*N^2*d (halved when causal), bwd = 2.5x fwd. Median of
CUDA-event timings after warm-up; the kiln and torch rows of a shape are measured back to back.
"""
import argparse
import ctypes
import ctypes.util
import glob
import json
import math
import os
import statistics
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KDIR = os.path.join(ROOT, "kernels")
HEADERS = ["common.cuh", "tensor_core.cuh", "attention_bwd.cuh", "attention_tc_bwd.cuh"]


# ----------------------------------------------------------------------------------------- NVRTC
def _find_lib(names, patterns):
    for n in names:
        p = ctypes.util.find_library(n)
        if p:
            try:
                return ctypes.CDLL(p)
            except OSError:
                pass
    roots = [os.environ.get("CUDA_HOME", "/usr/local/cuda"), "/usr/local/cuda", "/usr/lib/x86_64-linux-gnu"]
    roots += [p for p in sys.path if "site-packages" in p or "dist-packages" in p]
    for r in roots:
        for pat in patterns:
            for p in sorted(glob.glob(os.path.join(r, pat), recursive=True), reverse=True):
                try:
                    return ctypes.CDLL(p)
                except OSError:
                    pass
    raise SystemExit(f"cannot find any of {names} / {patterns}; set LD_LIBRARY_PATH")


def nvrtc_lib():
    return _find_lib(["nvrtc"], ["lib64/libnvrtc.so*", "nvidia/**/libnvrtc.so*", "libnvrtc.so*"])


def compile_cubin(stem, arch):
    nv = nvrtc_lib()
    src = open(os.path.join(KDIR, stem + ".cu"), "rb").read()
    hdr_src = [open(os.path.join(KDIR, h), "rb").read() for h in HEADERS]
    prog = ctypes.c_void_p()
    n = len(HEADERS)
    arr = ctypes.c_char_p * n
    rc = nv.nvrtcCreateProgram(ctypes.byref(prog), src, (stem + ".cu").encode(), n, arr(*hdr_src),
                               arr(*[h.encode() for h in HEADERS]))
    assert rc == 0, f"nvrtcCreateProgram: {rc}"
    opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++17", b"-lineinfo"]
    rc = nv.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    nv.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nv.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        raise SystemExit(f"NVRTC failed for {stem}.cu ({arch}):\n{log.value.decode(errors='replace')}")
    nv.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    nv.nvrtcGetCUBIN(prog, cubin)
    nv.nvrtcDestroyProgram(ctypes.byref(prog))
    return cubin.raw


# ---------------------------------------------------------------------------------- driver API
class Module:
    def __init__(self, stem):
        torch.zeros(1, device="cuda")  # PyTorch makes its (primary) context current on this thread
        major, minor = torch.cuda.get_device_capability()
        self.cu = ctypes.CDLL("libcuda.so.1")
        self.mod = ctypes.c_void_p()
        img = compile_cubin(stem, f"sm_{major}{minor}")
        self._img = ctypes.create_string_buffer(img, len(img))
        self._check(self.cu.cuModuleLoadData(ctypes.byref(self.mod), self._img), "cuModuleLoadData")
        self.funcs = {}

    def _check(self, rc, what):
        if rc != 0:
            raise RuntimeError(f"{what}: CUresult {rc}")

    def launch(self, name, grid, block, smem, *args):
        f = self.funcs.get(name)
        if f is None:
            f = ctypes.c_void_p()
            self._check(self.cu.cuModuleGetFunction(ctypes.byref(f), self.mod, name.encode()), f"cuModuleGetFunction({name})")
            self.funcs[name] = f
        if smem > 48 * 1024:
            self._check(self.cu.cuFuncSetAttribute(f, 8, ctypes.c_int(smem)), "cuFuncSetAttribute")  # MAX_DYNAMIC_SHARED_SIZE_BYTES
        keep = []
        for a in args:
            if isinstance(a, torch.Tensor):
                keep.append(ctypes.c_void_p(a.data_ptr()))
            elif a is None:
                keep.append(ctypes.c_void_p(0))
            elif isinstance(a, float):
                keep.append(ctypes.c_float(a))
            elif isinstance(a, I64):
                keep.append(ctypes.c_longlong(int(a)))
            else:
                keep.append(ctypes.c_int(int(a)))
        params = (ctypes.c_void_p * len(keep))(*[ctypes.cast(ctypes.pointer(k), ctypes.c_void_p) for k in keep])
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        self._check(self.cu.cuLaunchKernel(f, *[ctypes.c_uint(x) for x in grid], *[ctypes.c_uint(x) for x in block],
                                           ctypes.c_uint(smem), stream, params, None), f"cuLaunchKernel({name})")


class I64(int):
    """An `i64` kernel argument (plain Python ints are passed as `int`)."""


SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


class Kiln:
    """kiln's attention kernels on torch tensors q, k, v: [B, H, T, D] contiguous."""

    def __init__(self):
        self.simple = Module("attention")
        self.tc = Module("attention_tc")

    def fwd(self, q, k, v, mask, causal, variant):
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        out = torch.full_like(q, float("nan"))
        lse = torch.full((B, H, Tq), float("nan"), device=q.device)
        s = SUFFIX[q.dtype]
        dims = (B, H, Tq, Tk, D, 1.0 / math.sqrt(D), int(causal))
        if variant == "tc":
            self.tc.launch(f"attention_fwd_tc_d{D}_{s}", (math.ceil(Tq / 64), B * H, 1), (128, 1, 1), 2 * 64 * (D + 8) * 2,
                           out, lse, q, k, v, mask, *dims)
        else:
            self.simple.launch(f"attention_fwd_{s}", (math.ceil(Tq / 16), B * H, 1), (128, 1, 1), (48 * D + 32 * (D + 1)) * 4,
                               out, lse, q, k, v, mask, *dims)
        return out, lse

    def bwd(self, q, k, v, out, lse, dout, mask, causal, variant):
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        s = SUFFIX[q.dtype]
        dims = (B, H, Tq, Tk, D, 1.0 / math.sqrt(D), int(causal))
        rows = B * H * Tq
        delta = torch.full((rows,), float("nan"), device=q.device)
        self.simple.launch(f"attention_bwd_preprocess_{s}", (math.ceil(rows / 4), 1, 1), (128, 1, 1), 0, delta, out, dout, rows, D)
        dq, dk, dv = (torch.full_like(t, float("nan")) for t in (q, k, v))
        if variant == "tc":
            self.tc.launch(f"attention_bwd_dq_tc_d{D}_{s}", (math.ceil(Tq / 64), B * H, 1), (128, 1, 1), 2 * 64 * (D + 8) * 2,
                           dq, lse, delta, q, k, v, dout, mask, *dims)
            self.tc.launch(f"attention_bwd_dkdv_tc_d{D}_{s}", (math.ceil(Tk / 64), B * H, 1), (128, 1, 1),
                           (2 * 64 + 2 * 32) * (D + 8) * 2 + 2 * 32 * 4, dk, dv, lse, delta, q, k, v, dout, mask, *dims)
        else:
            sm = (16 * D + 64 * (D + 1)) * 4
            self.simple.launch(f"attention_bwd_dq_{s}", (math.ceil(Tq / 8), B * H, 1), (128, 1, 1), sm, dq, lse, delta, q, k, v, dout, mask, *dims)
            self.simple.launch(f"attention_bwd_dkdv_{s}", (math.ceil(Tk / 8), B * H, 1), (128, 1, 1), sm, dk, dv, lse, delta, q, k, v, dout, mask, *dims)
        return dq, dk, dv


def reference(q, k, v, mask, causal, dout, dtype=torch.float32):
    """Attention in `dtype` with autograd (f32: the reference; bf16/f16: 'a plain PyTorch implementation')."""
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    Tq, Tk = q.shape[2], k.shape[2]
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    vis = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
    if causal:
        vis = torch.tril(vis)  # top-left: key j visible to query i iff j <= i
    vis = vis[None, None]
    if mask is not None:
        vis = vis & (mask[:, None, None, :] != 0)
    s = s.masked_fill(~vis, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m).detach()
    e = torch.exp(s - m)
    l = e.sum(-1, keepdim=True)
    out = (e / torch.where(l == 0, torch.ones_like(l), l)) @ v
    lse = torch.where(l.squeeze(-1) > 0, (m + torch.log(l)).squeeze(-1), torch.full_like(l.squeeze(-1), float("-inf")))
    out.backward(dout.to(dtype))
    return out.detach(), lse.detach(), q.grad, k.grad, v.grad


def rel_err(x, ref):
    x, ref = x.float(), ref.float()
    if torch.isnan(x).any():
        return float("inf")
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def check(kiln, log):
    torch.manual_seed(0)
    cases = [(1, 1, 5, 5, False, False), (2, 3, 97, 97, True, False), (2, 2, 67, 131, True, True),
             (1, 2, 300, 200, False, True), (1, 1, 1000, 1000, True, False)]
    fails = 0
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for D in (32, 64, 80, 96, 128):
            for (B, H, Tq, Tk, causal, use_mask) in cases:
                q = torch.randn(B, H, Tq, D, device="cuda").to(dtype)
                k = torch.randn(B, H, Tk, D, device="cuda").to(dtype)
                v = torch.randn(B, H, Tk, D, device="cuda").to(dtype)
                dout = torch.randn(B, H, Tq, D, device="cuda").to(dtype)
                mask = None
                if use_mask:
                    mask = (torch.rand(B, Tk, device="cuda") > 0.3).float()
                    mask[-1] = 0  # one batch fully masked: out 0, lse -inf, zero grads
                ref = reference(q, k, v, mask, causal, dout)
                plain = reference(q, k, v, mask, causal, dout, dtype) if dtype != torch.float32 else None
                variants = ["simple"] + (["tc"] if dtype != torch.float32 and D in (64, 128) else [])
                for var in variants:
                    out, lse = kiln.fwd(q, k, v, mask, causal, var)
                    grads = kiln.bwd(q, k, v, out, lse, dout, mask, causal, var)
                    torch.cuda.synchronize()
                    fin = torch.isfinite(ref[1])
                    lse_ok = bool(torch.equal(torch.isinf(lse) & (lse < 0), ~fin)) and \
                        (lse[fin] - ref[1][fin]).abs().max().item() <= 1e-3 * (1 + ref[1][fin].abs().max().item()) if fin.any() else True
                    row = {"variant": var, "dtype": SUFFIX[dtype], "shape": [B, H, Tq, Tk, D], "causal": causal, "mask": use_mask, "lse_ok": lse_ok}
                    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
                    ok = lse_ok
                    for name, got, r, i in zip(["out", "dq", "dk", "dv"], [out, *grads], [ref[0], *ref[2:]], [0, 2, 3, 4]):
                        e = rel_err(got, r)
                        row[name] = e
                        if plain is not None:
                            pe = rel_err(plain[i], r)
                            row[name + "_plain_torch"] = pe
                            ok = ok and e <= max(2 * pe, tol)
                        else:
                            ok = ok and e <= tol
                    row["ok"] = ok
                    fails += not ok
                    log(row)
    return fails


def time_ms(fn, warmup=3, iters=20):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts), min(ts), max(ts)


def bench(kiln, log, dtype):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for D in (64, 128):
        H = 2048 // D
        for N in (512, 1024, 2048, 4096, 8192, 16384):
            B = 16384 // N
            for causal in (False, True):
                q, k, v, dout = (torch.randn(B, H, N, D, device="cuda", dtype=dtype) for _ in range(4))
                fl = 4 * B * H * N * N * D / (2 if causal else 1)
                shape = [B, H, N, D]
                out, lse = kiln.fwd(q, k, v, None, causal, "tc")
                rows = []
                for var in ("tc", "simple"):
                    if var == "simple" and N > 4096:
                        continue  # the reference kernel is slow; keep the sweep short
                    med, lo, hi = time_ms(lambda: kiln.fwd(q, k, v, None, causal, var))
                    rows.append(("attention_fwd", var, med, lo, hi, fl))
                    med, lo, hi = time_ms(lambda: kiln.bwd(q, k, v, out, lse, dout, None, causal, var))
                    rows.append(("attention_bwd", var, med, lo, hi, 2.5 * fl))
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    med, lo, hi = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
                    rows.append(("attention_fwd", "torch_sdpa_flash", med, lo, hi, fl))
                    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
                    o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                    med, lo, hi = time_ms(lambda: torch.autograd.grad(o, (qg, kg, vg), dout, retain_graph=True))
                    rows.append(("attention_bwd", "torch_sdpa_flash", med, lo, hi, 2.5 * fl))
                for op, var, med, lo, hi, flops in rows:
                    log({"op": op, "variant": var, "device": "cuda", "dtype": SUFFIX[dtype], "shape": shape, "causal": causal,
                         "median_ms": med, "min_ms": lo, "max_ms": hi, "tflops": flops / med / 1e9})
                del q, k, v, dout, out, lse
                torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--compile-only", metavar="ARCH", help="only compile both files with NVRTC for ARCH (no GPU needed)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16"])
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    if a.compile_only:
        for stem in ("attention", "attention_tc"):
            print(stem, len(compile_cubin(stem, a.compile_only)), "bytes of CUBIN")
        return 0
    os.makedirs(a.out, exist_ok=True)
    kiln = Kiln()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    fails = 0
    if a.check or not a.bench:
        with open(os.path.join(a.out, "attention_check.jsonl"), "w") as f:
            def log(r):
                f.write(json.dumps(r) + "\n")
                print(("ok  " if r["ok"] else "FAIL"), r["variant"], r["dtype"], r["shape"], "causal" if r["causal"] else "",
                      "mask" if r["mask"] else "", {k: f"{v:.2e}" for k, v in r.items() if isinstance(v, float)}, flush=True)
            fails = check(kiln, log)
        print("check:", "all ok" if fails == 0 else f"{fails} FAILURES", flush=True)
    if a.bench:
        dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
        with open(os.path.join(a.out, f"attention_bench_{a.dtype}.jsonl"), "w") as f:
            def log(r):
                f.write(json.dumps(r) + "\n")
                print(f"{r['op']:15s} {r['variant']:17s} {str(r['shape']):22s} causal={int(r['causal'])} {r['median_ms']:8.3f} ms {r['tflops']:7.1f} TFLOP/s", flush=True)
            bench(kiln, log, dtype)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
