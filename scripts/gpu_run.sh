#!/usr/bin/env bash
# Builds, HERE (x86-64 Linux with Rust; no GPU needed), everything the GPU machine runs, and packs
# it into gpu-carry/ (git-ignored): gpu_remote.sh + payload.tar.xz (stripped release binaries:
# the kiln CLI and the test executables gpu_ops, hf_parity, kernels_compile, row_ops and kiln-tensor's unit
# tests; tests/fixtures; BUILD_INFO). The GPU machine has no Rust toolchain: it only runs these.
# Usage: bash scripts/gpu_run.sh     then see docs/GPU-LOG.md, "How to run".
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=gpu-carry
LIMIT=$((64 * 1024 * 1024))
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/tests"

# Release profile (Cargo.toml: debug = false); the copies are stripped below.
cargo build --release --bin kiln
json=$STAGE/build.json
cargo test --release --no-run --message-format=json -p kiln --test gpu_ops --test hf_parity --test kernels_compile --test row_ops >"$json"
cargo test --release --no-run --message-format=json -p kiln-tensor --lib >>"$json"
python3 - "$json" "$STAGE/tests" <<'PY'
import json, shutil, sys, os
src, dst = sys.argv[1], sys.argv[2]
seen = {}
for line in open(src):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable") if m.get("reason") == "compiler-artifact" else None
    if not exe or not m.get("profile", {}).get("test"):
        continue
    t = m["target"]
    name = "kiln_tensor_lib" if t["kind"] == ["lib"] or "lib" in t["kind"] else t["name"]
    seen[name] = exe
for name, exe in sorted(seen.items()):
    shutil.copy(exe, os.path.join(dst, name))
    print(f"test binary {name} <- {exe}")
want = {"gpu_ops", "hf_parity", "kernels_compile", "row_ops", "kiln_tensor_lib"}
missing = want - set(seen)
if missing:
    sys.exit(f"missing test binaries: {sorted(missing)}")
PY
cp target/release/kiln "$STAGE/bin/kiln"
# the row-wise ops kiln declares, for torch_bench.py --row-ops (PyTorch rows of ops its table lacks, e.g. rms_norm)
target/release/kiln bench --list >"$STAGE/row_ops.jsonl"
strip --strip-all "$STAGE"/bin/* "$STAGE"/tests/*
cp -r tests/fixtures "$STAGE/fixtures"
cp scripts/compare_safetensors.py "$STAGE/compare_safetensors.py"
cp scripts/torch_bench.py "$STAGE/torch_bench.py"
{
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(rustc --version)"
  echo "max GLIBC symbol version needed: $(objdump -T "$STAGE/bin/kiln" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -1 || echo '?')"
} >"$STAGE/BUILD_INFO"
rm -f "$json"

rm -rf "$CARRY"
mkdir -p "$CARRY"
tar -C "$STAGE" -cJf "$CARRY/payload.tar.xz" bin tests fixtures compare_safetensors.py torch_bench.py row_ops.jsonl BUILD_INFO
cp scripts/gpu_remote.sh "$CARRY/gpu_remote.sh"
total=$(du -sb "$CARRY" | cut -f1)
cat "$STAGE/BUILD_INFO"
ls -l "$STAGE/bin" "$STAGE/tests" | awk 'NF > 5 {print $5, $NF}'
echo "gpu-carry: $total bytes ($((total / 1024 / 1024)) MiB) of at most $LIMIT"
if [ "$total" -ge "$LIMIT" ]; then
  echo "gpu-carry is over the 64 MiB carry limit" >&2
  exit 1
fi
echo "next: device tool run with carry=[\"gpu-carry\"] and command 'bash gpu-carry/gpu_remote.sh issue6', then 'issue6_train' (docs/GPU-LOG.md: Ready for the next GPU session)"
