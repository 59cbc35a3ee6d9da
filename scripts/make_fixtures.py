#!/usr/bin/env python3
"""Build the HF-parity fixtures under tests/fixtures/ (see tests/fixtures/README.md).

Small random BERT / GPT-2 models are built from configs with transformers (no hub access), their
parameters perturbed with seeded noise (so biases and LayerNorm weights are not 0 / 1), and for each
fixture we write:

    config.json            HF config (config.save_pretrained)
    model.safetensors      HF tensor names, f32 (model.save_pretrained(safe_serialization=True))
    batch.json             padded batch (+ labels)
    expected.safetensors   outputs, loss, grad.<param>, after_adamw.<param> (all f32)
    meta.json              class, conventions, AdamW hyper-parameters, versions, tensor names in the file

Family fixtures (FAMILY_FIXTURES: RoBERTa, ALBERT, DistilBERT, ELECTRA, GPT-1, more BERT / GPT-2 heads) have the
same files without after_adamw; bare models get a fixed weighted-sum loss so that gradients are checked.
tokenizers/<family>/ holds a small tokenizer.json per family, built by transformers' own tokenizer class from a
deterministic tiny vocabulary, and expected.json (ids / token_type_ids / attention_mask for a set of texts).

Regenerate (from the repository root):
    .venv-torch/bin/python scripts/make_fixtures.py [--out tests/fixtures] [--only NAME ...]
    (NAME: a fixture folder, or tokenizers/<family>)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
import zlib

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AlbertConfig,
    AlbertForMaskedLM,
    AlbertForPreTraining,
    AlbertForQuestionAnswering,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
    AlbertModel,
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
    ElectraConfig,
    ElectraForMaskedLM,
    ElectraForPreTraining,
    ElectraForQuestionAnswering,
    ElectraForSequenceClassification,
    ElectraForTokenClassification,
    ElectraModel,
    GPT2Config,
    GPT2DoubleHeadsModel,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    GPT2Model,
    OpenAIGPTConfig,
    OpenAIGPTDoubleHeadsModel,
    OpenAIGPTLMHeadModel,
    OpenAIGPTModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)

transformers.logging.set_verbosity_error()
try:  # hide the "Writing model shards" progress bar of transformers 5
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
VOCAB = 100
SEQ = 12
LENGTHS = [12, 9, 5]  # real tokens per row; the rest is padding at the end
PERTURB_STD = 0.02  # seeded noise added to every parameter after HF init

BERT_KW = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    pad_token_id=0,
)
GPT2_KW = dict(
    vocab_size=VOCAB,
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_positions=64,
    activation_function="gelu_new",
    layer_norm_epsilon=1e-5,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    summary_first_dropout=0.0,
    bos_token_id=VOCAB - 1,
    eos_token_id=VOCAB - 1,
    use_cache=False,
)

# name -> (class, extra config kwargs, task)
FIXTURES = {
    "bert_masked_lm": (BertForMaskedLM, {}, "mlm"),
    "bert_pretraining": (BertForPreTraining, {}, "pretraining"),
    "bert_seq_cls": (BertForSequenceClassification, {"num_labels": 3}, "seq_cls"),
    "bert_token_cls": (BertForTokenClassification, {"num_labels": 5}, "token_cls"),
    "bert_qa": (BertForQuestionAnswering, {}, "qa"),
    "bert_base_model": (BertModel, {}, "base"),
    "gpt2_lm": (GPT2LMHeadModel, {}, "clm"),
}
# Extra checkpoint-quirk fixtures (same weights/batch as their source, rewritten file, forward outputs only).
LEGACY = {
    "bert_legacy_names": "bert_masked_lm",
    "gpt2_legacy_names": "gpt2_lm",
}
# Greedy generation with transformers' key/value cache, from another fixture's weights (not copied).
GENERATE = {"gpt2_generate": "gpt2_lm"}
GENERATE_PROMPTS = [[5, 17, 42, 8, 91], [3]]
GENERATE_NEW = 40  # + the prompt stays within n_positions = 64


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


# ---------------------------------------------------------------------------------------------- batch
def make_batch(task: str, gen: torch.Generator, num_labels: int | None) -> dict:
    b = len(LENGTHS)
    ids = torch.randint(1, VOCAB - 1, (b, SEQ), generator=gen)  # real tokens in [1, VOCAB-2]
    mask = torch.zeros(b, SEQ, dtype=torch.long)
    for r, n in enumerate(LENGTHS):
        mask[r, :n] = 1
    ids = ids * mask  # pad id 0 at the end of each row
    batch = {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}
    if task != "clm":
        tt = torch.zeros(b, SEQ, dtype=torch.long)
        for r, n in enumerate(LENGTHS):
            tt[r, n // 2 : n] = 1  # segment B = second half of the real tokens
        batch["token_type_ids"] = tt.tolist()

    def token_labels(num_classes: int, frac: float) -> list:
        lab = torch.full((b, SEQ), -100, dtype=torch.long)
        for r, n in enumerate(LENGTHS):
            pick = torch.rand(n, generator=gen) < frac
            pick[torch.randint(0, n, (2,), generator=gen)] = True  # at least 1-2 labelled per row
            vals = torch.randint(0, num_classes, (n,), generator=gen)
            lab[r, :n] = torch.where(pick, vals, torch.full_like(vals, -100))
        return lab.tolist()

    if task in ("mlm", "pretraining"):
        batch["labels"] = token_labels(VOCAB, 0.3)
    if task == "pretraining":
        batch["next_sentence_label"] = torch.randint(0, 2, (b,), generator=gen).tolist()
    if task == "seq_cls":
        batch["labels"] = torch.randint(0, num_labels, (b,), generator=gen).tolist()
    if task == "token_cls":
        lab = torch.tensor(token_labels(num_labels, 0.8))
        lab[:, 0] = -100  # [CLS] position ignored, as HF tokenisers do
        batch["labels"] = lab.tolist()
    if task == "qa":
        starts, ends = [], []
        for n in LENGTHS:
            s = int(torch.randint(1, n, (1,), generator=gen))
            e = int(torch.randint(s, n, (1,), generator=gen))
            starts.append(s)
            ends.append(e)
        batch["start_positions"], batch["end_positions"] = starts, ends
    if task == "clm":
        batch["labels"] = [
            [t if m else -100 for t, m in zip(row, mrow)] for row, mrow in zip(batch["input_ids"], batch["attention_mask"])
        ]
    return batch


def to_tensors(batch: dict) -> dict:
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------- model
def build(cls, extra: dict, seed: int):
    torch.manual_seed(seed)
    if cls is GPT2LMHeadModel:
        config = GPT2Config(**GPT2_KW, **extra)
    else:
        config = BertConfig(**BERT_KW, **extra)
    config._attn_implementation = "eager"  # plain softmax(QK^T/sqrt(d) + mask) V reference path
    model = cls(config).to(torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in model.named_parameters():  # deduplicated: tied weights are perturbed once
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * PERTURB_STD)
    model.eval()  # and every dropout probability is 0 in the config
    return model


def hf_save(model, out_dir: str) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(tmp, f), os.path.join(out_dir, f))
    with safe_open(os.path.join(out_dir, "model.safetensors"), "pt") as f:
        names = sorted(f.keys())
        for n in names:
            assert f.get_tensor(n).dtype == torch.float32, n
    return names


def forward(model, inputs: dict, task: str):
    """Run the model; returns (dict of output tensors, loss tensor or None)."""
    captured = {}
    base = model if task == "base" else model.base_model

    def hook(_mod, _inp, out):
        captured["last_hidden_state"] = out[0] if isinstance(out, tuple) else out.last_hidden_state
        if getattr(out, "pooler_output", None) is not None:
            captured["pooler_output"] = out.pooler_output

    h = base.register_forward_hook(hook)
    kw = dict(inputs)
    if task == "clm":
        kw["use_cache"] = False
    out = model(**kw, output_hidden_states=True, return_dict=True)
    h.remove()

    res = {"last_hidden_state": captured["last_hidden_state"]}
    if task != "base":  # HF's hidden_states[-1] must be the base model's last_hidden_state
        assert torch.equal(out.hidden_states[-1], res["last_hidden_state"]), "hidden_states[-1] mismatch"
    if "pooler_output" in captured:
        res["pooler_output"] = captured["pooler_output"]
    if task == "pretraining":
        res["logits"] = out.prediction_logits
        res["seq_relationship_logits"] = out.seq_relationship_logits
    elif task == "qa":
        res["start_logits"] = out.start_logits
        res["end_logits"] = out.end_logits
    elif task != "base":
        res["logits"] = out.logits
    loss = getattr(out, "loss", None)
    if task == "pretraining":  # components, recomputed the way HF does it
        ce = torch.nn.CrossEntropyLoss()
        lab = inputs["labels"]
        res["mlm_loss"] = ce(out.prediction_logits.reshape(-1, VOCAB), lab.reshape(-1)).reshape(1)
        res["nsp_loss"] = ce(out.seq_relationship_logits.reshape(-1, 2), inputs["next_sentence_label"].reshape(-1)).reshape(1)
        assert torch.allclose(res["mlm_loss"] + res["nsp_loss"], loss.reshape(1), rtol=1e-6, atol=1e-6)
    return res, loss


def expected_for(model, inputs: dict, task: str) -> tuple[dict, dict]:
    res, loss = forward(model, inputs, task)
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in res.items()}
    info = {"outputs": sorted(tensors)}
    if loss is None:
        return tensors, info
    tensors["loss"] = loss.detach().reshape(1).to(torch.float32).clone()
    model.zero_grad(set_to_none=True)
    loss.backward()
    params = list(model.named_parameters())  # deduplicated (tied weights appear once)
    no_grad = []
    for n, p in params:
        if p.grad is None:
            no_grad.append(n)
            tensors["grad." + n] = torch.zeros_like(p.detach())
        else:
            tensors["grad." + n] = p.grad.detach().clone()
    opt = torch.optim.AdamW([p for _, p in params], foreach=False, fused=False, amsgrad=False, maximize=False, **ADAMW)
    opt.step()
    for n, p in params:
        tensors["after_adamw." + n] = p.detach().clone()
    info["outputs"] = sorted(k for k in tensors if "." not in k)
    info["parameters"] = [n for n, _ in params]
    info["params_without_grad"] = no_grad
    return tensors, info


# ---------------------------------------------------------------------------------------------- legacy
def legacy_rewrite(src_file: str, dst_file: str, kind: str, cfg: dict) -> list[str]:
    """Rewrite an HF file with old-checkpoint quirks (see README)."""
    out = {}
    with safe_open(src_file, "pt") as f:
        for n in f.keys():
            t = f.get_tensor(n)
            if kind == "bert":
                if n.endswith("LayerNorm.weight"):
                    n = n[: -len("weight")] + "gamma"
                elif n.endswith("LayerNorm.bias"):
                    n = n[: -len("bias")] + "beta"
            else:
                assert n.startswith("transformer."), n
                n = n[len("transformer.") :]
            out[n] = t.contiguous()
    if kind == "bert":
        out["bert.embeddings.position_ids"] = torch.arange(cfg["max_position_embeddings"], dtype=torch.int64).unsqueeze(0)
    else:
        npos = cfg["n_positions"]
        tril = torch.tril(torch.ones(npos, npos, dtype=torch.float32)).view(1, 1, npos, npos)
        for i in range(cfg["n_layer"]):
            out[f"h.{i}.attn.bias"] = tril.clone()
            out[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4, dtype=torch.float32)
    save_file(out, dst_file, metadata={"format": "pt"})
    return sorted(out)


# ---------------------------------------------------------------------------------------------- families
# Fixtures for every architecture of the BERT / GPT family (RoBERTa, ALBERT, DistilBERT, ELECTRA, GPT-1, more
# GPT-2 heads). Same sizes, seeding and file layout as above; expected.safetensors holds outputs, loss and
# grad.<param> (no after_adamw: the optimizer is model-independent and checked by the fixtures above).
ROBERTA_KW = {  # BERT's sizes with RoBERTa's conventions
    **BERT_KW,
    "max_position_embeddings": 64 + 2,  # positions start at pad_token_id + 1 = 2
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
ALBERT_KW = {  # BERT's sizes with ALBERT's factorised embeddings and activation (layers: ALBERT_*)
    **{k: v for k, v in BERT_KW.items() if k != "num_hidden_layers"},
    "embedding_size": 16,
    "hidden_act": "gelu_new",
    "classifier_dropout_prob": 0.0,
    "bos_token_id": 2,
    "eos_token_id": 3,
}
DISTILBERT_KW = dict(
    vocab_size=VOCAB,
    dim=32,
    n_layers=2,
    n_heads=4,
    hidden_dim=64,
    max_position_embeddings=64,
    activation="gelu",
    dropout=0.0,
    attention_dropout=0.0,
    qa_dropout=0.0,
    seq_classif_dropout=0.0,
    pad_token_id=0,
)
ELECTRA_KW = {**BERT_KW, "embedding_size": 16, "summary_last_dropout": 0.0}
OPENAI_GPT_KW = dict(
    vocab_size=VOCAB,
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_positions=64,
    afn="gelu",
    layer_norm_epsilon=1e-5,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    summary_first_dropout=0.0,
)
# family -> config class, config kwargs, padding id, real-token id range [lo, hi), token_type_ids in the batch,
# causal (labels = input_ids, no [CLS]-style position 0)
FAMILIES = {
    "bert": dict(config=BertConfig, kw=BERT_KW, pad=0, ids=(1, VOCAB - 1), token_types=True, causal=False),
    "roberta": dict(config=RobertaConfig, kw=ROBERTA_KW, pad=1, ids=(3, VOCAB), token_types=False, causal=False,
                    bos=0, eos=2),
    "albert": dict(config=AlbertConfig, kw=ALBERT_KW, pad=0, ids=(1, VOCAB - 1), token_types=True, causal=False),
    "distilbert": dict(config=DistilBertConfig, kw=DISTILBERT_KW, pad=0, ids=(1, VOCAB - 1), token_types=False,
                       causal=False),
    "electra": dict(config=ElectraConfig, kw=ELECTRA_KW, pad=0, ids=(1, VOCAB - 1), token_types=True, causal=False),
    "openai_gpt": dict(config=OpenAIGPTConfig, kw=OPENAI_GPT_KW, pad=0, ids=(1, VOCAB - 1), token_types=False,
                       causal=True),
    # n_inner 64 (intermediate 64, as the encoders; gpt2_lm and gpt2_default_config keep n_inner null = 4*32)
    "gpt2": dict(config=GPT2Config, kw={**GPT2_KW, "n_inner": 64}, pad=0, ids=(1, VOCAB - 1), token_types=False,
                 causal=True),
}
ALBERT_4L_2G_1I = dict(num_hidden_layers=4, num_hidden_groups=2, inner_group_num=1)
ALBERT_3L_1G_2I = dict(num_hidden_layers=3, num_hidden_groups=1, inner_group_num=2)
ALBERT_3L_2G_1I = dict(num_hidden_layers=3, num_hidden_groups=2, inner_group_num=1)  # groups [0, 0, 1]
ALBERT_4L_2G_2I = dict(num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2)
# Double-heads batches: C = 2 choices per row, real lengths per (row, choice).
DH_LENGTHS = [[12, 7], [9, 12], [5, 3]]


def F(family, cls, task, extra=None, **opts):
    return dict(family=family, cls=cls, task=task, extra=extra or {}, **opts)


# name -> spec. opts: model_kwargs (passed to cls(config, ...)), default_config (config from the sizes only,
# every other field at transformers' default), no_perturb (parameter names left as HF initialised them).
FAMILY_FIXTURES = {
    "bert_model_no_pooler": F("bert", BertModel, "base", model_kwargs={"add_pooling_layer": False}),
    "roberta_model": F("roberta", RobertaModel, "base"),
    "roberta_masked_lm": F("roberta", RobertaForMaskedLM, "mlm"),
    "roberta_seq_cls": F("roberta", RobertaForSequenceClassification, "seq_cls", {"num_labels": 3}),
    "roberta_token_cls": F("roberta", RobertaForTokenClassification, "token_cls", {"num_labels": 5}),
    "roberta_qa": F("roberta", RobertaForQuestionAnswering, "qa"),
    "roberta_default_config": F("roberta", RobertaForMaskedLM, "mlm", default_config=dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64 + 2)),
    "albert_model": F("albert", AlbertModel, "base", ALBERT_4L_2G_1I),
    "albert_pretraining": F("albert", AlbertForPreTraining, "sop_pretraining", ALBERT_3L_1G_2I),
    "albert_masked_lm": F("albert", AlbertForMaskedLM, "mlm", ALBERT_3L_2G_1I),
    "albert_seq_cls": F("albert", AlbertForSequenceClassification, "seq_cls", {**ALBERT_4L_2G_2I, "num_labels": 3}),
    "albert_token_cls": F("albert", AlbertForTokenClassification, "token_cls", {**ALBERT_4L_2G_1I, "num_labels": 5}),
    "albert_qa": F("albert", AlbertForQuestionAnswering, "qa", ALBERT_3L_2G_1I),
    "distilbert_model": F("distilbert", DistilBertModel, "base"),
    "distilbert_masked_lm": F("distilbert", DistilBertForMaskedLM, "mlm", {"activation": "relu"}),
    "distilbert_seq_cls": F("distilbert", DistilBertForSequenceClassification, "seq_cls", {"num_labels": 3}),
    "distilbert_qa": F("distilbert", DistilBertForQuestionAnswering, "qa"),
    "distilbert_token_cls": F("distilbert", DistilBertForTokenClassification, "token_cls", {"num_labels": 5}),
    "distilbert_sinusoidal_model": F("distilbert", DistilBertModel, "base", {"sinusoidal_pos_embds": True},
                                     no_perturb=["embeddings.position_embeddings.weight"]),
    "electra_model": F("electra", ElectraModel, "base"),
    "electra_pretraining": F("electra", ElectraForPreTraining, "rtd"),
    "electra_masked_lm": F("electra", ElectraForMaskedLM, "mlm"),
    "electra_seq_cls": F("electra", ElectraForSequenceClassification, "seq_cls",
                         {"num_labels": 3, "embedding_size": 32}),  # = hidden_size: no embeddings_project
    "electra_token_cls": F("electra", ElectraForTokenClassification, "token_cls", {"num_labels": 5}),
    "electra_qa": F("electra", ElectraForQuestionAnswering, "qa"),
    "openai_gpt_model": F("openai_gpt", OpenAIGPTModel, "base"),
    "openai_gpt_lm": F("openai_gpt", OpenAIGPTLMHeadModel, "clm"),
    "openai_gpt_double_heads": F("openai_gpt", OpenAIGPTDoubleHeadsModel, "double_heads"),
    "gpt2_model": F("gpt2", GPT2Model, "base"),
    "gpt2_seq_cls": F("gpt2", GPT2ForSequenceClassification, "seq_cls", {"num_labels": 3, "pad_token_id": 0}),
    "gpt2_double_heads": F("gpt2", GPT2DoubleHeadsModel, "double_heads"),
    "gpt2_token_cls": F("gpt2", GPT2ForTokenClassification, "token_cls", {"num_labels": 5, "classifier_dropout": 0.0}),
    "gpt2_token_types": F("gpt2", GPT2LMHeadModel, "clm", token_types=True),
    "gpt2_untied_head": F("gpt2", GPT2LMHeadModel, "clm", {"tie_word_embeddings": False}),
    "gpt2_default_config": F("gpt2", GPT2LMHeadModel, "clm", default_config=dict(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)),
}

LOSS_DEFINITIONS = {
    "base": "bare model, no head: loss = sum over every output t of (t * loss_weight.<t>).sum(), with fixed "
            "N(0, 1) weights stored in expected.safetensors (padded positions included)",
    "mlm": "mean cross-entropy of logits [B*T, V] against labels, -100 ignored",
    "sop_pretraining": "loss = mlm_loss + sop_loss (mean CE over non-(-100) MLM labels + mean CE of sop_logits "
                       "against sentence_order_label)",
    "rtd": "BCEWithLogits(logits[attention_mask == 1], labels[attention_mask == 1].float()), mean",
    "seq_cls": "mean cross-entropy of logits [B, num_labels] against labels [B]",
    "token_cls": "mean cross-entropy of logits [B*T, num_labels] against labels, -100 ignored",
    "qa": "(CE(start_logits, start_positions) + CE(end_logits, end_positions)) / 2",
    "clm": "mean cross-entropy of logits[:, :-1] against labels[:, 1:] (HF shifts inside), -100 ignored",
    "double_heads": "loss = LM loss as HF returns it (mean CE of logits[..., :-1, :] against labels[..., 1:], "
                    "-100 ignored); mc_loss = CE(mc_logits [B, C], mc_labels [B]); the gradients are of "
                    "loss + mc_loss",
}


def make_family_batch(spec: dict, gen: torch.Generator) -> dict:
    fam = FAMILIES[spec["family"]]
    task, nl = spec["task"], spec["extra"].get("num_labels")
    pad, (lo, hi) = fam["pad"], fam["ids"]
    b = len(LENGTHS)

    def rows(lengths):
        ids = torch.randint(lo, hi, (len(lengths), SEQ), generator=gen)
        mask = torch.zeros(len(lengths), SEQ, dtype=torch.long)
        for r, n in enumerate(lengths):
            mask[r, :n] = 1
            if "bos" in fam:  # <s> ... </s> around the real tokens
                ids[r, 0], ids[r, n - 1] = fam["bos"], fam["eos"]
        ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
        return ids, mask

    if task == "double_heads":
        c = len(DH_LENGTHS[0])
        ids, mask = rows([n for row in DH_LENGTHS for n in row])
        batch = {"input_ids": ids.view(b, c, SEQ).tolist(), "attention_mask": mask.view(b, c, SEQ).tolist(),
                 "mc_token_ids": [[n - 1 for n in row] for row in DH_LENGTHS]}
        batch["labels"] = torch.where(mask.bool(), ids, torch.full_like(ids, -100)).view(b, c, SEQ).tolist()
        batch["mc_labels"] = torch.randint(0, c, (b,), generator=gen).tolist()
        return batch

    ids, mask = rows(LENGTHS)
    batch = {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}
    if fam["token_types"] or spec.get("token_types"):
        tt = torch.zeros(b, SEQ, dtype=torch.long)
        for r, n in enumerate(LENGTHS):
            tt[r, n // 2 : n] = 1  # segment B = second half of the real tokens
        batch["token_type_ids"] = tt.tolist()

    def token_labels(num_classes: int, frac: float, first_ignored: bool) -> list:
        lab = torch.full((b, SEQ), -100, dtype=torch.long)
        for r, n in enumerate(LENGTHS):
            pick = torch.rand(n, generator=gen) < frac
            pick[torch.randint(0, n, (2,), generator=gen)] = True  # at least 1-2 labelled per row
            vals = torch.randint(0, num_classes, (n,), generator=gen)
            lab[r, :n] = torch.where(pick, vals, torch.full_like(vals, -100))
        if first_ignored:
            lab[:, 0] = -100  # [CLS] / <s> position ignored, as HF tokenisers do
        return lab.tolist()

    if task in ("mlm", "sop_pretraining"):
        batch["labels"] = token_labels(VOCAB, 0.3, False)
    if task == "sop_pretraining":
        batch["sentence_order_label"] = torch.randint(0, 2, (b,), generator=gen).tolist()
    if task == "rtd":  # 0 = original, 1 = replaced; 0 on padding (ignored through attention_mask anyway)
        lab = (torch.rand(b, SEQ, generator=gen) < 0.3).long()
        lab[torch.arange(b), torch.tensor([n // 2 for n in LENGTHS])] = 1  # at least one replaced per row
        batch["labels"] = (lab * mask).tolist()
    if task == "seq_cls":
        batch["labels"] = torch.randint(0, nl, (b,), generator=gen).tolist()
    if task == "token_cls":
        batch["labels"] = token_labels(nl, 0.8, not fam["causal"])
    if task == "qa":
        starts, ends = [], []
        for n in LENGTHS:
            s = int(torch.randint(1, n, (1,), generator=gen))
            e = int(torch.randint(s, n, (1,), generator=gen))
            starts.append(s)
            ends.append(e)
        batch["start_positions"], batch["end_positions"] = starts, ends
    if task == "clm":
        batch["labels"] = torch.where(mask.bool(), ids, torch.full_like(ids, -100)).tolist()
    return batch


def hf_inputs_for(spec: dict, inputs: dict) -> tuple[dict, str | None]:
    """What is passed to HF's forward (the batch as stored, except where HF needs another shape)."""
    kw = dict(inputs)
    note = None
    if spec["family"] == "openai_gpt" and spec["task"] == "double_heads":
        # OpenAIGPTModel.forward flattens input_ids to [B*C, T] but only unsqueezes a 2-D attention_mask
        # (modeling_openai.py: attention_mask.unsqueeze(1).unsqueeze(2)); a [B, C, T] mask fails to broadcast.
        kw["attention_mask"] = kw["attention_mask"].reshape(-1, SEQ)
        note = "attention_mask is stored [B, C, T]; it was passed to HF reshaped to [B*C, T] (same values)"
    if spec["family"] == "gpt2":
        kw["use_cache"] = False
    return kw, note


def build_family(spec: dict, seed: int):
    fam = FAMILIES[spec["family"]]
    torch.manual_seed(seed)
    if "default_config" in spec:
        config = fam["config"](**spec["default_config"])
    else:
        config = fam["config"](**{**fam["kw"], **spec["extra"]})
    config._attn_implementation = "eager"
    model = spec["cls"](config, **spec.get("model_kwargs", {})).to(torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    skip = set(spec.get("no_perturb", []))
    with torch.no_grad():
        for n, p in model.named_parameters():  # deduplicated: tied weights are perturbed once
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * PERTURB_STD
            if n not in skip:
                p.add_(noise)
    model.eval()
    return model


def forward_family(model, spec: dict, hf_inputs: dict) -> tuple[dict, dict]:
    """Returns (outputs by HF name, losses: 'loss' and where present 'mc_loss')."""
    task = spec["task"]
    captured = {}
    base = model if task == "base" else model.base_model

    def hook(_mod, _inp, out):
        captured["last_hidden_state"] = out[0] if isinstance(out, tuple) else out.last_hidden_state
        if getattr(out, "pooler_output", None) is not None:
            captured["pooler_output"] = out.pooler_output

    h = base.register_forward_hook(hook)
    out = model(**hf_inputs, output_hidden_states=True, return_dict=True)
    h.remove()
    res = {"last_hidden_state": captured["last_hidden_state"]}
    if out.hidden_states is not None:  # HF's hidden_states[-1] must be the base model's last_hidden_state
        last = out.hidden_states[-1]
        assert torch.equal(last.reshape(res["last_hidden_state"].shape), res["last_hidden_state"]), "hidden_states[-1]"
    if "pooler_output" in captured:
        res["pooler_output"] = captured["pooler_output"]
    names = {"base": [], "sop_pretraining": ["prediction_logits", "sop_logits"], "qa": ["start_logits", "end_logits"],
             "double_heads": ["logits", "mc_logits"]}.get(task, ["logits"])
    for n in names:
        res[n] = getattr(out, n)
    losses = {}
    if task == "base":
        return res, losses
    losses["loss"] = out.loss
    if task == "double_heads":
        losses["mc_loss"] = out.mc_loss
    if task == "sop_pretraining":  # components, recomputed the way HF does it
        ce = torch.nn.CrossEntropyLoss()
        res["mlm_loss"] = ce(out.prediction_logits.reshape(-1, VOCAB), hf_inputs["labels"].reshape(-1)).reshape(1)
        res["sop_loss"] = ce(out.sop_logits.reshape(-1, 2), hf_inputs["sentence_order_label"].reshape(-1)).reshape(1)
        assert torch.allclose(res["mlm_loss"] + res["sop_loss"], out.loss.reshape(1), rtol=1e-6, atol=1e-6)
    if task == "rtd":  # BCE over attention_mask == 1 positions, recomputed
        m = hf_inputs["attention_mask"] == 1
        ref = torch.nn.functional.binary_cross_entropy_with_logits(out.logits[m], hf_inputs["labels"][m].float())
        assert torch.allclose(ref, out.loss, rtol=1e-6, atol=1e-7)
    return res, losses


def expected_family(model, spec: dict, hf_inputs: dict, seed: int) -> tuple[dict, dict]:
    res, losses = forward_family(model, spec, hf_inputs)
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in res.items()}
    if spec["task"] == "base":
        gen = torch.Generator().manual_seed(seed + 3)
        total = None
        for k in sorted(res):  # last_hidden_state, then pooler_output
            w = torch.randn(res[k].shape, generator=gen, dtype=torch.float32)
            tensors["loss_weight." + k] = w
            term = (res[k] * w).sum()
            total = term if total is None else total + term
        losses["loss"] = total
        backward_of = total
    else:
        backward_of = losses["loss"] + losses["mc_loss"] if "mc_loss" in losses else losses["loss"]
    for k, v in losses.items():
        tensors[k] = v.detach().reshape(1).to(torch.float32).clone()
    model.zero_grad(set_to_none=True)
    backward_of.backward()
    params = list(model.named_parameters())  # deduplicated (tied weights appear once)
    no_grad = []
    for n, p in params:
        if p.grad is None:
            no_grad.append(n)
            tensors["grad." + n] = torch.zeros_like(p.detach())
        else:
            tensors["grad." + n] = p.grad.detach().clone()
    info = {"outputs": sorted(k for k in tensors if "." not in k), "parameters": [n for n, _ in params],
            "params_without_grad": no_grad}
    return tensors, info


def tied_names(model) -> dict:
    """Every duplicate parameter name -> the name named_parameters() keeps (the first one)."""
    first, tied = {}, {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied[n] = first[id(p)]
        else:
            first[id(p)] = n
    return tied


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(f"{record.levelname}: {record.getMessage()}")


def make_family(name: str, out_root: str) -> None:
    spec = FAMILY_FIXTURES[name]
    seed = seed_of(name)
    d = os.path.join(out_root, name)
    os.makedirs(d, exist_ok=True)
    # transformers' warnings (and Python warnings) while building, saving and running the model
    cap = _Capture()
    tf_logger = logging.getLogger("transformers")
    tf_logger.addHandler(cap)
    transformers.logging.set_verbosity_warning()
    hf_logging.warning_once.cache_clear()  # logger.warning_once: report per fixture, whatever ran before
    with warnings.catch_warnings(record=True) as py_warn:
        warnings.simplefilter("always")
        model = build_family(spec, seed)
        file_names = hf_save(model, d)
        gen = torch.Generator().manual_seed(seed + 2)
        batch = make_family_batch(spec, gen)
        write_json(os.path.join(d, "batch.json"), batch)
        inputs = to_tensors(batch)
        hf_inputs, call_note = hf_inputs_for(spec, inputs)
        tensors, info = expected_family(model, spec, hf_inputs, seed)
    transformers.logging.set_verbosity_error()
    tf_logger.removeHandler(cap)
    messages = cap.messages + [f"{w.category.__name__}: {w.message}" for w in py_warn]
    save_file(tensors, os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})

    # the saved folder alone must reproduce the outputs through transformers' own loader
    reloaded = spec["cls"].from_pretrained(d, attn_implementation="eager", **spec.get("model_kwargs", {})).eval()
    with torch.no_grad():  # (not bitwise: MKL's results can depend on the weights' memory alignment)
        res2, _ = forward_family(reloaded, spec, hf_inputs)
    for k, v in res2.items():
        assert torch.allclose(v, tensors[k], rtol=1e-6, atol=1e-6), f"{name}: {k} differs after from_pretrained"

    params = info["parameters"]
    fam = FAMILIES[spec["family"]]
    meta = {
        "name": name,
        "family": spec["family"],
        "model_class": spec["cls"].__name__,
        "model_type": model.config.model_type,
        "task": spec["task"],
        "seed": seed,
        "param_perturbation_std": PERTURB_STD,
        "params_not_perturbed": spec.get("no_perturb", []),
        "config_from": ("only the sizes given (" + ", ".join(f"{k}={v}" for k, v in spec["default_config"].items())
                        + "); every other field at transformers' default") if "default_config" in spec else
                       "scripts/make_fixtures.py family kwargs + extra",
        "pad_token_id_in_batch": fam["pad"],
        "batch_keys": sorted(batch),
        "hf_call_note": call_note,
        "expected_outputs": info["outputs"],
        "loss_definition": LOSS_DEFINITIONS[spec["task"]],
        "grads_of": "loss + mc_loss" if spec["task"] == "double_heads" else "loss",
        "loss_weights": sorted(k for k in tensors if k.startswith("loss_weight.")),
        "has_grads": True,
        "has_after_adamw": False,
        "adamw": None,
        "file_tensor_names": file_names,
        "parameters": params,
        "params_not_in_file": [n for n in params if n not in file_names],
        "file_names_not_parameters": [n for n in file_names if n not in params],
        "params_without_grad": info["params_without_grad"],
        "tied": tied_names(model),
        "transformers_warnings": messages,
        **common_meta(),
    }
    if spec["family"] == "roberta":
        from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

        meta["hf_position_ids"] = RobertaEmbeddings.create_position_ids_from_input_ids(
            inputs["input_ids"], model.config.pad_token_id).tolist()
    write_json(os.path.join(d, "meta.json"), meta)
    nbytes = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name:28s} {spec['cls'].__name__:36s} {len(file_names):3d} tensors in file, {len(tensors):3d} expected, "
          f"loss={float(tensors['loss']):.6g}, {nbytes // 1024} KiB"
          + (f", {len(messages)} warnings" if messages else ""))


# ---------------------------------------------------------------------------------------------- tokenizers
# One small tokenizer.json per family (tests/fixtures/tokenizers/<family>/), made the way transformers' own
# tokenizer class for that family makes its backend: the class's normalizer and pre-tokenizer are taken from a
# freshly constructed instance, a tiny vocabulary is trained on tinyshakespeare with the `tokenizers` trainers
# through them, and the class is then constructed from that vocabulary (so its post-processor, special tokens
# and decoder are the class's own). expected.json: what the class (reloaded from the saved folder) returns with
# add_special_tokens=True, checked against PreTrainedTokenizerFast(tokenizer_file=tokenizer.json).
TOKENIZER_CORPUS = os.environ.get("KILN_TOKENIZER_CORPUS", "/work/shared/data/tinyshakespeare.txt")
TOKENIZER_SINGLES = [
    "Hello, world!",
    "First Citizen: Before we proceed any further, hear me speak.",
    "  Leading spaces, and a trailing one ",
    "UPPER lower MiXeD Case",
    "O Romeo, Romeo! wherefore art thou Romeo?",
    "na\u00efve caf\u00e9 \u2014 \u201cquoted\u201d r\u00e9sum\u00e9",
    "xylophonequartz zyzzyva \u2206 \u65e5\u672c \U0001F600",
    "tab\tseparated\nnew line   multiple   spaces",
    "In 1603, 42 kings didn't pay $7.50!",
    "",
]
TOKENIZER_PAIRS = [
    ["How are you?", "I am fine, thank you."],
    ["  What's in a name?", "That which we call a rose"],
    ["Question with an UNKNOWN \u2206", "answer"],
]
# family -> (transformers class, class kwargs, trainer kind, vocab size, specials trained first,
#            specials appended after the trained vocabulary, family-specific extra single texts)
TOKENIZER_FAMILIES = {
    "bert": ("BertTokenizer", {}, "wordpiece", 600, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], [],
             ["The capital of France is [MASK]."]),
    "distilbert": ("DistilBertTokenizer", {"do_lower_case": False}, "wordpiece", 500,
                   ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], [], ["The capital of France is [MASK]."]),
    # transformers 5 has no ElectraTokenizer: AutoTokenizer maps model_type "electra" to BertTokenizer
    "electra": ("BertTokenizer", {}, "wordpiece", 400, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], [],
                ["The capital of France is [MASK]."]),
    # <mask> given as AddedToken(lstrip=True): it absorbs the space before it. RobertaTokenizer does not do this by
    # itself in transformers 5 (unlike e.g. MPNetTokenizer, tokenization_mpnet.py:136); the flag is stored in
    # tokenizer.json's added_tokens.
    "roberta": ("RobertaTokenizer", {"mask_token": ("<mask>", {"lstrip": True, "rstrip": False})}, "bytelevel_bpe",
                700, ["<s>", "<pad>", "</s>", "<unk>"],
                ["<mask>"], ["The capital of France is<mask>.", "The <mask> is here"]),
    "gpt2": ("GPT2Tokenizer", {}, "bytelevel_bpe", 700, [], ["<|endoftext|>"], ["Hello<|endoftext|> World"]),
    "albert": ("AlbertTokenizer", {}, "unigram", 500, ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"], [],
               ["The capital of France is [MASK]."]),
    "openai_gpt": ("OpenAIGPTTokenizer", {}, "bpe_w", 700, [], ["<unk>"], []),
}


def _word_counts(template, piece_to_symbols) -> dict:
    """Corpus words through the template tokenizer's own normalizer and pre-tokenizer -> {symbols: count}."""
    backend = template.backend_tokenizer
    counts: dict = {}
    with open(TOKENIZER_CORPUS, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if backend.normalizer is not None:
                line = backend.normalizer.normalize_str(line)
            for piece, _ in backend.pre_tokenizer.pre_tokenize_str(line):
                counts[piece] = counts.get(piece, 0) + 1
    out: dict = {}
    for piece, c in counts.items():
        key = tuple(piece_to_symbols(piece))
        out[key] = out.get(key, 0) + c
    return out


def _bpe(word_counts: dict, n_tokens: int, join) -> tuple[list, list]:
    """Deterministic BPE: repeatedly merge the most frequent adjacent pair (ties: the smallest pair), until
    n_tokens new tokens exist. Returns (merges, new tokens in creation order)."""
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    pairs: dict = {}
    where: dict = {}
    for i, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pairs[(a, b)] = pairs.get((a, b), 0) + freqs[i]
            where.setdefault((a, b), set()).add(i)
    merges, new_tokens, seen = [], [], set()
    while len(new_tokens) < n_tokens and pairs:
        best = min(pairs, key=lambda p: (-pairs[p], p))
        tok = join(*best)
        merges.append(best)
        if tok not in seen:
            seen.add(tok)
            new_tokens.append(tok)
        for i in sorted(where.pop(best, ())):
            w, f = words[i], freqs[i]
            for p in zip(w, w[1:]):
                pairs[p] -= f
                if pairs[p] == 0:
                    del pairs[p]
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == best:
                    out.append(tok)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):
                pairs[p] = pairs.get(p, 0) + f
                where.setdefault(p, set()).add(i)
        pairs.pop(best, None)
    return merges, new_tokens


def _bytes_to_unicode_order() -> list:
    """The 256 byte-level symbols in GPT-2's order (printable bytes first, the rest mapped to 256+n)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _build_vocab(kind: str, template, size: int, specials: list, appended: list):
    """Deterministic tiny vocabulary (tokenizers' own trainers iterate Rust HashMaps, so their output changes
    from run to run): BPE merges over the corpus words as the template tokenizer pre-tokenizes them."""
    if kind == "bytelevel_bpe":
        alphabet = _bytes_to_unicode_order()
        wc = _word_counts(template, list)
        budget = size - len(specials) - len(alphabet) - len(appended)
        merges, new = _bpe(wc, budget, lambda a, b: a + b)
        vocab = {t: i for i, t in enumerate(specials + alphabet + new + appended)}
        return {"vocab": vocab, "merges": merges}
    if kind == "bpe_w":  # GPT-1: the last symbol of a word carries the </w> suffix
        wc = _word_counts(template, lambda p: list(p[:-1]) + [p[-1] + "</w>"])
        chars = sorted({c for w in wc for s in w for c in s.replace("</w>", "")})
        alphabet = chars + [c + "</w>" for c in chars]
        budget = size - len(specials) - len(alphabet) - len(appended)
        merges, new = _bpe(wc, budget, lambda a, b: a + b)
        vocab = {t: i for i, t in enumerate(specials + alphabet + new + appended)}
        return {"vocab": vocab, "merges": merges}
    if kind == "wordpiece":  # continuation symbols carry the ## prefix; merges only decide the vocabulary
        wc = _word_counts(template, lambda p: [p[0]] + ["##" + c for c in p[1:]])
        chars = sorted({s[-1] for w in wc for s in w})
        alphabet = chars + ["##" + c for c in chars]
        budget = size - len(specials) - len(alphabet) - len(appended)
        _, new = _bpe(wc, budget, lambda a, b: a + b[2:])
        new = [t for t in new if t not in alphabet]
        vocab = {t: i for i, t in enumerate(specials + alphabet + new + appended)}
        return {"vocab": vocab}
    if kind == "unigram":  # pieces from BPE over the Metaspace words, scores = log frequencies (hard EM)
        from tokenizers import Tokenizer, models

        wc = _word_counts(template, list)
        chars = sorted({c for w in wc for c in w})
        budget = size - len(specials) - len(chars)
        _, new = _bpe(wc, budget, lambda a, b: a + b)
        pieces = chars + [t for t in new if t not in chars]
        scores = {p: -1.0 for p in pieces}  # start: fewest pieces per word
        for _ in range(3):  # Viterbi (hard EM) re-estimation with the Unigram model itself, add-one counts
            model = Tokenizer(models.Unigram([(p, scores[p]) for p in pieces], unk_id=None, byte_fallback=False))
            counts = {p: 1.0 for p in pieces}
            for w, c in wc.items():
                for t in model.model.tokenize("".join(w)):
                    counts[t.value] = counts.get(t.value, 1.0) + c
            total = sum(counts.values())
            scores = {p: round(float(np.log(counts[p] / total)), 6) for p in pieces}
        ordered = sorted(pieces, key=lambda p: (-scores[p], p))
        return {"vocab": [(t, 0.0) for t in specials] + [(p, scores[p]) for p in ordered]}
    raise ValueError(kind)


def make_tokenizer(family: str, out_root: str) -> None:
    cls_name, spec_kwargs, kind, size, specials, appended, extra = TOKENIZER_FAMILIES[family]
    cls = getattr(transformers, cls_name)
    # (content, {AddedToken flags}) -> AddedToken
    kwargs = {k: transformers.AddedToken(v[0], **v[1]) if isinstance(v, tuple) else v for k, v in spec_kwargs.items()}
    template = cls(**kwargs)
    args = _build_vocab(kind, template, size, specials, appended)
    tok = cls(**args, **kwargs)
    d = os.path.join(out_root, "tokenizers", family)
    os.makedirs(d, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(tmp, f), os.path.join(d, f))
    tok_file = os.path.join(d, "tokenizer.json")
    reloaded = cls.from_pretrained(d)
    generic = transformers.PreTrainedTokenizerFast(tokenizer_file=tok_file)

    cases = [{"text": t} for t in TOKENIZER_SINGLES + extra] + [{"text": a, "text_pair": b} for a, b in TOKENIZER_PAIRS]
    default_keys = None
    for c in cases:
        args = [c["text"]] + ([c["text_pair"]] if "text_pair" in c else [])
        enc = reloaded(*args, add_special_tokens=True, return_token_type_ids=True, return_attention_mask=True)
        plain = reloaded(*args, add_special_tokens=True)
        default_keys = sorted(plain)
        gen_enc = generic(*args, add_special_tokens=True, return_token_type_ids=True, return_attention_mask=True)
        first = tok(*args, add_special_tokens=True, return_token_type_ids=True, return_attention_mask=True)
        for k in ("input_ids", "token_type_ids", "attention_mask"):
            assert enc[k] == gen_enc[k] == first[k], (family, c, k)
        c["input_ids"] = enc["input_ids"]
        c["token_type_ids"] = enc["token_type_ids"]
        c["attention_mask"] = enc["attention_mask"]
        c["tokens"] = reloaded.convert_ids_to_tokens(enc["input_ids"])
        c["no_special_tokens_ids"] = reloaded(*args, add_special_tokens=False)["input_ids"]
        c["decoded"] = reloaded.decode(enc["input_ids"], skip_special_tokens=False)
    tj = json.load(open(tok_file))
    specials_map = {}
    for name in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        t = getattr(reloaded, name, None)
        if t is not None:
            specials_map[name] = [str(t), reloaded.convert_tokens_to_ids(str(t))]
    expected = {
        "family": family,
        "class": cls_name,
        "class_kwargs": {k: ({"content": v[0], **v[1]} if isinstance(v, tuple) else v) for k, v in spec_kwargs.items()},
        "how_built": f"{kind} vocabulary of {size} from tinyshakespeare.txt through the normalizer / pre-tokenizer "
                     f"of a fresh {cls_name}() (deterministic BPE in scripts/make_fixtures.py); specials first "
                     f"{specials}, appended last {appended}; then {cls_name}(vocab"
                     f"{', merges' if 'merges' in args else ''}, **class_kwargs).save_pretrained",
        "call": "tokenizer(text[, text_pair], add_special_tokens=True, return_token_type_ids=True, "
                "return_attention_mask=True) on the class reloaded from this folder; identical with "
                "PreTrainedTokenizerFast(tokenizer_file='tokenizer.json')",
        "keys_returned_by_default": default_keys,
        "model_input_names": list(reloaded.model_input_names),
        "vocab_size": len(reloaded),
        "special_tokens": specials_map,
        "normalizer": (tj.get("normalizer") or {}).get("type"),
        "pre_tokenizer": (tj.get("pre_tokenizer") or {}).get("type"),
        "model": tj["model"]["type"],
        "post_processor": (tj.get("post_processor") or {}).get("type"),
        "decoder": (tj.get("decoder") or {}).get("type"),
        "transformers_version": transformers.__version__,
        "tokenizers_version": __import__("tokenizers").__version__,
        "cases": cases,
    }
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"tokenizers/{family:11s} {cls_name:20s} vocab {len(reloaded):4d}, {len(cases)} cases, "
          f"{os.path.getsize(tok_file) // 1024} KiB tokenizer.json")


# ---------------------------------------------------------------------------------------------- main
def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1 if path.endswith("meta.json") else None)
        f.write("\n")


def common_meta() -> dict:
    return {
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "safetensors_version": __import__("safetensors").__version__,
        "numpy_version": np.__version__,
        "dtype": "float32",
        "attn_implementation": "eager",
        "mode": "model.eval(); every dropout probability in config.json is 0",
        "loss_shape": [1],
    }


def make_one(name: str, out_root: str) -> None:
    cls, extra, task = FIXTURES[name]
    seed = seed_of(name)
    d = os.path.join(out_root, name)
    os.makedirs(d, exist_ok=True)
    model = build(cls, extra, seed)
    file_names = hf_save(model, d)
    gen = torch.Generator().manual_seed(seed + 2)
    batch = make_batch(task, gen, extra.get("num_labels"))
    write_json(os.path.join(d, "batch.json"), batch)
    tensors, info = expected_for(model, to_tensors(batch), task)
    save_file(tensors, os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})
    params = info.get("parameters", [n for n, _ in model.named_parameters()])
    meta = {
        "name": name,
        "model_class": cls.__name__,
        "model_type": model.config.model_type,
        "task": task,
        "seed": seed,
        "param_perturbation_std": PERTURB_STD,
        "batch_keys": sorted(batch),
        "expected_outputs": info["outputs"],
        "has_grads": "loss" in tensors,
        "has_after_adamw": "loss" in tensors,
        "adamw": {**ADAMW, "betas": list(ADAMW["betas"]), "amsgrad": False, "maximize": False,
                  "applied_to": "all parameters (including biases, LayerNorm and embeddings)",
                  "steps": 1, "zero_grad_before": True} if "loss" in tensors else None,
        "file_tensor_names": file_names,
        "parameters": params,
        "params_not_in_file": [n for n in params if n not in file_names],
        "file_names_not_parameters": [n for n in file_names if n not in params],
        "params_without_grad": info.get("params_without_grad", []),
        "tied": {"lm_head.weight": "transformer.wte.weight"} if task == "clm" else (
            {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
             "cls.predictions.decoder.bias": "cls.predictions.bias"} if task in ("mlm", "pretraining") else {}),
        **common_meta(),
    }
    write_json(os.path.join(d, "meta.json"), meta)
    print(f"{name:20s} {cls.__name__:32s} {len(file_names):3d} tensors in file, "
          f"{len(tensors):3d} expected, loss={float(tensors['loss']) if 'loss' in tensors else None}")


def make_legacy(name: str, out_root: str) -> None:
    src = LEGACY[name]
    src_dir = os.path.join(out_root, src)
    d = os.path.join(out_root, name)
    os.makedirs(d, exist_ok=True)
    cfg = json.load(open(os.path.join(src_dir, "config.json")))
    kind = cfg["model_type"]
    shutil.copy(os.path.join(src_dir, "config.json"), os.path.join(d, "config.json"))
    shutil.copy(os.path.join(src_dir, "batch.json"), os.path.join(d, "batch.json"))
    names = legacy_rewrite(os.path.join(src_dir, "model.safetensors"), os.path.join(d, "model.safetensors"),
                           "bert" if kind == "bert" else "gpt2", cfg)
    keep = ["last_hidden_state", "logits", "loss"]
    with safe_open(os.path.join(src_dir, "expected.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in keep}
    # check that transformers itself loads the quirky file to the same outputs
    cls = FIXTURES[src][0]
    model = cls.from_pretrained(d, attn_implementation="eager").eval()
    res, loss = forward(model, to_tensors(json.load(open(os.path.join(d, "batch.json")))), FIXTURES[src][2])
    for k in ("last_hidden_state", "logits"):
        assert torch.allclose(res[k], tensors[k], rtol=1e-5, atol=1e-6), f"{name}: {k} mismatch after HF load"
    save_file(tensors, os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})
    quirks = (["LayerNorm.weight/bias stored as LayerNorm.gamma/beta",
               "bert.embeddings.position_ids int64 [1, max_position_embeddings] buffer present",
               "tied cls.predictions.decoder.weight absent (use bert.embeddings.word_embeddings.weight)"]
              if kind == "bert" else
              ["no 'transformer.' prefix (wte.weight, h.0.ln_1.weight, ln_f.weight, ...)",
               "h.N.attn.bias f32 [1,1,n_positions,n_positions] causal-mask buffer present (ignore)",
               "h.N.attn.masked_bias f32 scalar [] = -1e4 present (ignore)",
               "Conv1D weights [in, out]", "tied lm_head.weight absent (use wte.weight)"])
    meta = {
        "name": name,
        "model_class": cls.__name__,
        "model_type": kind,
        "task": FIXTURES[src][2],
        "same_as": src,
        "note": "weights, config, batch identical to same_as; only model.safetensors naming differs",
        "quirks": quirks,
        "batch_keys": sorted(json.load(open(os.path.join(d, "batch.json")))),
        "expected_outputs": keep,
        "has_grads": False,
        "has_after_adamw": False,
        "file_tensor_names": names,
        **common_meta(),
    }
    write_json(os.path.join(d, "meta.json"), meta)
    print(f"{name:20s} legacy of {src}: {len(names)} tensors in file")


def make_generate(name: str, out_root: str) -> None:
    """generate.json (prompts, greedy sequences, the smallest top-1/top-2 logit gap per prompt) and
    expected.safetensors (`logits.<i>`: the raw next-token logits of every step of prompt i, [new, V])."""
    src = os.path.join(out_root, GENERATE[name])
    out_dir = os.path.join(out_root, name)
    os.makedirs(out_dir, exist_ok=True)
    model = GPT2LMHeadModel.from_pretrained(src, attn_implementation="eager").eval()
    model.generation_config.eos_token_id = None  # exactly GENERATE_NEW tokens, nothing suppressed
    model.generation_config.pad_token_id = 0
    tensors, sequences, margins = {}, [], []
    for i, prompt in enumerate(GENERATE_PROMPTS):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            g = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GENERATE_NEW, do_sample=False,
                               use_cache=True, output_logits=True, return_dict_in_generate=True)
        logits = torch.cat(g.logits).float().contiguous()  # [new, V], before any logits processor
        top2 = logits.topk(2, dim=-1).values
        margins.append(float((top2[:, 0] - top2[:, 1]).min()))
        tensors[f"logits.{i}"] = logits
        sequences.append(g.sequences[0].tolist())
    save_file(tensors, os.path.join(out_dir, "expected.safetensors"))
    write_json(os.path.join(out_dir, "meta.json"), {
        "name": name, "model_dir": GENERATE[name], "model_class": "GPT2LMHeadModel",
        "call": "generate(max_new_tokens, do_sample=False, use_cache=True, output_logits=True), eos_token_id None",
        "prompts": GENERATE_PROMPTS, "max_new_tokens": GENERATE_NEW, "sequences": sequences,
        "min_top2_logit_gap": margins, **common_meta()})
    print(f"{name}: {len(GENERATE_PROMPTS)} prompts x {GENERATE_NEW} tokens, min top-2 gap {min(margins):.3g}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures"))
    ap.add_argument("--only", nargs="*", help="fixture names (default: all)")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)  # reduction order independent of the machine's core count
    os.makedirs(args.out, exist_ok=True)
    tokenizer_names = [f"tokenizers/{f}" for f in TOKENIZER_FAMILIES]
    names = args.only or list(FIXTURES) + list(LEGACY) + list(GENERATE) + list(FAMILY_FIXTURES) + tokenizer_names
    known = set(FIXTURES) | set(LEGACY) | set(GENERATE) | set(FAMILY_FIXTURES) | set(tokenizer_names)
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error(f"unknown fixture names: {unknown}")
    for n in names:
        if n in FIXTURES:
            make_one(n, args.out)
    for n in names:
        if n in FAMILY_FIXTURES:
            make_family(n, args.out)
    for n in names:
        if n in LEGACY:
            make_legacy(n, args.out)
    for n in names:
        if n in GENERATE:
            make_generate(n, args.out)
    for n in names:
        if n in tokenizer_names:
            make_tokenizer(n.split("/", 1)[1], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
