//! [`EncoderConfig`]: BERT's field names, holding BERT, RoBERTa, ALBERT, DistilBERT and ELECTRA.
use super::{check, check_extra_probs, check_nonzero, check_prob, check_unsupported, extra_f64, Activation, Extra, ModelConfig};
use crate::family::Family;
use kiln_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An encoder's hyper-parameters: BERT's field names (HF `BertConfig`); the other encoders of the
/// family are read into them by their adapter (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// Which member (set from `model_type`, not a JSON field).
    #[serde(skip)]
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// `"gelu"` (exact erf) for BERT; see [`Activation::from_hf`].
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    /// 0: no token types (DistilBERT).
    pub type_vocab_size: usize,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<u32>,
    /// ALBERT / ELECTRA: the embeddings' width E (projected to `hidden_size` when it differs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
    /// ALBERT: layers are shared in this many groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_hidden_groups: Option<usize>,
    /// ALBERT: layers per group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_group_num: Option<usize>,
    /// Classification labels (`{"0": "LABEL_0", ...}`); their count is [`ModelConfig::num_labels`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, i64>>,
    /// Every other field of the file, written back unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

impl EncoderConfig {
    /// transformers' defaults for `family` (an encoder).
    pub fn defaults(family: Family) -> EncoderConfig {
        match ModelConfig::from_value(serde_json::json!({ "model_type": family.model_type() }), "<defaults>", false) {
            Ok(ModelConfig::Encoder(c)) => c,
            _ => unreachable!("the defaults of {family:?} are an encoder config"),
        }
    }
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }
    /// Longest sequence the position embeddings allow (RoBERTa: minus the padding offset, so 512
    /// for its 514 positions).
    pub fn max_positions(&self) -> usize {
        match self.family {
            Family::Roberta => self.max_position_embeddings.saturating_sub(self.pad_token_id.unwrap_or(1) as usize + 1),
            _ => self.max_position_embeddings,
        }
    }
    /// The embeddings' width (`embedding_size`, else `hidden_size`).
    pub fn embedding_dim(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }
    /// The parsed `hidden_act`.
    pub fn activation(&self) -> Result<Activation> {
        Activation::from_hf(&self.hidden_act)
    }
    /// A float field kept in `extra` (`classifier_dropout`, `qa_dropout`, ...).
    pub fn extra_f64(&self, key: &str) -> Option<f64> {
        extra_f64(&self.extra, key)
    }
    /// Checks sizes, probabilities, eps, the activation and the family's own fields; errors say
    /// which field is wrong.
    pub fn validate(&self) -> Result<()> {
        let m = self.family.model_type();
        check_nonzero(
            m,
            &[
                ("vocab_size", self.vocab_size),
                ("hidden_size", self.hidden_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("num_attention_heads", self.num_attention_heads),
                ("intermediate_size", self.intermediate_size),
                ("max_position_embeddings", self.max_position_embeddings),
            ],
        )?;
        if self.family != Family::DistilBert {
            check_nonzero(m, &[("type_vocab_size", self.type_vocab_size)])?;
        }
        for (k, v) in [("embedding_size", self.embedding_size), ("num_hidden_groups", self.num_hidden_groups), ("inner_group_num", self.inner_group_num)] {
            check(v != Some(0), m, || format!("{k} must be > 0"))?;
        }
        check(self.hidden_size.is_multiple_of(self.num_attention_heads), m, || {
            format!("hidden_size {} is not divisible by num_attention_heads {}", self.hidden_size, self.num_attention_heads)
        })?;
        check_prob(m, "hidden_dropout_prob", self.hidden_dropout_prob)?;
        check_prob(m, "attention_probs_dropout_prob", self.attention_probs_dropout_prob)?;
        check_extra_probs(m, &self.extra, &["classifier_dropout", "classifier_dropout_prob", "qa_dropout", "seq_classif_dropout", "summary_last_dropout"])?;
        check(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite(), m, || format!("layer_norm_eps = {} must be > 0", self.layer_norm_eps))?;
        if let Some(p) = self.pad_token_id {
            // nn.Embedding(padding_idx=pad) refuses a pad outside the table
            check((p as usize) < self.vocab_size, m, || format!("pad_token_id {p} >= vocab_size {}", self.vocab_size))?;
        }
        if self.family == Family::Roberta {
            // positions start after the padding index
            let pad = self.pad_token_id.unwrap_or(1) as usize;
            check(self.max_position_embeddings > pad + 1, m, || format!("max_position_embeddings {} must exceed pad_token_id + 1 = {}", self.max_position_embeddings, pad + 1))?;
        }
        check_unsupported(m, &self.extra, "position_embedding_type", "absolute".into())?;
        check_unsupported(m, &self.extra, "is_decoder", false.into())?;
        check_unsupported(m, &self.extra, "add_cross_attention", false.into())?;
        self.activation().map_err(|e| Error::msg(format!("invalid {m} config: hidden_act: {e}")))?;
        Ok(())
    }
}

