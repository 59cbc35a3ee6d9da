#!/usr/bin/env python3
"""Fine-tuning throughput on the CPU, kiln vs PyTorch + transformers, same model, data and batch, in
one run (issue 22's performance row). A BERT body of the given size is made by `kiln train` from a
config transformers writes (so both engines start from the same weights and tokenizer); then
`kiln finetune --task seq-cls` runs S steps and a plain PyTorch loop runs S steps of
`AutoModelForSequenceClassification` + `torch.optim.AdamW` on the same pre-tokenized examples
(padded to each batch's longest, dropout on, as kiln's loop), alternating engines for --rounds.
Reports median step time of each (after --warmup steps) and kiln's speed-up.

    python3 scripts/finetune_side_by_side.py --kiln target/release/kiln [--threads 2 --layers 4 --hidden 256]

Needs torch and transformers."""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

WORDS = ("the a of to and in is was for on with as by at from his her they we you it that this but not "
         "good bad great poor fine awful lovely dull bright dark quick slow happy sad warm cold").split()


def gen(rng, n, lo, hi):
    rows = []
    for _ in range(n):
        w = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
        rows.append({"text": " ".join(w), "label": "pos" if w.count("good") + w.count("great") >= w.count("bad") + w.count("poor") else "neg"})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", help="work directory (default: a temporary one)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = a.out or tempfile.mkdtemp(prefix="kiln-ft-sbs-")
    os.makedirs(work, exist_ok=True)
    rng = random.Random(0)
    # the words repeat, so the rows are ~seq tokens long after WordPiece
    train = gen(rng, a.batch * (a.steps + 2), a.seq // 2, a.seq - 8)
    data = os.path.join(work, "train.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in train)
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w") as f:
        f.writelines(r["text"] + "\n" for r in gen(rng, 4000, 8, 64))
    cfg_dir, body = os.path.join(work, "config"), os.path.join(work, "body")
    BertConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=max(1, a.hidden // 64),
               intermediate_size=4 * a.hidden, max_position_embeddings=max(512, a.seq)).save_pretrained(cfg_dir)
    if not os.path.exists(os.path.join(body, "model.safetensors")):
        subprocess.run([a.kiln, "train", "--model", cfg_dir, "--data", corpus, "--steps", "1", "--batch", "2", "--seq", "32",
                        "--eval-every", "0", "--out", body, "--overwrite"], check=True, capture_output=True)
    tok = AutoTokenizer.from_pretrained(body)
    enc = [tok(r["text"], truncation=True, max_length=a.seq)["input_ids"] for r in train]
    labels = [int(r["label"] == "pos") for r in train]
    mean_len = statistics.mean(len(e) for e in enc)

    def kiln_round():
        out = os.path.join(work, "kiln-out")
        p = subprocess.run([a.kiln, "finetune", "--model", body, "--task", "seq-cls", "--data", data, "--eval", data, "--out", out, "--overwrite",
                            "--steps", str(a.steps), "--batch", str(a.batch), "--seq", str(a.seq), "--lr", "5e-5", "--eval-every", "0", "--json"],
                           capture_output=True, text=True, env=dict(os.environ, RAYON_NUM_THREADS=str(a.threads)))
        if p.returncode:
            sys.exit(p.stderr)
        ms = [json.loads(l)["step_ms"] for l in p.stdout.splitlines() if l.startswith("{") and "step_ms" in l]
        return ms[a.warmup:]

    def torch_round():
        model = AutoModelForSequenceClassification.from_pretrained(body, num_labels=2).train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
        ms = []
        for s in range(a.steps):
            idx = list(range(s * a.batch, (s + 1) * a.batch))
            batch = tok.pad({"input_ids": [enc[i] for i in idx]}, padding="longest", return_tensors="pt")
            y = torch.tensor([labels[i] for i in idx])
            t0 = time.perf_counter()
            loss = model(**batch, labels=y).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            ms.append((time.perf_counter() - t0) * 1e3)
        return ms[a.warmup:]

    k_all, t_all = [], []
    for _ in range(a.rounds):
        k_all += kiln_round()
        t_all += torch_round()
    k, t = statistics.median(k_all), statistics.median(t_all)
    vocab = json.load(open(os.path.join(body, "config.json")))["vocab_size"]  # the tokenizer kiln trained
    print(json.dumps({"model": f"BERT {a.layers}x{a.hidden}, vocab {vocab}", "batch": a.batch, "mean_tokens_per_row": round(mean_len, 1),
                      "threads": a.threads, "torch": torch.__version__, "kiln_step_ms": round(k, 1), "torch_step_ms": round(t, 1),
                      "kiln_speedup": round(t / k, 3), "kiln_range": [round(min(k_all), 1), round(max(k_all), 1)],
                      "torch_range": [round(min(t_all), 1), round(max(t_all), 1)], "load1": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
