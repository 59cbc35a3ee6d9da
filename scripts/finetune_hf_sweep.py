#!/usr/bin/env python3
"""Every encoder family × task head through `kiln finetune` and into transformers: for each
(family, task) it trains a tiny body (`kiln train --model <family>-tiny`, which also trains the
tokenizer), fine-tunes it on generated data and runs scripts/finetune_hf_check.py on OUT/best (the
architecture's from_pretrained with no missing or unexpected keys, the same logits as `kiln forward`,
AutoTokenizer giving tokenizer.json's ids). Prints one line per pair and exits non-zero when one fails.

    python3 scripts/finetune_hf_sweep.py --kiln target/release/kiln [--families bert,roberta] [--tasks qa]

Needs torch, transformers, tokenizers, safetensors (not in CI)."""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def gen_data(task, rng, n):
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 9))]
        if task == "seq-cls":
            rows.append({"text": " ".join(words), "label": "pos" if words[0] < "lima" else "neg"})
        elif task == "pair-cls":
            rows.append({"text": " ".join(words), "text_pair": " ".join(words[::-1]), "label": words[0] < words[-1]})
        elif task == "token-cls":
            rows.append({"tokens": words, "tags": ["B-X" if w < "echo" else "O" for w in words]})
        elif task == "multiple-choice":
            right = rng.randrange(4)
            rows.append({"question": " ".join(words), "choices": [words[0] if i == right else rng.choice(WORDS[-4:]) for i in range(4)], "label": right})
        else:
            noun, code = rng.choice(WORDS), rng.choice(WORDS)
            context = " ".join(words) + f" the code of the {noun} is {code} ."
            rows.append({"question": f"what is the code of the {noun} ?", "context": context,
                         "answers": {"text": [code], "answer_start": [context.index(f" is {code}") + 4]}})
    return rows


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--families", default="bert,roberta,albert,electra")
    ap.add_argument("--tasks", default="seq-cls,pair-cls,token-cls,qa,multiple-choice")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", help="work directory (default: a temporary one)")
    a = ap.parse_args()
    work = a.out or tempfile.mkdtemp(prefix="kiln-ft-hf-")
    check = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune_hf_check.py")
    failed = 0
    for fam in a.families.split(","):
        body = os.path.join(work, fam, "body")
        if not os.path.exists(body):
            rc, log = run([a.kiln, "train", "--model", f"{fam}-tiny", "--steps", "2", "--batch", "2", "--seq", "32", "--vocab", "400",
                           "--sample-tokens", "0", "--eval-every", "0", "--out", body])
            if rc:
                sys.exit(f"kiln train {fam}-tiny failed:\n{log}")
        for task in a.tasks.split(","):
            rng = random.Random(f"{fam}-{task}")
            d = os.path.join(work, fam, task)
            os.makedirs(d, exist_ok=True)
            for name, n in (("train", 64), ("dev", 16)):
                with open(os.path.join(d, f"{name}.jsonl"), "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in gen_data(task, rng, n))
            out = os.path.join(d, "out")
            rc, log = run([a.kiln, "finetune", "--model", body, "--task", task, "--data", os.path.join(d, "train.jsonl"),
                           "--eval", os.path.join(d, "dev.jsonl"), "--out", out, "--overwrite", "--steps", str(a.steps),
                           "--batch", "8", "--seq", "48", "--lr", "2e-3"])
            if rc == 0:
                rc, log = run([sys.executable, check, os.path.join(out, "best"), "--kiln", a.kiln])
            lines = [l for l in log.splitlines() if "max |hf - kiln|" in l or "FAIL" in l or "Error" in l] or log.splitlines()[-1:]
            print(f"{fam:8s} {task:16s} {'ok' if rc == 0 else 'FAIL'}  {' | '.join(l.strip() for l in lines)}", flush=True)
            failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
