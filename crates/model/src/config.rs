//! Model configurations in Hugging Face `config.json` layout.
//!
//! Two structs hold every member of the family: [`EncoderConfig`] (BERT's field names; RoBERTa,
//! ALBERT, DistilBERT and ELECTRA map onto them) and [`DecoderConfig`] (GPT-2's field names; GPT-1
//! maps onto them). Reading a file goes through the family's adapter ([`crate::family::Family`]):
//! its renames (DistilBERT's `dim` is `hidden_size`, GPT-1's `afn` is `activation_function`), then
//! transformers' class defaults for every field the file omits, then validation. What transformers
//! accepts with a warning (a `bos_token_id` outside a small vocabulary) kiln accepts with a warning;
//! what it rejects, or what kiln cannot compute faithfully, is an error naming the field. Fields kiln
//! does not use are kept in `extra` and written back unchanged, under the family's own names.
//!
//! ```
//! use kiln_model::config::ModelConfig;
//! let cfg = ModelConfig::preset("gpt2-tiny")?;
//! assert_eq!(cfg.model_type(), "gpt2");
//! let json = cfg.to_json_string()?;
//! assert_eq!(ModelConfig::from_json_str(&json, "<memory>")?, cfg);
//! # Ok::<(), kiln_tensor::Error>(())
//! ```
use crate::family::{Arch, Family};
use crate::io::{atomic_write, io_err};
use kiln_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Extra JSON fields carried through unchanged.
pub type Extra = serde_json::Map<String, serde_json::Value>;

/// The activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)` with erf (HF `"gelu"` in BERT-style encoders).
    Gelu,
    /// Tanh-approximated GELU (HF `"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`; GPT-2, ALBERT,
    /// and GPT-1's `"gelu"`, see [`Activation::from_hf_gpt1`]).
    GeluTanh,
    /// `max(x, 0)` (HF `"relu"`, e.g. DistilBERT's `activation`).
    Relu,
    /// `tanh` (HF `"tanh"`).
    Tanh,
}

impl Activation {
    /// Parses an HF activation name; unknown names are an error listing the supported ones.
    pub fn from_hf(name: &str) -> Result<Activation> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            "tanh" => Ok(Activation::Tanh),
            other => Err(Error::msg(format!(
                "unsupported activation '{other}' (supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, tanh)"
            ))),
        }
    }
    /// GPT-1's `afn`: its modeling file maps `"gelu"` to the tanh form (`gelu_new`).
    pub fn from_hf_gpt1(name: &str) -> Result<Activation> {
        if name == "gelu" {
            return Ok(Activation::GeluTanh);
        }
        Self::from_hf(name)
    }
}

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

fn yes() -> bool {
    true
}

fn check(cond: bool, model: &str, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::msg(format!("invalid {model} config: {}", msg())))
    }
}

fn check_prob(model: &str, name: &str, p: f64) -> Result<()> {
    check((0.0..1.0).contains(&p), model, || format!("{name} = {p} must be in [0, 1)"))
}

fn check_nonzero(model: &str, fields: &[(&str, usize)]) -> Result<()> {
    for (name, v) in fields {
        check(*v > 0, model, || format!("{name} must be > 0"))?;
    }
    Ok(())
}

/// A float field of `extra` (e.g. `classifier_dropout`), `None` when absent or null.
fn extra_f64(extra: &Extra, key: &str) -> Option<f64> {
    extra.get(key).and_then(|v| v.as_f64())
}

/// The dropout probabilities kept in `extra` (`classifier_dropout`, `summary_first_dropout`, ...)
/// must be probabilities too.
fn check_extra_probs(model: &str, extra: &Extra, keys: &[&str]) -> Result<()> {
    for k in keys {
        if let Some(v) = extra.get(*k).filter(|v| !v.is_null()) {
            let p = v.as_f64().ok_or_else(|| Error::msg(format!("invalid {model} config: {k} must be a number or null, got {v}")))?;
            check_prob(model, k, p)?;
        }
    }
    Ok(())
}

/// `extra[key]` must be `want` (or absent): features kiln does not compute are refused rather
/// than silently ignored.
fn check_unsupported(model: &str, extra: &Extra, key: &str, want: serde_json::Value) -> Result<()> {
    match extra.get(key) {
        Some(v) if *v != want && !(v.is_null() && want.is_boolean()) => {
            Err(Error::msg(format!("invalid {model} config: {key} = {v} is not supported by kiln (only {want})")))
        }
        _ => Ok(()),
    }
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
        self.n_inner.unwrap_or(4 * self.n_embd)
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
    fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for (name, id) in [("bos_token_id", self.bos_token_id), ("eos_token_id", self.eos_token_id), ("pad_token_id", self.pad_token_id)] {
            if let Some(id) = id.filter(|&i| i as usize >= self.vocab_size) {
                w.push(format!("{name} {id} is outside the vocabulary (vocab_size {}); kept, as transformers does", self.vocab_size));
            }
        }
        w
    }
}

/// A configuration of any member of the family, chosen by the `model_type` field of `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Encoder(EncoderConfig),
    Decoder(DecoderConfig),
}

/// The preset names accepted by [`ModelConfig::preset`].
pub const PRESETS: &[&str] = &["bert-tiny", "bert-base", "bert-large", "gpt2-tiny", "gpt2", "gpt2-medium"];

impl ModelConfig {
    /// The family member.
    pub fn family(&self) -> Family {
        match self {
            ModelConfig::Encoder(c) => c.family,
            ModelConfig::Decoder(c) => c.family,
        }
    }
    /// The HF `model_type` (`"bert"`, `"roberta"`, ..., `"gpt2"`).
    pub fn model_type(&self) -> &'static str {
        self.family().model_type()
    }
    fn extra(&self) -> &Extra {
        match self {
            ModelConfig::Encoder(c) => &c.extra,
            ModelConfig::Decoder(c) => &c.extra,
        }
    }
    fn extra_mut(&mut self) -> &mut Extra {
        match self {
            ModelConfig::Encoder(c) => &mut c.extra,
            ModelConfig::Decoder(c) => &mut c.extra,
        }
    }
    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Encoder(c) => c.vocab_size,
            ModelConfig::Decoder(c) => c.vocab_size,
        }
    }
    /// Sets the vocabulary size (e.g. to a freshly trained tokenizer's). Token ids stored in the
    /// config (pad / bos / eos) that fall outside the new vocabulary are reset to `None`.
    pub fn set_vocab_size(&mut self, n: usize) {
        let fix = |id: &mut Option<u32>| {
            if id.is_some_and(|i| i as usize >= n) {
                *id = None;
            }
        };
        match self {
            ModelConfig::Encoder(c) => {
                c.vocab_size = n;
                fix(&mut c.pad_token_id);
            }
            ModelConfig::Decoder(c) => {
                c.vocab_size = n;
                fix(&mut c.bos_token_id);
                fix(&mut c.eos_token_id);
                fix(&mut c.pad_token_id);
            }
        }
        for k in ["bos_token_id", "eos_token_id"] {
            if self.extra().get(k).and_then(|v| v.as_u64()).is_some_and(|i| i as usize >= n) {
                self.extra_mut().insert(k.into(), serde_json::Value::Null);
            }
        }
    }
    /// The HF architecture name (`architectures[0]` of `config.json`, e.g.
    /// `"BertForSequenceClassification"`), if the file names one.
    pub fn architecture(&self) -> Option<&str> {
        self.extra().get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str())
    }
    /// The architecture to build: `architectures[0]`, or the family's pre-training LM when the
    /// config names none. An unknown name, or one of another family, is an error listing the
    /// supported ones.
    pub fn arch(&self) -> Result<Arch> {
        let fam = self.family();
        let Some(name) = self.architecture() else { return Ok(fam.default_arch()) };
        match Arch::by_name(name) {
            Some(a) if a.family == fam => Ok(a),
            Some(a) => Err(Error::msg(format!("architecture '{name}' is a {} model, but model_type is '{}'", a.family.model_type(), fam.model_type()))),
            None => Err(Error::msg(format!("unsupported architecture '{name}' (supported: {})", crate::family::supported_architectures()))),
        }
    }
    /// Sets `architectures` to `[name]` (e.g. turn a `bert-tiny` preset into a
    /// `BertForSequenceClassification`; set the label count with [`ModelConfig::set_num_labels`]).
    pub fn set_architecture(&mut self, name: &str) {
        self.extra_mut().insert("architectures".into(), serde_json::json!([name]));
    }
    /// Number of classification labels (`id2label` size, or `num_labels`, default 2).
    pub fn num_labels(&self) -> usize {
        let ids = match self {
            ModelConfig::Encoder(c) => &c.id2label,
            ModelConfig::Decoder(c) => &c.id2label,
        };
        if let Some(m) = ids {
            return m.len();
        }
        self.extra().get("num_labels").and_then(|v| v.as_u64()).map(|n| n as usize).unwrap_or(2)
    }
    /// Sets `id2label`/`label2id` to `LABEL_0..LABEL_{n-1}` (HF's default names).
    pub fn set_num_labels(&mut self, n: usize) {
        let id2 = Some((0..n).map(|i| (i.to_string(), format!("LABEL_{i}"))).collect());
        let l2 = Some((0..n).map(|i| (format!("LABEL_{i}"), i as i64)).collect());
        match self {
            ModelConfig::Encoder(c) => (c.id2label, c.label2id) = (id2, l2),
            ModelConfig::Decoder(c) => (c.id2label, c.label2id) = (id2, l2),
        }
        self.extra_mut().remove("num_labels");
    }
    /// Longest sequence the position embeddings allow (RoBERTa: minus the padding offset).
    pub fn max_positions(&self) -> usize {
        match self {
            ModelConfig::Encoder(c) => c.max_positions(),
            ModelConfig::Decoder(c) => c.n_positions,
        }
    }
    /// Hidden width.
    pub fn hidden_size(&self) -> usize {
        match self {
            ModelConfig::Encoder(c) => c.hidden_size,
            ModelConfig::Decoder(c) => c.n_embd,
        }
    }
    /// Number of transformer blocks.
    pub fn num_layers(&self) -> usize {
        match self {
            ModelConfig::Encoder(c) => c.num_hidden_layers,
            ModelConfig::Decoder(c) => c.n_layer,
        }
    }
    /// LayerNorm epsilon.
    pub fn layer_norm_eps(&self) -> f64 {
        match self {
            ModelConfig::Encoder(c) => c.layer_norm_eps,
            ModelConfig::Decoder(c) => c.layer_norm_epsilon,
        }
    }
    /// The feed-forward activation.
    pub fn activation(&self) -> Result<Activation> {
        match self {
            ModelConfig::Encoder(c) => c.activation(),
            ModelConfig::Decoder(c) => c.activation(),
        }
    }
    /// Validates the inner config and that its architecture is one kiln builds.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Encoder(c) => c.validate()?,
            ModelConfig::Decoder(c) => c.validate()?,
        }
        self.arch().map(|_| ())
    }

    /// A named preset: `bert-tiny` (L2 H128 A2), `bert-base` (L12 H768 A12), `bert-large`
    /// (L24 H1024 A16), `gpt2-tiny` (L2 H128 A2, 256 positions), `gpt2` (124M), `gpt2-medium` (355M).
    /// Presets carry the HF vocabulary sizes (30522 / 50257); set another with
    /// [`ModelConfig::set_vocab_size`].
    pub fn preset(name: &str) -> Result<ModelConfig> {
        let bert = |l: usize, h: usize, a: usize| {
            let mut c = EncoderConfig::defaults(Family::Bert);
            c.num_hidden_layers = l;
            c.hidden_size = h;
            c.num_attention_heads = a;
            c.intermediate_size = 4 * h;
            c.extra.insert("architectures".into(), serde_json::json!(["BertForPreTraining"]));
            ModelConfig::Encoder(c)
        };
        let gpt = |l: usize, h: usize, a: usize, pos: usize| {
            let mut c = DecoderConfig::defaults(Family::Gpt2);
            c.n_layer = l;
            c.n_embd = h;
            c.n_head = a;
            c.n_positions = pos;
            c.extra.insert("architectures".into(), serde_json::json!(["GPT2LMHeadModel"]));
            ModelConfig::Decoder(c)
        };
        Ok(match name {
            "bert-tiny" => bert(2, 128, 2),
            "bert-base" => bert(12, 768, 12),
            "bert-large" => bert(24, 1024, 16),
            "gpt2-tiny" => gpt(2, 128, 2, 256),
            "gpt2" => gpt(12, 768, 12, 1024),
            "gpt2-medium" => gpt(24, 1024, 16, 1024),
            _ => return Err(Error::msg(format!("unknown model preset '{name}' (known: {})", PRESETS.join(", ")))),
        })
    }

    /// Parses `config.json` text; `origin` (a path) is named in every error. Validates the result;
    /// warnings (what transformers also only warns about) go to stderr.
    pub fn from_json_str(text: &str, origin: &str) -> Result<ModelConfig> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::msg(format!("{origin}: invalid JSON: {e}")))?;
        Self::from_value(v, origin, true)
    }

    /// The family's adapter: renames, defaults, fixed fields, then the typed struct.
    fn from_value(v: serde_json::Value, origin: &str, validate: bool) -> Result<ModelConfig> {
        let serde_json::Value::Object(mut obj) = v else {
            return Err(Error::msg(format!("{origin}: config.json must hold a JSON object")));
        };
        let fam = match obj.remove("model_type") {
            Some(serde_json::Value::String(s)) => Family::from_model_type(&s)
                .ok_or_else(|| Error::msg(format!("{origin}: unknown model_type '{s}' (supported: {})", Family::supported())))?,
            Some(other) => return Err(Error::msg(format!("{origin}: model_type must be a string, got {other}"))),
            None => return Err(Error::msg(format!("{origin}: no \"model_type\" field (supported: {})", Family::supported()))),
        };
        let mt = fam.model_type();
        if let serde_json::Value::Object(defaults) = fam.defaults() {
            for (k, d) in defaults {
                obj.entry(k).or_insert(d);
            }
        }
        for (hf, ours) in fam.renames() {
            if let Some(x) = obj.remove(*hf) {
                obj.insert(ours.to_string(), x);
            }
        }
        for (k, x) in fam.fixed() {
            obj.insert(k.into(), x);
        }
        // errors name the field (`vocab_size: invalid type: string "many", expected usize`)
        let bad = |e: serde_path_to_error::Error<serde_json::Error>| Error::msg(format!("{origin}: invalid {mt} config: {}: {}", e.path(), e.inner()));
        let cfg = if fam.is_decoder() {
            let mut c: DecoderConfig = serde_path_to_error::deserialize(serde_json::Value::Object(obj)).map_err(bad)?;
            c.family = fam;
            if validate {
                for w in c.warnings() {
                    eprintln!("warning: {origin}: {w}");
                }
            }
            ModelConfig::Decoder(c)
        } else {
            let mut c: EncoderConfig = serde_path_to_error::deserialize(serde_json::Value::Object(obj)).map_err(bad)?;
            c.family = fam;
            ModelConfig::Encoder(c)
        };
        if validate {
            cfg.validate().map_err(|e| Error::msg(format!("{origin}: {e}")))?;
        }
        Ok(cfg)
    }

    /// Loads `config.json`: `path` is the file or a model directory holding it.
    pub fn load(path: impl AsRef<Path>) -> Result<ModelConfig> {
        let mut p = path.as_ref().to_path_buf();
        if p.is_dir() {
            p = p.join("config.json");
        }
        let text = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
        Self::from_json_str(&text, &p.display().to_string())
    }

    /// `--model DIR|PRESET`: a directory or file with a `config.json`, else a preset name.
    pub fn resolve(spec: &str) -> Result<ModelConfig> {
        let p = Path::new(spec);
        if p.exists() {
            return Self::load(p);
        }
        Self::preset(spec).map_err(|e| Error::msg(format!("'{spec}' is neither a model directory nor a preset: {e}")))
    }

    /// The HF JSON object under the family's own field names, with `model_type` set.
    pub fn to_json_value(&self) -> Result<serde_json::Value> {
        let mut v = match self {
            ModelConfig::Encoder(c) => serde_json::to_value(c),
            ModelConfig::Decoder(c) => serde_json::to_value(c),
        }
        .map_err(|e| Error::msg(format!("config: cannot serialize: {e}")))?;
        let fam = self.family();
        if let serde_json::Value::Object(m) = &mut v {
            for (k, _) in fam.fixed() {
                m.remove(k);
            }
            for (hf, ours) in fam.renames() {
                if let Some(x) = m.remove(*ours) {
                    m.insert(hf.to_string(), x);
                }
            }
            m.insert("model_type".into(), serde_json::Value::String(fam.model_type().into()));
        }
        Ok(v)
    }

    /// Pretty JSON with sorted keys (what [`ModelConfig::save`] writes).
    pub fn to_json_string(&self) -> Result<String> {
        let v = self.to_json_value()?;
        serde_json::to_string_pretty(&v).map_err(|e| Error::msg(format!("config: cannot serialize: {e}")))
    }

    /// Writes `config.json` atomically: `path` is the file or a directory (created if needed).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut p = path.as_ref().to_path_buf();
        if p.is_dir() || p.extension().is_none() {
            std::fs::create_dir_all(&p).map_err(|e| io_err(&p, e))?;
            p = p.join("config.json");
        }
        let mut s = self.to_json_string()?;
        s.push('\n');
        atomic_write(&p, s.as_bytes())
    }

    /// A stable 64-bit FNV-1a hash of the canonical JSON (to check that a resumed run uses the
    /// same model), as 16 hex digits.
    pub fn hash_hex(&self) -> Result<String> {
        Ok(format!("{:016x}", crate::io::fnv1a(self.to_json_string()?.as_bytes())))
    }
}
