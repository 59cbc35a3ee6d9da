#!/usr/bin/env python3
"""Checks that a directory `kiln finetune` wrote (OUT/best) is what transformers builds from its
`architectures`: `from_pretrained(dir)` with no missing or unexpected keys, and the same logits as
`kiln forward` on a random batch (with padding). Multiple-choice models get `[batch, choices, seq]`;
a GPT double-heads model gets `mc_token_ids` at each row's last real token (the extract token);
GPT models get no token types; `AutoTokenizer` must give tokenizer.json's ids and no id past the
embedding; a GPT sequence classifier is also checked in its similarity form
(kiln's logits on both orders = the sum of transformers' logits on each). For a GPT output it also checks that the tokenizer knows the three
transform tokens at the config's last ids and that the weights load as `GPT2LMHeadModel` /
`OpenAIGPTLMHeadModel` (the body and the resized embedding; only the task head left over).

Needs PyTorch and transformers (not in CI). Example:

  target/release/kiln finetune --model GPT_DIR --task multiple-choice --data train.jsonl --eval dev.jsonl --out /tmp/mc
  python scripts/finetune_hf_check.py /tmp/mc/best --kiln target/release/kiln

Exits non-zero when a key is missing or unexpected or the largest logit difference exceeds --tol.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file


def kiln_forward(kiln, model_dir, batch):
    """`kiln forward` on `batch` (name -> integer tensor): its outputs by name."""
    with tempfile.TemporaryDirectory() as d:
        path, out = os.path.join(d, "batch.json"), os.path.join(d, "out.safetensors")
        with open(path, "w") as f:
            json.dump({k: v.tolist() for k, v in batch.items()}, f)
        subprocess.run([kiln, "forward", "--model", model_dir, "--batch", path, "--out", out], check=True)
        return load_file(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", help="a kiln finetune output (OUT/best)")
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    cfg = json.load(open(os.path.join(a.model_dir, "config.json")))
    arch = cfg["architectures"][0]
    cls = getattr(transformers, arch)
    model, info = cls.from_pretrained(a.model_dir, output_loading_info=True)
    model.eval()
    bad = {k: v for k, v in info.items() if v}
    print(f"{arch}.from_pretrained({a.model_dir}): loading info {info}")
    if bad:
        sys.exit(f"FAIL: keys not matched: {bad}")
    gpt = cfg["model_type"] in ("gpt2", "openai-gpt")
    choices = "MultipleChoice" in arch or "DoubleHeads" in arch
    pad = cfg.get("pad_token_id") or 0

    g = torch.Generator().manual_seed(a.seed)
    b, c, t = 3, 4, 16
    shape = (b, c, t) if choices else (b, t)
    ids = torch.randint(5, cfg["vocab_size"], shape, generator=g)
    ids[ids == pad] = pad + 1
    mask = torch.ones(shape, dtype=torch.long)
    mask[1, ..., t - 5:] = 0  # one padded example
    ids[mask == 0] = pad
    batch = {"input_ids": ids, "attention_mask": mask}
    if not gpt and "token_type_ids" in model.forward.__code__.co_varnames:
        batch["token_type_ids"] = torch.zeros(shape, dtype=torch.long)
    if "DoubleHeads" in arch:
        batch["mc_token_ids"] = mask.sum(-1) - 1
    hf_batch = dict(batch)
    if cfg["model_type"] == "openai-gpt" and choices:
        # transformers' OpenAIGPTModel broadcasts a [batch, choices, seq] mask wrongly: give it the
        # rows' mask (the same masking)
        hf_batch["attention_mask"] = mask.view(-1, t)
    with torch.no_grad():
        o = model(**hf_batch)
    names = ["mc_logits"] if "DoubleHeads" in arch else ["start_logits", "end_logits"] if "QuestionAnswering" in arch else ["logits"]

    kiln_out = kiln_forward(a.kiln, a.model_dir, batch)
    for name in names:
        hf, kl = getattr(o, name), kiln_out[name]
        diff = (hf - kl).abs().max().item()
        print(f"{name} {tuple(hf.shape)}: max |hf - kiln| {diff:.3e}; hf range [{hf.min().item():.3f}, {hf.max().item():.3f}]")
        if diff > a.tol:
            sys.exit(f"FAIL: {name} differ by more than {a.tol}")

    if gpt and not choices:
        # --pair-mode similarity: kiln's logits on [batch, 2, seq] (both orders) are the sum of
        # transformers' logits on the two rows
        ids2, mask2 = torch.stack([batch["input_ids"], batch["input_ids"].flip(0)], 1), torch.stack([mask, mask.flip(0)], 1)
        with torch.no_grad():
            rows = model(input_ids=ids2.view(-1, t), attention_mask=mask2.view(-1, t)).logits
        want = rows.view(b, 2, -1).sum(1)
        kl = kiln_forward(a.kiln, a.model_dir, {"input_ids": ids2, "attention_mask": mask2})["logits"]
        diff = (want - kl).abs().max().item()
        print(f"similarity logits {tuple(kl.shape)} = the sum of the two rows' logits: max diff {diff:.3e}")
        if diff > a.tol:
            sys.exit(f"FAIL: similarity logits differ by more than {a.tol}")

    # the tokenizer as transformers builds it (AutoTokenizer: tokenizer_config.json names
    # PreTrainedTokenizerFast) gives the ids kiln's tokenizer.json gives, none past the embedding
    tok = transformers.AutoTokenizer.from_pretrained(a.model_dir)
    from tokenizers import Tokenizer
    raw = Tokenizer.from_file(os.path.join(a.model_dir, "tokenizer.json"))
    text = "the quick brown fox, twice: the quick brown fox"
    mine, theirs = raw.encode(text).ids, tok(text)["input_ids"]
    print(f"tokenizer: {type(tok).__name__}, {len(tok)} tokens, config vocab_size {cfg['vocab_size']}")
    if mine != theirs or len(tok) > cfg["vocab_size"]:
        sys.exit(f"FAIL: AutoTokenizer gives {theirs} ({len(tok)} tokens), tokenizer.json gives {mine} (vocab_size {cfg['vocab_size']})")

    if gpt:
        want = {s: cfg["vocab_size"] - 3 + i for i, s in enumerate(["_start_", "_delimiter_", "_classify_"])}
        got = {s: tok.convert_tokens_to_ids(s) for s in want}
        print(f"tokenizer: {got}")
        if got != want:
            sys.exit(f"FAIL: the transform tokens are {got}, expected {want}")
        lm_cls = getattr(transformers, "GPT2LMHeadModel" if cfg["model_type"] == "gpt2" else "OpenAIGPTLMHeadModel")
        lm, info = lm_cls.from_pretrained(a.model_dir, output_loading_info=True)
        print(f"{lm_cls.__name__}.from_pretrained: loading info {info}")
        if info["missing_keys"] or lm.get_input_embeddings().weight.shape[0] != cfg["vocab_size"]:
            sys.exit("FAIL: the LM does not load with the resized vocabulary")
    print("OK")


if __name__ == "__main__":
    main()
