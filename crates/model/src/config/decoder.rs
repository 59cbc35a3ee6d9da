//! [`DecoderConfig`]: GPT-2's field names, holding GPT-2 and GPT-1.
use super::{check, check_extra_probs, check_nonzero, check_prob, check_unsupported, extra_f64, yes, Activation, Extra, ModelConfig};
use crate::family::Family;
use kiln_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A decoder's hyper-parameters: GPT-2's field names (HF `GPT2Config`); GPT-1 is read into them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    /// Which member (set from `model_type`, not a JSON field).
    #[serde(skip)]
    pub family: Family,
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Feed-forward width; `null` means `4 * n_embd` (see [`DecoderConfig::inner_size`]).
    pub n_inner: Option<usize>,
    /// `"gelu_new"` (tanh) for GPT-2; see [`Activation::from_hf`].
    pub activation_function: String,
    pub resid_pdrop: f64,
    pub embd_pdrop: f64,
    pub attn_pdrop: f64,
    pub layer_norm_epsilon: f64,
    pub initializer_range: f64,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Pools the last non-padding token in `GPT2ForSequenceClassification`.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// The LM head shares the token embedding (transformers' default). When false, the head is its
    /// own `lm_head.weight`.
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, i64>>,
    /// Every other field of the file, written back unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

impl DecoderConfig {
    /// transformers' defaults for `family` (a decoder).
    pub fn defaults(family: Family) -> DecoderConfig {
        match ModelConfig::from_value(serde_json::json!({ "model_type": family.model_type() }), "<defaults>", false) {
            Ok(ModelConfig::Decoder(c)) => c,
            _ => unreachable!("the defaults of {family:?} are a decoder config"),
        }
    }
    /// The feed-forward width: `n_inner`, or `4 * n_embd` when it is `null`.
    pub fn inner_size(&self) -> usize {
        // (saturating: a huge n_embd is refused by name in crate::limits, not by an overflow here)
        self.n_inner.unwrap_or(self.n_embd.saturating_mul(4))
    }
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }
    /// The parsed `activation_function` (GPT-1's `afn`: `"gelu"` is the tanh form there).
    pub fn activation(&self) -> Result<Activation> {
        match self.family {
            Family::OpenAiGpt => Activation::from_hf_gpt1(&self.activation_function),
            _ => Activation::from_hf(&self.activation_function),
        }
    }
    /// A float field kept in `extra` (`summary_first_dropout`, ...).
    pub fn extra_f64(&self, key: &str) -> Option<f64> {
        extra_f64(&self.extra, key)
    }
    /// Checks sizes, probabilities, eps and the activation; errors say which field is wrong.
    pub fn validate(&self) -> Result<()> {
        let m = self.family.model_type();
        check_nonzero(
            m,
            &[
                ("vocab_size", self.vocab_size),
                ("n_positions", self.n_positions),
                ("n_embd", self.n_embd),
                ("n_layer", self.n_layer),
                ("n_head", self.n_head),
                ("n_inner", self.inner_size()),
            ],
        )?;
        check(self.n_embd.is_multiple_of(self.n_head), m, || format!("n_embd {} is not divisible by n_head {}", self.n_embd, self.n_head))?;
        check_prob(m, "resid_pdrop", self.resid_pdrop)?;
        check_prob(m, "embd_pdrop", self.embd_pdrop)?;
        check_prob(m, "attn_pdrop", self.attn_pdrop)?;
        check_extra_probs(m, &self.extra, &["summary_first_dropout", "summary_last_dropout", "classifier_dropout"])?;
        check(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite(), m, || {
            format!("layer_norm_epsilon = {} must be > 0", self.layer_norm_epsilon)
        })?;
        check_unsupported(m, &self.extra, "scale_attn_weights", true.into())?;
        check_unsupported(m, &self.extra, "scale_attn_by_inverse_layer_idx", false.into())?;
        check_unsupported(m, &self.extra, "add_cross_attention", false.into())?;
        self.activation().map_err(|e| Error::msg(format!("invalid {m} config: activation_function: {e}")))?;
        Ok(())
    }
    /// Token ids transformers accepts with a warning: outside the vocabulary (its `GPT2Config()`
    /// writes 50256 whatever the vocabulary size). They are never looked up by kiln's forward.
    pub(super) fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for (name, id) in [("bos_token_id", self.bos_token_id), ("eos_token_id", self.eos_token_id), ("pad_token_id", self.pad_token_id)] {
            if let Some(id) = id.filter(|&i| i as usize >= self.vocab_size) {
                w.push(format!("{name} {id} is outside the vocabulary (vocab_size {}); kept, as transformers does", self.vocab_size));
            }
        }
        w
    }
}

