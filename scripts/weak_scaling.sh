#!/usr/bin/env bash
# Weak scaling of data-parallel training on the CPU (docs/DISTRIBUTED.md): 1 rank x 1 thread
# against 2 ranks x 1 thread, each rank training batch 8 x 128 per update on the GPT config of the
# CPU training benchmark (4 layers, d 256, 4 heads, vocab 8192). Prints the tokens/s of both and the
# ratio (ideal: 2.0). Run on a quiet machine with at least 2 free cores:
#   cargo build --release && scripts/weak_scaling.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
KILN="${KILN:-${CARGO_TARGET_DIR:-target}/release/kiln}"
STEPS="${1:-12}"
DATA="${DATA:-../shared/data/tinyshakespeare.txt}"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/model"
cat > "$W/model/config.json" <<JSON
{"model_type": "gpt2", "n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 8192, "n_positions": 128,
 "bos_token_id": 0, "eos_token_id": 0}
JSON
# the tokenizer once (8192 tokens), so that the timed runs do not train it
RAYON_NUM_THREADS=2 "$KILN" train --model "$W/model" --data "$DATA" --vocab 8192 --steps 1 --batch 1 --seq 16 \
  --sample-tokens 0 --eval-every 0 --json --out "$W/tok" >/dev/null
common=(train --model "$W/model" --tokenizer "$W/tok/tokenizer.json" --data "$DATA" --steps "$STEPS" --batch 8 --seq 128
  --schedule constant --warmup 0 --eval-every 1000000 --eval-batches 1 --sample-tokens 0 --json)
# mean tokens/s over the updates after the first two (warm-up)
rate() { python3 -c 'import json,sys
r=[json.loads(l)["tokens_per_s"] for l in sys.stdin if "\"tokens_per_s\"" in l][2:]
print(sum(r)/len(r))'; }
one=$(RAYON_NUM_THREADS=1 "$KILN" "${common[@]}" --out "$W/one" | rate)
two=$(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RAYON_NUM_THREADS=1 \
  mpirun --oversubscribe -np 2 -x RAYON_NUM_THREADS "$KILN" "${common[@]}" --out "$W/two" | rate)
python3 -c "print(f'1 rank x 1 thread: {$one:.0f} tok/s; 2 ranks x 1 thread: {$two:.0f} tok/s; ratio {$two/$one:.2f}x (ideal 2.0x)')"
