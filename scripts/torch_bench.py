#!/usr/bin/env python3
"""PyTorch side-by-side benchmarks for kiln (CPU by default, --device cuda on the GPU machine).

One row per (op, dtype, shape):
  {"id", "op", "variant": "torch", "device", "dtype", "shape", "median_ms", "min_ms", "max_ms",
   "gb_per_s" (memory-bound ops) | "tflops" + "gflops" (compute ops), "n_iters", ...extras}
Work is counted as in shared/notes/perf-anchors.md:
  * memory-bound ops: bytes = every input read once + every output written once (+ saved statistics),
    computed from the nbytes of the actual argument / result tensors of the timed call;
  * matmul: 2·M·N·K; attention: fwd 4·B·H·T²·d (halved when causal), bwd 2.5×fwd, fwd+bwd 3.5×fwd;
  * train steps: 6·P·tokens + 12·L·T·d·tokens (P = all parameters, tied weights counted once).
Backward rows time only the backward kernel: GELU / LayerNorm / softmax call the ATen backward ops that
autograd itself dispatches to (aten.gelu_backward, aten.native_layer_norm_backward,
aten._softmax_backward_data) on inputs and saved statistics produced by the forward beforehand;
attention_bwd builds the SDPA graph once and times torch.autograd.grad(out, (q, k, v), dout,
retain_graph=True). Timing: warm-up, then the median of >= --min-iters calls (perf_counter on CPU;
one CUDA event pair per call + synchronize on CUDA, inputs rotated through >= 256 MB so they are not
served from L2).

  .venv-torch/bin/python scripts/torch_bench.py                       # CPU, 2 threads, table
  .venv-torch/bin/python scripts/torch_bench.py --json --out scripts/out/torch_cpu.jsonl
  python scripts/torch_bench.py --device cuda --json --out torch_cuda.jsonl
  python scripts/torch_bench.py --op attention_fwd,matmul            # a subset (comma-separated ops)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

aten = torch.ops.aten
DT = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
MODEL_OPS = ("train_step_gpt", "train_step_bert", "decode_gpt")  # whole-model rows, each in its own process
CUDA_SLEEP_CYCLES = 20_000_000  # ~10 ms at ~2 GHz: lets the host enqueue a batch of timed calls ahead of the GPU
CUDA_BATCH = 64  # timed calls per synchronize


# ---------------------------------------------------------------------------------------------- timing
class Timer:
    def __init__(self, device: str, warmup: int, min_iters: int, max_iters: int, target_s: float):
        self.device, self.warmup, self.min_iters, self.max_iters, self.target_s = device, warmup, min_iters, max_iters, target_s

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def _batch_ms(self, fn, args: list, start: int, n: int) -> list[float]:
        """Time calls start..start+n-1. CUDA: one event pair per call, all enqueued behind a short GPU sleep so the
        host runs ahead and kernels execute back to back (launch latency not counted), one synchronize at the end."""
        if self.device == "cuda":
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
            if hasattr(torch.cuda, "_sleep"):
                torch.cuda._sleep(CUDA_SLEEP_CYCLES)
            for i in range(n):
                ev[i][0].record()
                fn(args[(start + i) % len(args)])
                ev[i][1].record()
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in ev]
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            fn(args[(start + i) % len(args)])
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    def run(self, fn, args: list) -> list[float]:
        """fn(args[i % len(args)]) per call; returns per-call milliseconds (warm-up excluded)."""
        for i in range(self.warmup):
            fn(args[i % len(args)])
        self.sync()
        times = self._batch_ms(fn, args, 0, min(3, self.min_iters))
        per = max(statistics.median(times), 1e-4)
        n = int(min(self.max_iters, max(self.min_iters, math.ceil(self.target_s * 1e3 / per))))
        while len(times) < n:
            times += self._batch_ms(fn, args, len(times), min(CUDA_BATCH, n - len(times)))
        return times


def stats(times: list[float]) -> dict:
    return {"median_ms": round(statistics.median(times), 6), "min_ms": round(min(times), 6),
            "max_ms": round(max(times), 6), "n_iters": len(times)}


def nbytes(*ts) -> int:
    total = 0
    for t in ts:
        if isinstance(t, (tuple, list)):
            total += nbytes(*t)
        elif isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
    return total


def n_copies(device: str, bytes_per_set: int) -> int:
    """How many input sets to rotate through: >= 256 MB on CUDA (L2 is 60 MB); 2 on the CPU, as `kiln bench`
    does (so neither engine gets its inputs served from a warm last-level cache the other does not)."""
    if device != "cuda":
        return 2
    return max(1, min(16, math.ceil((256 << 20) / max(1, bytes_per_set))))


# ---------------------------------------------------------------------------------------------- rows
class Bench:
    def __init__(self, args):
        self.args, self.device = args, args.device
        self.timer = Timer(args.device, args.warmup, args.min_iters, args.max_iters, args.target_s)
        self.rows: list[dict] = []
        self.gen = torch.Generator(device="cpu").manual_seed(0)
        self.dev_gen = torch.Generator(device=args.device).manual_seed(0)

    def randn(self, *shape, dtype=torch.float32):
        """Random normal inputs generated on the device (never zeros)."""
        x = torch.randn(*shape, generator=self.dev_gen, dtype=torch.float32, device=self.device)
        return x if dtype == torch.float32 else x.to(dtype)

    def emit(self, op, dtype, shape, times, *, bytes_=None, flops=None, **extra):
        shape_s = "x".join(str(s) for s in shape) if isinstance(shape, (tuple, list)) else str(shape)
        row = {"id": f"{op}/{self.device}/{dtype}/{shape_s}" + ("/causal" if extra.get("causal") else ""),
               "op": op, "variant": extra.pop("variant", "torch"), "device": self.device, "dtype": dtype,
               "shape": shape_s, **stats(times)}
        med_s = row["median_ms"] / 1e3
        if bytes_ is not None:
            row["bytes"] = int(bytes_)
            row["gb_per_s"] = round(bytes_ / med_s / 1e9, 3)
        if flops is not None:
            row["flops"] = int(flops)
            row["gflops"] = round(flops / med_s / 1e9, 3)
            row["tflops"] = round(flops / med_s / 1e12, 6)
        row.update(extra)
        row["threads"] = torch.get_num_threads() if self.device == "cpu" else None
        row["load1"] = round(os.getloadavg()[0], 2)  # other work on the machine skews CPU numbers
        row["torch"] = torch.__version__
        self.rows.append(row)
        out = json.dumps(row) if self.args.json else fmt_row(row)
        print(out, flush=True)
        if self.args.out_fh:
            self.args.out_fh.write(json.dumps(row) + "\n")
            self.args.out_fh.flush()
        return row

    # -------------------------------------------------------------- memory-bound ops
    def memory_bound(self, op, dtype_s, shape, make, fn, method, bytes_read=nbytes):
        dtype = DT[dtype_s]
        first = make(dtype)
        out = fn(first)
        self.timer.sync()
        bytes_ = bytes_read(first) + nbytes(out)  # inputs read once + outputs (and saved stats) written once
        del out
        sets = [first] + [make(dtype) for _ in range(n_copies(self.device, bytes_) - 1)]
        times = self.timer.run(fn, sets)
        del sets, first
        return self.emit(op, dtype_s, shape, times, bytes_=bytes_, method=method)

    def elementwise_suite(self, dtype_s, shape, ops):
        rows, d = shape
        r = lambda dt, *s: self.randn(*s, dtype=dt)  # noqa: E731
        eps = 1e-5

        def ln_fwd_inputs(dt):
            return (r(dt, rows, d), r(dt, d), r(dt, d))

        def ln_bwd_inputs(dt):
            x, w, b = ln_fwd_inputs(dt)
            _, mean, rstd = aten.native_layer_norm(x, [d], w, b, eps)
            return (r(dt, rows, d), x, mean, rstd, w, b)

        def sm_bwd_inputs(dt):
            return (r(dt, rows, d), aten._softmax(r(dt, rows, d), -1, False))

        table = {
            "copy": (lambda dt: (r(dt, rows, d), torch.empty(rows, d, dtype=dt, device=self.device)),
                     lambda a: (a[1].copy_(a[0]), None)[1], "Tensor.copy_ (bytes: read src + write dst)"),
            "gelu_fwd": (lambda dt: r(dt, rows, d), lambda x: aten.gelu(x, approximate="none"), "aten.gelu(erf)"),
            "gelu_bwd": (lambda dt: (r(dt, rows, d), r(dt, rows, d)),
                         lambda a: aten.gelu_backward(a[0], a[1], approximate="none"), "aten.gelu_backward(dy, x, erf)"),
            "gelu_tanh_fwd": (lambda dt: r(dt, rows, d), lambda x: aten.gelu(x, approximate="tanh"), "aten.gelu(tanh)"),
            "gelu_tanh_bwd": (lambda dt: (r(dt, rows, d), r(dt, rows, d)),
                              lambda a: aten.gelu_backward(a[0], a[1], approximate="tanh"), "aten.gelu_backward(dy, x, tanh)"),
            "layer_norm_fwd": (ln_fwd_inputs, lambda a: aten.native_layer_norm(a[0], [d], a[1], a[2], eps),
                               "aten.native_layer_norm -> (y, mean, rstd)"),
            "layer_norm_bwd": (ln_bwd_inputs,
                               lambda a: aten.native_layer_norm_backward(a[0], a[1], [d], a[2], a[3], a[4], a[5], [True, True, True]),
                               "aten.native_layer_norm_backward(dy, x, mean, rstd, gamma, beta) -> (dx, dgamma, dbeta); "
                               "beta is passed but not read, so not counted",
                               lambda a: nbytes(a[:5])),
            "softmax_fwd": (lambda dt: r(dt, rows, d), lambda x: aten._softmax(x, -1, False), "aten._softmax(dim=-1)"),
            "softmax_bwd": (sm_bwd_inputs, lambda a: aten._softmax_backward_data(a[0], a[1], -1, a[1].dtype),
                            "aten._softmax_backward_data(dy, y)"),
        }
        for op in ops:
            if op in table and self.wants(op):
                self.memory_bound(op, dtype_s, shape, *table[op])
            elif op in self.args.row_ops and self.wants(op):
                self.memory_bound(op, dtype_s, shape, *self.declared(op, rows, d))

    def declared(self, op, rows, d):
        """(make, fn, method, bytes_read) for a row-wise op kiln declares (`kiln bench --list`) and
        the table above does not know: its PyTorch expression of x ([rows, d]), p (its [d]
        parameters, near 1) and d; the forward under no_grad, the backward as torch.autograd.grad
        of that expression on a retained graph (dy, x, p read; dx, dp written; the saved tensors
        are not counted)."""
        name, fwd = op.rsplit("_", 1)
        decl = self.args.row_ops[op]
        expr = compile(decl["torch"], f"<{name}>", "eval")
        f = lambda x, p: eval(expr, {"torch": torch, "d": d}, {"x": x, "p": p})  # noqa: E731

        def params(dt):
            return [(self.randn(d, dtype=dt) * 0.5 + 1).to(dt) for _ in range(decl["params"])]

        if fwd == "fwd":
            def fwd_fn(a):
                with torch.no_grad():
                    return f(a[0], list(a[1:]))
            return (lambda dt: (self.randn(rows, d, dtype=dt), *params(dt)), fwd_fn, f"{decl['torch']} (forward)")

        def bwd_inputs(dt):
            x = self.randn(rows, d, dtype=dt).requires_grad_()
            p = [t.requires_grad_() for t in params(dt)]
            return (f(x, p), self.randn(rows, d, dtype=dt), x, *p)
        return (bwd_inputs, lambda a: torch.autograd.grad(a[0], list(a[2:]), a[1], retain_graph=True),
                f"torch.autograd.grad of {decl['torch']} (backward only, graph retained)", lambda a: nbytes(a[1:]))

    # -------------------------------------------------------------- matmul
    def matmul(self, dtype_s, m, n, k, ta=False, tb=False):
        """torch.mm of [m, k] x [k, n]; `ta` / `tb`: that operand is the transposed view of a
        [k, m] / [n, k] tensor (kiln bench's `-At` / `-Bt` shapes)."""
        if not self.wants("matmul"):
            return
        dtype = DT[dtype_s]
        per_set = (m * k + k * n + m * n) * torch.tensor([], dtype=dtype).element_size()
        mk_a = (lambda: self.randn(k, m, dtype=dtype).t()) if ta else (lambda: self.randn(m, k, dtype=dtype))
        mk_b = (lambda: self.randn(n, k, dtype=dtype).t()) if tb else (lambda: self.randn(k, n, dtype=dtype))
        sets = [(mk_a(), mk_b(), torch.empty(m, n, dtype=dtype, device=self.device))
                for _ in range(n_copies(self.device, per_set) if m * n * k < 2048**3 else 1)]
        times = self.timer.run(lambda a: torch.mm(a[0], a[1], out=a[2]), sets)
        tf32 = self.device == "cuda" and dtype == torch.float32 and _tf32_enabled()
        shape = f"{m}x{n}x{k}" + ("-At" if ta else "") + ("-Bt" if tb else "")
        return self.emit("matmul", dtype_s, shape, times, flops=2 * m * n * k, method="torch.mm (MxNxK)", tf32=tf32)

    # -------------------------------------------------------------- attention
    @staticmethod
    def attention_errors(q, k, v, causal, out):
        """Issue 6's accuracy measure: `out` (SDPA on 16-bit q, k, v) and a plain PyTorch 16-bit
        attention (softmax(q k^T * scale) v with every op in q's dtype), each against the same
        computation in f32 on the same (16-bit) inputs, as kiln's max_err: max |x - ref| /
        max(1, max |ref|). Computed over all of [B, H], a few heads at a time (scores <= ~1 GiB)."""
        b, h, t, d = q.shape
        scale = 1.0 / math.sqrt(d)
        per_head = t * t * 4
        step = max(1, min(h, (1 << 30) // per_head))
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril() if causal else None

        def plain(qs, ks, vs):
            s = (qs @ ks.transpose(-1, -2)) * scale
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            return torch.softmax(s, dim=-1) @ vs

        err_out = err_plain = ref_max = 0.0
        with torch.no_grad():
            for bi in range(b):
                for h0 in range(0, h, step):
                    sl = (slice(bi, bi + 1), slice(h0, h0 + step))
                    qs, ks, vs = q[sl], k[sl], v[sl]
                    ref = plain(qs.float(), ks.float(), vs.float())
                    ref_max = max(ref_max, ref.abs().max().item())
                    err_out = max(err_out, (out[sl].float() - ref).abs().max().item())
                    err_plain = max(err_plain, (plain(qs, ks, vs).float() - ref).abs().max().item())
        denom = max(1.0, ref_max)
        return err_out / denom, err_plain / denom

    def attention(self, dtype_s, b, h, t, d, causal, backend=None, variant="torch",
                  passes=("attention_fwd", "attention_bwd", "attention_fwd_bwd")):
        ops = [o for o in passes if self.wants(o)]
        if not ops:
            return
        dtype = DT[dtype_s]
        fwd_flops = 4 * b * h * t * t * d / (2 if causal else 1)
        shape = (b, h, t, d)
        ctx = _sdpa_ctx(backend)
        per_set = 4 * b * h * t * d * torch.tensor([], dtype=dtype).element_size()
        k_sets = n_copies(self.device, per_set)

        def qkv(req):
            return tuple(self.randn(b, h, t, d, dtype=dtype).requires_grad_(req) for _ in range(3)) + (self.randn(b, h, t, d, dtype=dtype),)

        extra = dict(causal=causal, layout="B,H,T,d", variant=variant, sdpa_backend=backend or "default")
        with ctx:
            if "attention_fwd" in ops:
                sets = [qkv(False) for _ in range(k_sets)]
                with torch.no_grad():
                    times = self.timer.run(lambda a: F.scaled_dot_product_attention(a[0], a[1], a[2], is_causal=causal), sets)
                    acc = {}
                    if dtype != torch.float32:
                        q, k, v = sets[0][:3]
                        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                        acc["max_err"], acc["plain_16bit_err"] = self.attention_errors(q, k, v, causal, out)
                        acc["err_reference"] = "f32 attention on the same 16-bit inputs"
                self.emit("attention_fwd", dtype_s, shape, times, flops=fwd_flops, method="F.scaled_dot_product_attention", **extra, **acc)
                del sets
            if "attention_bwd" in ops:
                sets = []
                for _ in range(k_sets):
                    q, k, v, do = qkv(True)
                    sets.append((F.scaled_dot_product_attention(q, k, v, is_causal=causal), (q, k, v), do))
                times = self.timer.run(lambda a: torch.autograd.grad(a[0], a[1], a[2], retain_graph=True), sets)
                self.emit("attention_bwd", dtype_s, shape, times, flops=2.5 * fwd_flops,
                          method="torch.autograd.grad(out, (q,k,v), dout, retain_graph=True) on a prebuilt SDPA graph", **extra)
                del sets
            if "attention_fwd_bwd" in ops:
                sets = [qkv(True) for _ in range(k_sets)]

                def fb(a):
                    out = F.scaled_dot_product_attention(a[0], a[1], a[2], is_causal=causal)
                    return torch.autograd.grad(out, a[:3], a[3])

                times = self.timer.run(fb, sets)
                self.emit("attention_fwd_bwd", dtype_s, shape, times, flops=3.5 * fwd_flops,
                          method="SDPA forward + torch.autograd.grad", **extra)
                del sets

    # -------------------------------------------------------------- cross-entropy
    def cross_entropy(self, dtype_s, n, classes):
        """F.cross_entropy(logits [n, classes], targets, ignore_index=-100), mean over kept rows. Bytes as kiln counts
        them: fwd reads logits + targets and writes the loss and a per-row f32 logsumexp; bwd reads logits, targets
        and the logsumexp and writes dlogits."""
        dtype = DT[dtype_s]
        t = torch.tensor([-100 if i % 17 == 5 else (i * 7919) % classes for i in range(n)], device=self.device)
        e = torch.tensor([], dtype=dtype).element_size()
        if self.wants("cross_entropy_fwd"):
            sets = [self.randn(n, classes, dtype=dtype) for _ in range(n_copies(self.device, n * classes * e))]
            with torch.no_grad():
                times = self.timer.run(lambda x: F.cross_entropy(x, t, ignore_index=-100), sets)
            self.emit("cross_entropy_fwd", dtype_s, (n, classes), times, bytes_=n * classes * e + n * 12 + 4,
                      method="F.cross_entropy(ignore_index=-100)")
        if self.wants("cross_entropy_bwd"):
            sets = []
            for _ in range(n_copies(self.device, n * classes * e)):
                x = self.randn(n, classes, dtype=dtype).requires_grad_(True)
                sets.append((F.cross_entropy(x, t, ignore_index=-100), x))
            times = self.timer.run(lambda a: torch.autograd.grad(a[0], a[1], retain_graph=True), sets)
            self.emit("cross_entropy_bwd", dtype_s, (n, classes), times, bytes_=2 * n * classes * e + n * 12,
                      method="torch.autograd.grad(loss, logits, retain_graph=True) on a prebuilt F.cross_entropy graph")

    # -------------------------------------------------------------- training steps
    def train_step(self, which, cfg, batch, seq, amp_bf16):
        from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        torch.manual_seed(0)
        if which == "gpt":
            model = GPT2LMHeadModel(GPT2Config(**cfg, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                                               bos_token_id=0, eos_token_id=0))
            n_layer, d_model, vocab = cfg["n_layer"], cfg["n_embd"], cfg["vocab_size"]
        else:
            model = BertForMaskedLM(BertConfig(**cfg, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
            n_layer, d_model, vocab = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]
        model.to(self.device).train()
        if self.args.compile:
            model = torch.compile(model)
        fused = self.device == "cuda"
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **({"fused": True} if fused else {}))
        n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
        ids = torch.randint(0, vocab, (batch, seq), generator=self.gen).to(self.device)
        if which == "gpt":
            inputs = {"input_ids": ids, "labels": ids}
        else:
            labels = torch.full_like(ids, -100)
            pick = torch.rand(batch, seq, generator=self.gen).to(self.device) < 0.15
            labels[pick] = ids[pick]
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
                      "labels": labels}
        losses = []

        def step(_):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=amp_bf16):
                loss = model(**inputs).loss
            loss.backward()
            opt.step()
            losses.append(loss.detach())

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        timer = Timer(self.device, max(2, self.args.warmup), self.args.train_iters, self.args.train_iters, 0.0)
        times = timer.run(step, [None])
        tokens = batch * seq
        flops = 6 * n_params * tokens + 12 * n_layer * seq * d_model * tokens
        med_s = statistics.median(times) / 1e3
        extra = {"tokens_per_s": round(tokens / med_s, 1), "params": n_params, "batch": batch, "seq": seq,
                 "config": cfg, "autocast": "bf16" if amp_bf16 else None, "compiled": bool(self.args.compile),
                 "optimizer": f"torch.optim.AdamW(lr=1e-4, wd=0.01{', fused=True' if fused else ''})",
                 "first_loss": round(float(losses[0]), 5), "last_loss": round(float(losses[-1]), 5),
                 "flops_formula": "6*P*tokens + 12*L*T*d*tokens"}
        if self.device == "cuda":
            extra["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        extra["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        dtype_s = "bf16-autocast" if amp_bf16 else "f32"
        variant = "torch_compile" if self.args.compile else "torch"
        self.emit(f"train_step_{which}", dtype_s, (batch, seq), times, flops=flops, variant=variant, **extra)

    # -------------------------------------------------------------- decoding
    def decode(self, cfg, n_prompt, new, dtype_s="f32"):
        """Greedy generation with the key/value cache, batch 1: HF GPT2LMHeadModel.generate(use_cache=True,
        do_sample=False), exactly `new` tokens after an `n_prompt`-token prompt (kiln's prompt rule), with the model's
        weights in `dtype_s` (f32, or bf16 as model.to(torch.bfloat16)). Bytes as kiln counts them: the weights
        streamed once per generated token, (weight bytes)*P*new."""
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(**cfg, bos_token_id=0, eos_token_id=0)).to(self.device, DT[dtype_s]).eval()
        n_params = sum(p.numel() for p in model.parameters())
        ids = torch.tensor([[(i * 7919 + 13) % cfg["vocab_size"] for i in range(n_prompt)]], device=self.device)
        mask = torch.ones_like(ids)

        def gen(_):
            with torch.no_grad():
                return model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                      use_cache=True, pad_token_id=0)

        assert gen(None).shape[1] == n_prompt + new
        timer = Timer(self.device, 1, 5, 5, 0.0)
        times = timer.run(gen, [None])
        med_s = statistics.median(times) / 1e3
        esize = torch.tensor([], dtype=DT[dtype_s]).element_size()
        self.emit("decode_gpt", dtype_s, (1, n_prompt, new), times, bytes_=esize * n_params * new,
                  tokens_per_s=round(new / med_s, 1), ms_per_token=round(med_s * 1e3 / new, 3), params=n_params,
                  prompt_tokens=n_prompt, new_tokens=new, config=cfg,
                  method="transformers GPT2LMHeadModel.generate(use_cache=True, do_sample=False)")

    def wants(self, op):
        return self.args.ops is None or op in self.args.ops


def _disable_tf32():
    m = torch.backends.cuda.matmul
    if hasattr(m, "fp32_precision"):  # torch >= 2.9 API; do not mix it with the legacy allow_tf32 flags
        m.fp32_precision = "ieee"
        torch.backends.cudnn.fp32_precision = "ieee"
    else:
        m.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def _tf32_enabled():
    m = torch.backends.cuda.matmul
    return m.fp32_precision == "tf32" if hasattr(m, "fp32_precision") else bool(m.allow_tf32)


def _sdpa_ctx(backend):
    import contextlib

    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([{"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                         "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[backend]])


def fmt_row(r):
    perf = f"{r['gb_per_s']:9.2f} GB/s " if "gb_per_s" in r else f"{r['gflops']:9.2f} GFLOP/s"
    tail = f"  {r['tokens_per_s']:.0f} tok/s, peak RSS {r['peak_rss_mb']} MB" if "tokens_per_s" in r else ""
    return f"{r['id']:52s} {r['median_ms']:10.3f} ms (min {r['min_ms']:.3f}, n={r['n_iters']})  {perf}{tail}"


# ---------------------------------------------------------------------------------------------- suites
MEM_OPS = ["copy", "gelu_fwd", "gelu_bwd", "gelu_tanh_fwd", "gelu_tanh_bwd", "layer_norm_fwd", "layer_norm_bwd",
           "softmax_fwd", "softmax_bwd"]
GPT_CPU = dict(n_layer=4, n_embd=256, n_head=4, vocab_size=8192, n_positions=128)
BERT_CPU = dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024, vocab_size=8192)
GPT2_124M = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
BERT_BASE = dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072, vocab_size=30522)


def cpu_suite(bench: Bench, args):
    bench.matmul("f32", 1024, 1024, 1024)
    # kiln bench's CPU GEMM shapes: squares, and a training step's (1024 tokens, widths 256 / 1024):
    # x·Wᵀ (B transposed), dY·W (plain), dYᵀ·x (A transposed)
    bench.matmul("f32", 512, 512, 512)
    bench.matmul("f32", 2048, 2048, 2048)
    for k, n in ((256, 256), (256, 1024), (1024, 256), (1024, 1024)):
        bench.matmul("f32", 1024, n, k, tb=True)
        if (k, n) != (1024, 1024):  # 1024³ plain is the first row
            bench.matmul("f32", 1024, n, k)
        bench.matmul("f32", n, k, 1024, ta=True)
    for dt in args.dtypes:
        bench.elementwise_suite(dt, (8192, 768), MEM_OPS)
        bench.cross_entropy(dt, 1024, 8192)
    for causal in (False, True):
        bench.attention("f32", 8, 4, 512, 64, causal)
    # kiln bench's CPU sweep: B*N = 4096 tokens, H 4, d 64 (FlashAttention's B*N = 16k, H*d = 2048 is for GPUs)
    if not args.no_sweep:
        for n in (256, 512, 1024, 2048):
            for causal in (False, True):
                bench.attention("f32", 4096 // n, 4, n, 64, causal, passes=("attention_fwd", "attention_fwd_bwd"))
    if bench.wants("train_step_gpt"):
        bench.train_step("gpt", GPT_CPU, 8, 128, amp_bf16=False)
    if bench.wants("train_step_bert"):
        bench.train_step("bert", BERT_CPU, 8, 128, amp_bf16=False)
    if bench.wants("decode_gpt"):
        # f32 only: PyTorch's bf16 generate is about 20x slower than its f32 one on an AVX2 CPU (12 s a row)
        for n_prompt in (32, 512):
            bench.decode(GPT2_124M, n_prompt, 32)


def cuda_suite(bench: Bench, args):
    _disable_tf32()  # "f32" means plain fp32 FMA, not TF32
    # ceilings first, so every other row can be read as a ratio of them
    for dt in ("bf16", "f32"):
        bench.elementwise_suite(dt, (262144, 768), ["copy"])
    bench.matmul("bf16", 8192, 8192, 8192)
    bench.matmul("f32", 8192, 8192, 8192)
    bench.matmul("bf16", 8192, 768 * 4, 768)  # a GPT-2 MLP-shaped GEMM (B*T=8192 tokens)
    for dt in args.dtypes:
        # [B*T, 768] at B*T = 8192 (rotated out of L2); >= 256 MB inputs; long rows (QuACK regime)
        for shape in ((8192, 768), (262144, 768), (32768, 4096)):
            bench.elementwise_suite(dt, shape, [o for o in MEM_OPS if o != "copy" or shape != (262144, 768)])
    for backend in args.sdpa_backends:
        variant = "torch" if backend == "flash" else f"torch_{backend}"
        for d in (64, 128):
            for n in (512, 1024, 2048, 4096, 8192, 16384):
                for causal in (False, True):
                    try:
                        bench.attention("bf16", 16384 // n, 2048 // d, n, d, causal, backend=backend, variant=variant)
                    except RuntimeError as e:  # a backend that does not support this case: say so, keep going
                        print(f"# skipped attention {backend} N={n} d={d} causal={causal}: {str(e).splitlines()[0]}",
                              file=sys.stderr)
    if bench.wants("train_step_gpt"):
        bench.train_step("gpt", GPT2_124M, args.gpt_batch, 1024, amp_bf16=True)
    if bench.wants("train_step_bert"):
        bench.train_step("bert", BERT_BASE, 32, 128, amp_bf16=True)
    if bench.wants("decode_gpt"):
        for dt in ("f32", "bf16"):
            for n_prompt in (32, 512):
                bench.decode(GPT2_124M, n_prompt, 32, dt)


def run_isolated(args, op) -> list[dict]:
    """Run one whole-model row (a training step, decoding) in a fresh process so its peak RSS is its own."""
    cmd = [sys.executable, os.path.abspath(__file__), "--op", op, "--json", "--no-isolate", "--device", args.device,
           "--threads", str(args.threads), "--warmup", str(args.warmup), "--train-iters", str(args.train_iters),
           "--gpt-batch", str(args.gpt_batch)] + (["--compile"] if args.compile else [])
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise SystemExit(f"error: child run for {op} failed with exit code {res.returncode}")
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU; default 2)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per line")
    ap.add_argument("--out", help="also append the JSON lines to this file (truncated first)")
    ap.add_argument("--op", help="comma-separated op names to run (default: all)")
    ap.add_argument("--dtypes", help="memory-bound op dtypes (default: f32 on CPU, bf16,f32 on CUDA)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--min-iters", type=int, default=None, help="default 10 on CPU, 30 on CUDA")
    ap.add_argument("--max-iters", type=int, default=1000)
    ap.add_argument("--target-s", type=float, default=None, help="time budget per row (default 1.0 CPU, 0.3 CUDA)")
    ap.add_argument("--train-iters", type=int, default=10, help="timed training steps (after >= 2 warm-up steps)")
    ap.add_argument("--gpt-batch", type=int, default=16, help="CUDA GPT-2 124M batch at T=1024")
    ap.add_argument("--sdpa-backends", default="flash", help="CUDA attention backends: flash,cudnn,efficient,math")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training-step models")
    ap.add_argument("--no-sweep", action="store_true", help="CPU: skip the attention sequence-length sweep")
    ap.add_argument("--row-ops", dest="row_ops_file", help="`kiln bench --list` output: also time the row-wise ops it declares "
                    "that this script's own table does not know (their PyTorch expression, forward and autograd backward)")
    ap.add_argument("--no-isolate", action="store_true", help="run the whole-model rows (training steps, decoding) in this process")
    args = ap.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"error: --device cuda requested but torch.cuda.is_available() is False "
              f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})", file=sys.stderr)
        return 2
    cpu = args.device == "cpu"
    args.ops = set(args.op.split(",")) if args.op else None
    args.row_ops = {}
    if args.row_ops_file:
        with open(args.row_ops_file) as fh:
            for line in fh:
                decl = json.loads(line) if line.strip() else {}
                if "row_op" in decl:
                    args.row_ops.update({f"{decl['row_op']}_{p}": decl for p in ("fwd", "bwd")})
    MEM_OPS.extend(o for o in args.row_ops if o not in MEM_OPS)
    args.dtypes = args.dtypes.split(",") if args.dtypes else (["f32"] if cpu else ["bf16", "f32"])
    args.sdpa_backends = args.sdpa_backends.split(",")
    args.min_iters = args.min_iters or (10 if cpu else 30)
    args.target_s = args.target_s if args.target_s is not None else (1.0 if cpu else 0.3)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(False)
    args.out_fh = None
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        args.out_fh = open(args.out, "w")

    env = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": args.device}
    if not cpu:
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, cuda=torch.version.cuda, sm=f"{p.major}{p.minor}", gpu_mem_gb=round(p.total_memory / 2**30, 1),
                   cudnn=torch.backends.cudnn.version())
    print(("# " if not args.json else "") + json.dumps({"env": env}), file=sys.stderr)

    isolate = not args.no_isolate
    if isolate:  # whole-model rows in child processes, run after the kernels
        train_ops = [o for o in MODEL_OPS if args.ops is None or o in args.ops]
        args.ops = (args.ops or set(MEM_OPS) | {"matmul", "attention_fwd", "attention_bwd", "attention_fwd_bwd",
                                                 "cross_entropy_fwd", "cross_entropy_bwd"}) - set(MODEL_OPS)
    bench = Bench(args)
    (cpu_suite if cpu else cuda_suite)(bench, args)
    if isolate:
        for op in train_ops:
            for row in run_isolated(args, op):
                print(json.dumps(row) if args.json else fmt_row(row), flush=True)
                if args.out_fh:
                    args.out_fh.write(json.dumps(row) + "\n")
    if args.out_fh:
        args.out_fh.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
