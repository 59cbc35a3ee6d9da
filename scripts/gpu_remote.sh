#!/usr/bin/env bash
# Runs ON the GPU machine (no Rust there), from the folder scripts/gpu_run.sh packed:
#   bash gpu-carry/gpu_remote.sh [tests|cli|sanitize|bench|all]     (default: tests)
#   tests    nvidia-smi, library discovery, kiln-tensor unit tests, kernels_compile, gpu_ops,
#            hf_parity on cpu and on cuda, `kiln kernels`                      (~3-6 min)
#   cli      `kiln train --device cuda` GPT-2 + BERT (--json), `kiln forward --device cuda` on
#            every HF fixture compared with the fixture's expected outputs        (~2-4 min)
#   sanitize compute-sanitizer memcheck and racecheck on the gpu_ops tests       (~5-9 min)
#   bench    `kiln bench --device cuda` (ceilings, every op and variant, the attention sweep,
#            training steps) and scripts/torch_bench.py --device cuda on the same card, then the
#            side-by-side table and the charts (--compare, --plot)                  (~5-8 min)
# Each device-tool command may run 10 minutes: run the stages as separate commands.
# Logs: $OUT/gpu-logs/<stage>/*.log and $OUT/gpu-logs/<stage>/SUMMARY (PASS/FAIL per step).
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
STAGE_NAME="${1:-tests}"
OUT="${OUT:-$HERE/out}"
WORK="${KILN_GPU_WORK:-/tmp/kiln-gpu}"
mkdir -p "$WORK"
if [ ! -x "$WORK/bin/kiln" ] || [ "$HERE/payload.tar.xz" -nt "$WORK/bin/kiln" ]; then
  rm -rf "$WORK"/{bin,tests,fixtures}
  tar -C "$WORK" -xJf "$HERE/payload.tar.xz" 2>/dev/null ||
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$HERE/payload.tar.xz" "$WORK"
fi
KILN="$WORK/bin/kiln"
T="$WORK/tests"
FIX="$WORK/fixtures"

# ----- libraries: libcuda (driver), libnvrtc.so.13 + builtins, libcublas(Lt).so.13, CUDA headers
dirs=()
add_dir() { [ -d "$1" ] && case ":${LD_LIBRARY_PATH:-}:" in *":$1:"*) ;; *) dirs+=("$1"); LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}";; esac; }
find_lib() { # $1 = file name: ldconfig, the toolkit, then pip wheels (nvidia.* packages)
  local p
  p=$(ldconfig -p 2>/dev/null | awk -v n="$1" '$1 == n {print $NF; exit}')
  [ -n "$p" ] && { echo "$p"; return; }
  for d in ${CUDA_HOME:-/usr/local/cuda}/lib64 /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 /usr/lib/x86_64-linux-gnu; do
    [ -e "$d/$1" ] && { echo "$d/$1"; return; }
  done
  python3 - "$1" 2>/dev/null <<'PY'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
try:
    import nvidia
    roots += list(nvidia.__path__)
except Exception:
    pass
for r in roots:
    hits = glob.glob(os.path.join(r, "**", sys.argv[1]), recursive=True)
    if hits:
        print(hits[0]); break
PY
}
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
for lib in libnvrtc.so.13 libnvrtc-builtins.so.13.0 libcublas.so.13 libcublasLt.so.13; do
  p=$(find_lib "$lib")
  [ -n "$p" ] && add_dir "$(dirname "$(readlink -f "$p")")" && add_dir "$(dirname "$p")"
done
export LD_LIBRARY_PATH
if [ -z "${KILN_CUDA_INCLUDE:-}" ]; then
  for d in ${CUDA_HOME:-/usr/local/cuda}/include /usr/local/cuda/include /usr/local/cuda/targets/x86_64-linux/include; do
    [ -f "$d/cuda_bf16.h" ] && { export KILN_CUDA_INCLUDE="$d"; break; }
  done
fi
export KILN_CACHE_DIR="$WORK/kernel-cache" KILN_REQUIRE_GPU=1 KILN_REQUIRE_NVRTC=1 RUST_BACKTRACE=1
export KILN_FIXTURES_DIR="$FIX"

LOG="$OUT/gpu-logs/$STAGE_NAME"
mkdir -p "$LOG"
SUMMARY="$LOG/SUMMARY"
: >"$SUMMARY"
step() { # step NAME TIMEOUT_S CMD... : runs with a time limit, logs, records PASS/FAIL
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "=== $name: $*" | tee -a "$LOG/commands.log"
  timeout "$limit" "$@" >"$LOG/$name.log" 2>&1
  local rc=$?
  local verdict=PASS
  [ $rc -ne 0 ] && verdict="FAIL (rc $rc$([ $rc -eq 124 ] && echo ', timed out'))"
  echo "$verdict  $name  $(( $(date +%s) - t0 ))s" | tee -a "$SUMMARY"
  tail -n 5 "$LOG/$name.log"
}

stage_tests() {
  { cat "$WORK/BUILD_INFO"; echo; date -u; uname -a; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; echo "KILN_CUDA_INCLUDE=${KILN_CUDA_INCLUDE:-}";
    for l in libcuda.so.1 libnvrtc.so.13 libcublas.so.13 libcublasLt.so.13; do echo "$l -> $(find_lib $l)"; done
    ldd "$KILN"; } >"$LOG/env.log" 2>&1
  step nvidia-smi 60 nvidia-smi
  step tensor_lib 300 "$T/kiln_tensor_lib" --test-threads=1
  step kernels_compile 300 "$T/kernels_compile" --test-threads=1 --nocapture
  step gpu_ops 420 "$T/gpu_ops" --test-threads=1 --nocapture
  step row_ops 300 env KILN_REQUIRE_GPU=1 KILN_RMS_NORM_KERNEL=1 "$T/row_ops" --test-threads=1 --nocapture
  step hf_parity_cpu 300 "$T/hf_parity" --test-threads=2
  step hf_parity_cuda 300 env KILN_TEST_DEVICE=cuda "$T/hf_parity" --test-threads=1
  step kiln_kernels 300 "$KILN" kernels --arch sm_90 --out "$LOG/kernels"
}

stage_cli() {
  local run="$WORK/runs"
  rm -rf "$run"; mkdir -p "$run"
  step train_gpt2_cuda 300 "$KILN" train --model gpt2-tiny --device cuda --steps 30 --batch 8 --seq 64 --json --sample-tokens 0 --out "$run/gpt2"
  step train_bert_cuda 300 "$KILN" train --model bert-tiny --device cuda --steps 30 --batch 8 --seq 64 --json --out "$run/bert"
  for fx in "$FIX"/*/; do
    fx=${fx%/}; n=$(basename "$fx")
    [ -f "$fx/batch.json" ] && [ -f "$fx/expected.safetensors" ] || continue
    step "forward_cuda_$n" 120 "$KILN" forward --model "$fx" --batch "$fx/batch.json" --device cuda --out "$run/$n.safetensors"
    [ -f "$run/$n.safetensors" ] && step "compare_$n" 120 python3 "$WORK/compare_safetensors.py" "$run/$n.safetensors" "$fx/expected.safetensors" 1e-4
  done
}

stage_sanitize() {
  local cs
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
  if [ -z "$cs" ]; then echo "FAIL  compute-sanitizer not found" | tee -a "$SUMMARY"; return; fi
  # Smaller shapes are not available to a test binary: run the quick tests under racecheck, all under memcheck.
  step memcheck 420 "$cs" --tool memcheck --leak-check no --error-exitcode 99 "$T/gpu_ops" --test-threads=1
  step racecheck 240 "$cs" --tool racecheck --error-exitcode 99 "$T/gpu_ops" --test-threads=1 --skip attention_fused
  step racecheck_attention 300 "$cs" --tool racecheck --error-exitcode 99 "$T/gpu_ops" --test-threads=1 attention_fused
}

stage_bench() {
  step kiln_bench_cuda 330 "$KILN" bench --device cuda --json --target-s 0.1 --out "$LOG/kiln_cuda.jsonl"
  step torch_bench_cuda 240 python3 "$WORK/torch_bench.py" --device cuda --json --target-s 0.1 --row-ops "$WORK/row_ops.jsonl" --out "$LOG/torch_cuda.jsonl"
  step compare 60 "$KILN" bench --from "$LOG/kiln_cuda.jsonl" --compare "$LOG/torch_cuda.jsonl" --plot "$LOG"
}

# One short pass over everything, for a 15-minute device budget (~8 min): the GPU tests, CUDA
# training and forward, the kernel benchmarks beside PyTorch, and sanitizer runs on a subset.
stage_short() {
  { cat "$WORK/BUILD_INFO"; date -u; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; ldd "$KILN"; } >"$LOG/env.log" 2>&1
  step nvidia-smi 30 nvidia-smi
  step kernels_compile 120 "$T/kernels_compile" --test-threads=4 --nocapture
  step gpu_ops 150 "$T/gpu_ops" --test-threads=1 --nocapture
  step row_ops 60 env KILN_REQUIRE_GPU=1 KILN_RMS_NORM_KERNEL=1 "$T/row_ops" --test-threads=1 every_row_op_on_cuda
  step hf_parity_cuda 90 env KILN_TEST_DEVICE=cuda "$T/hf_parity" --test-threads=1
  step tensor_lib 60 "$T/kiln_tensor_lib" --test-threads=4
  local run="$WORK/runs"; rm -rf "$run"; mkdir -p "$run"
  step train_gpt2_cuda_bf16 60 "$KILN" train --model gpt2-tiny --device cuda --dtype bf16 --steps 30 --batch 8 --seq 64 --json --out "$run/gpt2"
  step train_bert_cuda 60 "$KILN" train --model bert-tiny --device cuda --steps 30 --batch 8 --seq 64 --json --out "$run/bert"
  step train_gpt2_cuda_f32 60 "$KILN" train --model gpt2-tiny --device cuda --steps 30 --batch 8 --seq 64 --json --out "$run/gpt2f32"
  step kiln_bench_cuda 150 "$KILN" bench --device cuda --json --no-sweep --target-s 0.05 --min-iters 10 --train-steps 5 --out "$LOG/kiln_cuda.jsonl"
  step torch_bench_cuda 120 python3 "$WORK/torch_bench.py" --device cuda --json --target-s 0.05 --min-iters 10 --train-iters 5 --row-ops "$WORK/row_ops.jsonl" --op copy,matmul,gelu_fwd,gelu_bwd,layer_norm_fwd,layer_norm_bwd,softmax_fwd,softmax_bwd,rms_norm_fwd,rms_norm_bwd,attention_fwd,attention_bwd,attention_fwd_bwd --out "$LOG/torch_cuda.jsonl"
  step compare 30 "$KILN" bench --from "$LOG/kiln_cuda.jsonl" --compare "$LOG/torch_cuda.jsonl" --plot "$LOG"
  local cs; cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  step memcheck_subset 60 "$cs" --tool memcheck --error-exitcode 99 "$T/gpu_ops" --test-threads=1 cat_split softmax layer_norm
  # racecheck of attention_fused needs more than 60 s: run it in the sanitize stage
  step kiln_kernels 60 "$KILN" kernels --arch sm_90
}

# The fused attention alone (about a minute): its GPU tests against the CPU, and kiln bench's
# attention rows (tensor-core and simple kernels) at a FlashAttention sweep point.
stage_attn() {
  step gpu_ops_attention 90 "$T/gpu_ops" --test-threads=1 --nocapture attention_fused
  step kiln_bench_attention 90 "$KILN" bench --device cuda --json --op attention --no-sweep --target-s 0.02 --min-iters 5 --out "$LOG/kiln_attn.jsonl"
}

# What issue 6 needs measured next (written 2026-11-30 without a GPU), in two commands of < 10 min:
# `issue6` (~8 min): the kernel report on the system NVRTC, the attention GPU tests (tc and the
# opt-in tc2, wgmma and TMA kernels), the attention sweep with tc, tc2, wg and wgtma beside SDPA flash,
# the memory-bound kernels at 268 MB beside PyTorch eager;
# `issue6_train`: the GPT-2 124M / BERT-base bf16 training steps beside PyTorch (autocast, eager
# and torch.compile), then racecheck of the tc2 test and memcheck + racecheck of the wgmma test.
stage_issue6() {
  { cat "$WORK/BUILD_INFO"; date -u; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; ldd "$KILN"; } >"$LOG/env.log" 2>&1
  step nvidia-smi 30 nvidia-smi
  step kernels_compile 120 "$T/kernels_compile" --test-threads=4 --nocapture
  step gpu_ops 150 "$T/gpu_ops" --test-threads=1 --nocapture
  step kiln_attn_tc 100 "$KILN" bench --device cuda --json --op attention --target-s 0.03 --min-iters 5 --out "$LOG/kiln_attn_tc.jsonl"
  step kiln_attn_tc2 100 "$KILN" bench --device cuda --json --op attention --attn-kernel tc2 --variant cuda --target-s 0.03 --min-iters 5 --out "$LOG/kiln_attn_tc2.jsonl"
  step kiln_attn_wg 100 "$KILN" bench --device cuda --json --op attention --attn-kernel wg --variant cuda,cuda-wg-serial --target-s 0.03 --min-iters 5 --out "$LOG/kiln_attn_wg.jsonl"
  step kiln_attn_wgtma 100 "$KILN" bench --device cuda --json --op attention --attn-kernel wgtma --variant cuda,cuda-wgtma-pp --target-s 0.03 --min-iters 5 --out "$LOG/kiln_attn_wgtma.jsonl"
  step torch_attn 150 python3 "$WORK/torch_bench.py" --device cuda --json --target-s 0.03 --min-iters 5 --op attention_fwd,attention_bwd,attention_fwd_bwd --out "$LOG/torch_attn.jsonl"
  step compare_tc 20 "$KILN" bench --from "$LOG/kiln_attn_tc.jsonl" --compare "$LOG/torch_attn.jsonl" --plot "$LOG/tc"
  step compare_tc2 20 "$KILN" bench --from "$LOG/kiln_attn_tc2.jsonl" --compare "$LOG/torch_attn.jsonl" --plot "$LOG/tc2"
  step compare_wg 20 "$KILN" bench --from "$LOG/kiln_attn_wg.jsonl" --compare "$LOG/torch_attn.jsonl" --plot "$LOG/wg"
  step compare_wgtma 20 "$KILN" bench --from "$LOG/kiln_attn_wgtma.jsonl" --compare "$LOG/torch_attn.jsonl" --plot "$LOG/wgtma"
  # issue 6's memory-bound target on 268 MB tensors: GELU / LayerNorm / softmax, forward and backward, the
  # block and the warp-per-row kernels (kiln's default where they apply) checked against PyTorch, then timed
  # beside PyTorch eager and the copy bandwidth of the same run (scripts/ comes with the working tree)
  step memory_bound 90 python3 "$HERE/../scripts/gpu_memory_bound.py" --out "$LOG/memory_bound"
}

# The second half (~6 min): issue 6's training steps beside PyTorch, then the sanitizers on tc2 / wg.
stage_issue6_train() {
  step kiln_train_steps 120 "$KILN" bench --device cuda --json --op train_step --train-steps 5 --out "$LOG/kiln_train.jsonl"
  step torch_train_steps 150 python3 "$WORK/torch_bench.py" --device cuda --json --train-iters 5 --op train_step_gpt,train_step_bert --out "$LOG/torch_train.jsonl"
  step torch_train_steps_compiled 240 python3 "$WORK/torch_bench.py" --device cuda --json --train-iters 5 --compile --op train_step_gpt,train_step_bert --out "$LOG/torch_train_compiled.jsonl"
  step compare_train 20 "$KILN" bench --from "$LOG/kiln_train.jsonl" --compare "$LOG/torch_train_compiled.jsonl"
  local cs; cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  step racecheck_tc2 150 "$cs" --tool racecheck --error-exitcode 99 "$T/gpu_ops" --test-threads=1 attention_tc2
  step memcheck_wg 90 "$cs" --tool memcheck --error-exitcode 99 "$T/gpu_ops" --test-threads=1 attention_wgmma
  step racecheck_wg 120 "$cs" --tool racecheck --error-exitcode 99 "$T/gpu_ops" --test-threads=1 attention_wgmma
  # the same training steps with the wgmma attention (last: the least essential step of the stage)
  step kiln_train_steps_wg 100 "$KILN" bench --device cuda --json --op train_step --train-steps 5 --attn-kernel wg --out "$LOG/kiln_train_wg.jsonl"
}

case "$STAGE_NAME" in
  tests) stage_tests ;;
  attn) stage_attn ;;
  issue6) stage_issue6 ;;
  issue6_train) stage_issue6_train ;;
  short) stage_short ;;
  bench) stage_bench ;;
  cli) stage_cli ;;
  sanitize) stage_sanitize ;;
  all) stage_tests; stage_cli; stage_sanitize ;;
  *) echo "usage: $0 [tests|cli|sanitize|bench|short|attn|issue6|issue6_train|all]" >&2; exit 2 ;;
esac
echo "--- $STAGE_NAME summary (logs in $LOG)"
cat "$SUMMARY"
# the device tool returns a few loose files best: one archive of this stage's logs as well
tar -czf "$OUT/gpu-logs-$STAGE_NAME.tgz" -C "$OUT/gpu-logs" "$STAGE_NAME" 2>/dev/null || true
! grep -q '^FAIL' "$SUMMARY"
