#!/usr/bin/env python3
"""Checks that the directory `kiln train --objective electra` writes is transformers'
`ElectraForPreTraining`: it loads with `from_pretrained(dir)` with no missing or unexpected keys,
and its discriminator logits on a batch match `kiln forward`'s.

Needs PyTorch and transformers (not in CI). Example (a 20-step run on tinyshakespeare):

  cargo build --release
  target/release/kiln train --model electra-tiny --objective electra \\
      --data ../shared/data/tinyshakespeare.txt --steps 20 --batch 8 --seq 32 --out /tmp/electra-run
  python scripts/electra_hf_check.py /tmp/electra-run --kiln target/release/kiln

Exits non-zero when a key is missing or unexpected or the largest logit difference exceeds --tol.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import ElectraForPreTraining


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", help="the output directory of kiln train --objective electra")
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    model, info = ElectraForPreTraining.from_pretrained(a.run_dir, output_loading_info=True)
    model.eval()
    bad = {k: v for k, v in info.items() if v}
    print(f"from_pretrained({a.run_dir}): loading info {info}")
    if bad:
        sys.exit(f"FAIL: keys not matched: {bad}")

    cfg = model.config
    g = torch.Generator().manual_seed(a.seed)
    b, t = 3, min(24, cfg.max_position_embeddings)
    ids = torch.randint(5, cfg.vocab_size, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, t - 5:] = 0  # one padded row
    ids[1, t - 5:] = cfg.pad_token_id or 0
    types = torch.zeros(b, t, dtype=torch.long)
    types[2, t // 2:] = 1
    with torch.no_grad():
        hf = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits

    with tempfile.TemporaryDirectory() as d:
        batch = os.path.join(d, "batch.json")
        out = os.path.join(d, "out.safetensors")
        with open(batch, "w") as f:
            json.dump({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "token_type_ids": types.tolist()}, f)
        subprocess.run([a.kiln, "forward", "--model", a.run_dir, "--batch", batch, "--out", out], check=True)
        kl = load_file(out)["logits"]

    diff = (hf - kl).abs()
    real = mask.bool()
    print(f"logits {tuple(hf.shape)}: max |hf - kiln| {diff.max().item():.3e} (real tokens {diff[real].max().item():.3e}); "
          f"hf logit range [{hf.min().item():.3f}, {hf.max().item():.3f}]")
    if diff.max().item() > a.tol:
        sys.exit(f"FAIL: logits differ by more than {a.tol}")
    print("OK")


if __name__ == "__main__":
    main()
