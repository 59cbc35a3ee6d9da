//! The model family as Hugging Face names it: one table from `model_type` and architecture names
//! (`architectures[0]` of `config.json`) to kiln's stack, head and checkpoint-name quirks.
//!
//! | family | `model_type` | stack | prefix | architectures |
//! |---|---|---|---|---|
//! | BERT | `bert` | encoder | `bert.` | Model, ForMaskedLM, ForPreTraining, ForSequenceClassification, ForTokenClassification, ForQuestionAnswering, ForMultipleChoice |
//! | RoBERTa | `roberta` | encoder (padding-offset positions) | `roberta.` | Model, ForMaskedLM, ForSequenceClassification, ForTokenClassification, ForQuestionAnswering, ForMultipleChoice |
//! | ALBERT | `albert` | encoder (factorised embeddings, shared layer groups) | `albert.` | Model, ForPreTraining, ForMaskedLM, ForSequenceClassification, ForTokenClassification, ForQuestionAnswering, ForMultipleChoice |
//! | DistilBERT | `distilbert` | encoder (no token types) | `distilbert.` | Model, ForMaskedLM, ForSequenceClassification, ForQuestionAnswering, ForTokenClassification, ForMultipleChoice |
//! | ELECTRA | `electra` | encoder (embedding projection when E ≠ H) | `electra.` | Model, ForPreTraining, ForMaskedLM, ForSequenceClassification, ForTokenClassification, ForQuestionAnswering, ForMultipleChoice |
//! | GPT-1 | `openai-gpt` | decoder, post-LN, no final LayerNorm | `transformer.` | OpenAIGPTModel, OpenAIGPTLMHeadModel, OpenAIGPTDoubleHeadsModel, OpenAIGPTForSequenceClassification |
//! | GPT-2 | `gpt2` | decoder, pre-LN, final `ln_f` | `transformer.` | GPT2Model, GPT2LMHeadModel, GPT2DoubleHeadsModel, GPT2ForSequenceClassification, GPT2ForTokenClassification |
//!
//! Adding a member: a [`Family`] variant with its `model_type`, prefix, config defaults and field
//! renames (below), its parameter names ([`crate::encoder`] / [`crate::decoder`] name tables), its
//! rows in [`ARCHITECTURES`], and a head in [`crate::heads`] if none of the existing ones fits.
use crate::checkpoint::HfNameMap;
use serde_json::{json, Value};

/// A member of the family (one HF `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Family {
    #[default]
    Bert,
    Roberta,
    Albert,
    DistilBert,
    Electra,
    OpenAiGpt,
    Gpt2,
}

/// Every member, in the order error messages list them.
pub const FAMILIES: [Family; 7] = [Family::Bert, Family::Roberta, Family::Albert, Family::DistilBert, Family::Electra, Family::OpenAiGpt, Family::Gpt2];

/// What sits on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// The bare stack (`BertModel`, `GPT2Model`, ...): `last_hidden_state` (+ `pooler_output`).
    Base,
    MaskedLm,
    /// BERT: MLM + NSP; ALBERT: MLM + SOP; ELECTRA: the replaced-token discriminator.
    PreTraining,
    SequenceClassification,
    TokenClassification,
    QuestionAnswering,
    /// One score per choice (`…ForMultipleChoice`): inputs `[batch, choices, seq]`, logits `[batch, choices]`.
    MultipleChoice,
    /// A decoder's LM head.
    CausalLm,
    /// A decoder's LM head + multiple-choice head (GPT-1 / GPT-2 `DoubleHeadsModel`).
    DoubleHeads,
}

/// One HF architecture name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    pub name: &'static str,
    pub family: Family,
    pub task: Task,
}

const fn a(name: &'static str, family: Family, task: Task) -> Arch {
    Arch { name, family, task }
}

use Family::*;
use Task::*;

/// Every architecture kiln builds, by its HF class name. The first row of a family is not its
/// default: see [`Family::default_arch`].
pub const ARCHITECTURES: &[Arch] = &[
    a("BertModel", Bert, Base),
    a("BertForMaskedLM", Bert, MaskedLm),
    a("BertForPreTraining", Bert, PreTraining),
    a("BertForSequenceClassification", Bert, SequenceClassification),
    a("BertForTokenClassification", Bert, TokenClassification),
    a("BertForQuestionAnswering", Bert, QuestionAnswering),
    a("BertForMultipleChoice", Bert, MultipleChoice),
    a("RobertaModel", Roberta, Base),
    a("RobertaForMaskedLM", Roberta, MaskedLm),
    a("RobertaForSequenceClassification", Roberta, SequenceClassification),
    a("RobertaForTokenClassification", Roberta, TokenClassification),
    a("RobertaForQuestionAnswering", Roberta, QuestionAnswering),
    a("RobertaForMultipleChoice", Roberta, MultipleChoice),
    a("AlbertModel", Albert, Base),
    a("AlbertForPreTraining", Albert, PreTraining),
    a("AlbertForMaskedLM", Albert, MaskedLm),
    a("AlbertForSequenceClassification", Albert, SequenceClassification),
    a("AlbertForTokenClassification", Albert, TokenClassification),
    a("AlbertForQuestionAnswering", Albert, QuestionAnswering),
    a("AlbertForMultipleChoice", Albert, MultipleChoice),
    a("DistilBertModel", DistilBert, Base),
    a("DistilBertForMaskedLM", DistilBert, MaskedLm),
    a("DistilBertForSequenceClassification", DistilBert, SequenceClassification),
    a("DistilBertForQuestionAnswering", DistilBert, QuestionAnswering),
    a("DistilBertForMultipleChoice", DistilBert, MultipleChoice),
    a("DistilBertForTokenClassification", DistilBert, TokenClassification),
    a("ElectraModel", Electra, Base),
    a("ElectraForPreTraining", Electra, PreTraining),
    a("ElectraForMaskedLM", Electra, MaskedLm),
    a("ElectraForSequenceClassification", Electra, SequenceClassification),
    a("ElectraForTokenClassification", Electra, TokenClassification),
    a("ElectraForQuestionAnswering", Electra, QuestionAnswering),
    a("ElectraForMultipleChoice", Electra, MultipleChoice),
    a("OpenAIGPTModel", OpenAiGpt, Base),
    a("OpenAIGPTLMHeadModel", OpenAiGpt, CausalLm),
    a("OpenAIGPTDoubleHeadsModel", OpenAiGpt, DoubleHeads),
    a("OpenAIGPTForSequenceClassification", OpenAiGpt, SequenceClassification),
    a("GPT2Model", Gpt2, Base),
    a("GPT2LMHeadModel", Gpt2, CausalLm),
    a("GPT2DoubleHeadsModel", Gpt2, DoubleHeads),
    a("GPT2ForSequenceClassification", Gpt2, SequenceClassification),
    a("GPT2ForTokenClassification", Gpt2, TokenClassification),
];

impl Arch {
    /// The row for an HF class name.
    pub fn by_name(name: &str) -> Option<Arch> {
        ARCHITECTURES.iter().copied().find(|a| a.name == name)
    }
    /// Whether the model's parameters carry the base-model prefix (`bert.`...): every head model
    /// does; a bare stack saved alone does not.
    pub fn prefixed(&self) -> bool {
        self.task != Task::Base
    }
}

/// The supported architecture names, comma-separated (for error messages).
pub fn supported_architectures() -> String {
    ARCHITECTURES.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
}

impl Family {
    /// The `model_type` of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Bert => "bert",
            Roberta => "roberta",
            Albert => "albert",
            DistilBert => "distilbert",
            Electra => "electra",
            OpenAiGpt => "openai-gpt",
            Gpt2 => "gpt2",
        }
    }
    pub fn from_model_type(s: &str) -> Option<Family> {
        FAMILIES.into_iter().find(|f| f.model_type() == s)
    }
    /// The supported `model_type`s, comma-separated.
    pub fn supported() -> String {
        FAMILIES.map(|f| f.model_type()).join(", ")
    }
    /// Decoder (causal) stacks: GPT-1 and GPT-2.
    pub fn is_decoder(self) -> bool {
        matches!(self, OpenAiGpt | Gpt2)
    }
    /// The base model's name prefix in head models (HF `base_model_prefix`), without the dot.
    pub fn prefix(self) -> &'static str {
        match self {
            Bert => "bert",
            Roberta => "roberta",
            Albert => "albert",
            DistilBert => "distilbert",
            Electra => "electra",
            OpenAiGpt | Gpt2 => "transformer",
        }
    }
    /// The architecture of a config without `architectures`: the pre-training LM of the family.
    pub fn default_arch(self) -> Arch {
        let name = match self {
            Bert => "BertForMaskedLM",
            Roberta => "RobertaForMaskedLM",
            Albert => "AlbertForMaskedLM",
            DistilBert => "DistilBertForMaskedLM",
            Electra => "ElectraForMaskedLM",
            OpenAiGpt => "OpenAIGPTLMHeadModel",
            Gpt2 => "GPT2LMHeadModel",
        };
        Arch::by_name(name).expect("in the table")
    }
    /// The family's architecture with the `task` head (`BertForSequenceClassification`, ...), if
    /// it has one.
    pub fn arch_for(self, task: Task) -> Option<Arch> {
        ARCHITECTURES.iter().copied().find(|a| a.family == self && a.task == task)
    }
    /// HF field name → kiln's field name, where the family names a field differently from BERT
    /// (encoders) or GPT-2 (decoders).
    pub fn renames(self) -> &'static [(&'static str, &'static str)] {
        match self {
            DistilBert => &[
                ("dim", "hidden_size"),
                ("n_layers", "num_hidden_layers"),
                ("n_heads", "num_attention_heads"),
                ("hidden_dim", "intermediate_size"),
                ("dropout", "hidden_dropout_prob"),
                ("attention_dropout", "attention_probs_dropout_prob"),
                ("activation", "hidden_act"),
            ],
            OpenAiGpt => &[("afn", "activation_function")],
            _ => &[],
        }
    }
    /// kiln fields the family does not have in its HF config, with the value its modeling code
    /// hard-codes (set on read, not written back).
    pub fn fixed(self) -> Vec<(&'static str, Value)> {
        match self {
            DistilBert => vec![("type_vocab_size", json!(0)), ("layer_norm_eps", json!(1e-12))],
            OpenAiGpt => vec![("n_inner", Value::Null)],
            _ => vec![],
        }
    }
    /// transformers' config-class defaults (transformers 5.23), in HF field names: what a field
    /// missing from `config.json` means.
    pub fn defaults(self) -> Value {
        let bert = json!({
            "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
            "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0, "bos_token_id": null,
            "eos_token_id": null, "classifier_dropout": null, "position_embedding_type": "absolute",
            "is_decoder": false, "add_cross_attention": false
        });
        let with = |base: &Value, over: Value| {
            let mut m = base.as_object().expect("object").clone();
            m.extend(over.as_object().expect("object").clone());
            Value::Object(m)
        };
        match self {
            Bert => bert,
            Roberta => with(&bert, json!({"vocab_size": 50265, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2})),
            Albert => json!({
                "vocab_size": 30000, "embedding_size": 128, "hidden_size": 4096, "num_hidden_layers": 12,
                "num_hidden_groups": 1, "num_attention_heads": 64, "intermediate_size": 16384, "inner_group_num": 1,
                "hidden_act": "gelu_new", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                "max_position_embeddings": 512, "type_vocab_size": 2, "initializer_range": 0.02,
                "layer_norm_eps": 1e-12, "classifier_dropout_prob": 0.1, "pad_token_id": 0, "bos_token_id": 2,
                "eos_token_id": 3
            }),
            DistilBert => json!({
                "vocab_size": 30522, "max_position_embeddings": 512, "sinusoidal_pos_embds": false, "n_layers": 6,
                "n_heads": 12, "dim": 768, "hidden_dim": 3072, "dropout": 0.1, "attention_dropout": 0.1,
                "activation": "gelu", "initializer_range": 0.02, "qa_dropout": 0.1, "seq_classif_dropout": 0.2,
                "pad_token_id": 0, "bos_token_id": null, "eos_token_id": null
            }),
            Electra => with(&bert, json!({
                "embedding_size": 128, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024,
                "summary_type": "first", "summary_use_proj": true, "summary_activation": "gelu",
                "summary_last_dropout": 0.1
            })),
            OpenAiGpt => json!({
                "vocab_size": 40478, "n_positions": 512, "n_embd": 768, "n_layer": 12, "n_head": 12, "afn": "gelu",
                "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-5,
                "initializer_range": 0.02, "summary_type": "cls_index", "summary_use_proj": true,
                "summary_activation": null, "summary_proj_to_labels": true, "summary_first_dropout": 0.1,
                "bos_token_id": null, "eos_token_id": null, "pad_token_id": null
            }),
            Gpt2 => json!({
                "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": null,
                "activation_function": "gelu_new", "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
                "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "summary_type": "cls_index",
                "summary_use_proj": true, "summary_activation": null, "summary_proj_to_labels": true,
                "summary_first_dropout": 0.1, "scale_attn_weights": true, "scale_attn_by_inverse_layer_idx": false,
                "reorder_and_upcast_attn": false, "bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": null,
                "add_cross_attention": false
            }),
        }
    }

    /// The checkpoint-name quirks of the family: the optional prefix, buffers to skip, tied
    /// aliases (absent from HF files; a file that has them loads them into the target), legacy
    /// LayerNorm names.
    pub fn name_map(self) -> HfNameMap {
        let p = self.prefix();
        let word = |emb: &str| format!("{p}.embeddings.{emb}.weight");
        let tied: Vec<(String, String)> = match self {
            Bert => vec![
                ("cls.predictions.decoder.weight".into(), word("word_embeddings")),
                ("cls.predictions.decoder.bias".into(), "cls.predictions.bias".into()),
            ],
            Roberta => vec![("lm_head.decoder.weight".into(), word("word_embeddings")), ("lm_head.decoder.bias".into(), "lm_head.bias".into())],
            Albert => vec![("predictions.decoder.weight".into(), word("word_embeddings")), ("predictions.decoder.bias".into(), "predictions.bias".into())],
            DistilBert => vec![("vocab_projector.weight".into(), word("word_embeddings"))],
            Electra => vec![("generator_lm_head.weight".into(), word("word_embeddings"))],
            OpenAiGpt => vec![("lm_head.weight".into(), "transformer.tokens_embed.weight".into())],
            Gpt2 => vec![("lm_head.weight".into(), "transformer.wte.weight".into())],
        };
        let ignore_suffixes = if self.is_decoder() {
            vec![".attn.bias".into(), ".attn.masked_bias".into(), "position_ids".into()]
        } else {
            vec!["embeddings.position_ids".into(), "embeddings.token_type_ids".into()]
        };
        HfNameMap { prefixes: vec![format!("{p}.")], ignore_suffixes, tied, legacy_layer_norm: true, transposed: vec![] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_its_default_arch_and_a_base_model() {
        for f in FAMILIES {
            assert_eq!(Family::from_model_type(f.model_type()), Some(f));
            assert_eq!(f.default_arch().family, f);
            assert!(ARCHITECTURES.iter().any(|a| a.family == f && a.task == Task::Base), "{f:?}");
            assert!(f.defaults().is_object());
        }
        let mut names: Vec<_> = ARCHITECTURES.iter().map(|a| a.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ARCHITECTURES.len(), "an architecture is listed twice");
    }
}
