//! Model configurations in Hugging Face `config.json` layout.
//!
//! [`BertConfig`] and [`Gpt2Config`] use the exact HF field names, so a `config.json` written by
//! `transformers` loads here and one written here loads in `transformers`. Fields kiln does not
//! use (`architectures`, `dtype`, `transformers_version`, ...) are kept in `extra` and written back
//! unchanged. [`ModelConfig`] dispatches on `model_type` (`"bert"` | `"gpt2"`).
//!
//! ```
//! use kiln_model::config::ModelConfig;
//! let cfg = ModelConfig::preset("gpt2-tiny")?;
//! assert_eq!(cfg.model_type(), "gpt2");
//! let json = cfg.to_json_string()?;
//! assert_eq!(ModelConfig::from_json_str(&json, "<memory>")?, cfg);
//! # Ok::<(), kiln_tensor::Error>(())
//! ```
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
    /// Exact GELU, `x·Φ(x)` with erf (HF `"gelu"`, BERT).
    Gelu,
    /// Tanh-approximated GELU (HF `"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`; GPT-2).
    GeluTanh,
}

impl Activation {
    /// Parses an HF activation name; unknown names are an error listing the supported ones.
    pub fn from_hf(name: &str) -> Result<Activation> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            other => Err(Error::msg(format!(
                "unsupported activation '{other}' (supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast)"
            ))),
        }
    }
}

fn d_bert_vocab() -> usize {
    30522
}
fn d_768() -> usize {
    768
}
fn d_12() -> usize {
    12
}
fn d_3072() -> usize {
    3072
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_gelu_new() -> String {
    "gelu_new".into()
}
fn d_01() -> f64 {
    0.1
}
fn d_512() -> usize {
    512
}
fn d_2() -> usize {
    2
}
fn d_002() -> f64 {
    0.02
}
fn d_eps_bert() -> f64 {
    1e-12
}
fn d_eps_gpt() -> f64 {
    1e-5
}
fn d_pad0() -> Option<u32> {
    Some(0)
}
fn d_gpt_vocab() -> usize {
    50257
}
fn d_1024() -> usize {
    1024
}
fn d_eot() -> Option<u32> {
    Some(50256)
}
fn d_true() -> bool {
    true
}

/// BERT hyper-parameters (HF `BertConfig`, `model_type: "bert"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    #[serde(default = "d_bert_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_768")]
    pub hidden_size: usize,
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_12")]
    pub num_attention_heads: usize,
    #[serde(default = "d_3072")]
    pub intermediate_size: usize,
    /// `"gelu"` (exact erf) for BERT; see [`Activation::from_hf`].
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_01")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d_01")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d_512")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_2")]
    pub type_vocab_size: usize,
    #[serde(default = "d_002")]
    pub initializer_range: f64,
    /// 1e-12 for BERT.
    #[serde(default = "d_eps_bert")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_pad0")]
    pub pad_token_id: Option<u32>,
    /// Classification labels (`{"0": "LABEL_0", ...}`); their count is [`BertConfig::num_labels`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, i64>>,
    /// Every other field of the file, written back unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

/// GPT-2 hyper-parameters (HF `GPT2Config`, `model_type: "gpt2"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    #[serde(default = "d_gpt_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_1024")]
    pub n_positions: usize,
    #[serde(default = "d_768")]
    pub n_embd: usize,
    #[serde(default = "d_12")]
    pub n_layer: usize,
    #[serde(default = "d_12")]
    pub n_head: usize,
    /// Feed-forward width; `null` means `4 * n_embd` (see [`Gpt2Config::inner_size`]).
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// `"gelu_new"` (tanh) for GPT-2; see [`Activation::from_hf`].
    #[serde(default = "d_gelu_new")]
    pub activation_function: String,
    #[serde(default = "d_01")]
    pub resid_pdrop: f64,
    #[serde(default = "d_01")]
    pub embd_pdrop: f64,
    #[serde(default = "d_01")]
    pub attn_pdrop: f64,
    /// 1e-5 for GPT-2.
    #[serde(default = "d_eps_gpt")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "d_002")]
    pub initializer_range: f64,
    #[serde(default = "d_eot")]
    pub bos_token_id: Option<u32>,
    #[serde(default = "d_eot")]
    pub eos_token_id: Option<u32>,
    /// The LM head shares `wte` (always true for GPT-2 checkpoints).
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    /// Every other field of the file, written back unchanged.
    #[serde(flatten)]
    pub extra: Extra,
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

impl BertConfig {
    /// Number of classification labels (`id2label` size, or `num_labels` in `extra`, default 2).
    pub fn num_labels(&self) -> usize {
        if let Some(m) = &self.id2label {
            return m.len();
        }
        self.extra.get("num_labels").and_then(|v| v.as_u64()).map(|n| n as usize).unwrap_or(2)
    }
    /// Sets `id2label`/`label2id` to `LABEL_0..LABEL_{n-1}` (HF's default names).
    pub fn set_num_labels(&mut self, n: usize) {
        self.id2label = Some((0..n).map(|i| (i.to_string(), format!("LABEL_{i}"))).collect());
        self.label2id = Some((0..n).map(|i| (format!("LABEL_{i}"), i as i64)).collect());
    }
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }
    /// The parsed `hidden_act`.
    pub fn activation(&self) -> Result<Activation> {
        Activation::from_hf(&self.hidden_act)
    }
    /// Checks sizes, probabilities, eps and the activation; errors say which field is wrong.
    pub fn validate(&self) -> Result<()> {
        let m = "bert";
        check_nonzero(
            m,
            &[
                ("vocab_size", self.vocab_size),
                ("hidden_size", self.hidden_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("num_attention_heads", self.num_attention_heads),
                ("intermediate_size", self.intermediate_size),
                ("max_position_embeddings", self.max_position_embeddings),
                ("type_vocab_size", self.type_vocab_size),
            ],
        )?;
        check(self.hidden_size.is_multiple_of(self.num_attention_heads), m, || {
            format!("hidden_size {} is not divisible by num_attention_heads {}", self.hidden_size, self.num_attention_heads)
        })?;
        check_prob(m, "hidden_dropout_prob", self.hidden_dropout_prob)?;
        check_prob(m, "attention_probs_dropout_prob", self.attention_probs_dropout_prob)?;
        check(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite(), m, || format!("layer_norm_eps = {} must be > 0", self.layer_norm_eps))?;
        if let Some(p) = self.pad_token_id {
            check((p as usize) < self.vocab_size, m, || format!("pad_token_id {p} >= vocab_size {}", self.vocab_size))?;
        }
        self.activation().map_err(|e| Error::msg(format!("invalid bert config: hidden_act: {e}")))?;
        Ok(())
    }
}

impl Gpt2Config {
    /// The feed-forward width: `n_inner`, or `4 * n_embd` when it is `null`.
    pub fn inner_size(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }
    /// The parsed `activation_function`.
    pub fn activation(&self) -> Result<Activation> {
        Activation::from_hf(&self.activation_function)
    }
    /// Checks sizes, probabilities, eps and the activation; errors say which field is wrong.
    pub fn validate(&self) -> Result<()> {
        let m = "gpt2";
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
        check(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite(), m, || {
            format!("layer_norm_epsilon = {} must be > 0", self.layer_norm_epsilon)
        })?;
        for (name, id) in [("bos_token_id", self.bos_token_id), ("eos_token_id", self.eos_token_id)] {
            if let Some(id) = id {
                check((id as usize) < self.vocab_size, m, || format!("{name} {id} >= vocab_size {}", self.vocab_size))?;
            }
        }
        self.activation().map_err(|e| Error::msg(format!("invalid gpt2 config: activation_function: {e}")))?;
        Ok(())
    }
}

/// A BERT or GPT-2 configuration, chosen by the `model_type` field of `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Bert(BertConfig),
    Gpt2(Gpt2Config),
}

/// The preset names accepted by [`ModelConfig::preset`].
pub const PRESETS: &[&str] = &["bert-tiny", "bert-base", "bert-large", "gpt2-tiny", "gpt2", "gpt2-medium"];

impl ModelConfig {
    /// `"bert"` or `"gpt2"`.
    pub fn model_type(&self) -> &'static str {
        match self {
            ModelConfig::Bert(_) => "bert",
            ModelConfig::Gpt2(_) => "gpt2",
        }
    }
    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.vocab_size,
            ModelConfig::Gpt2(c) => c.vocab_size,
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
            ModelConfig::Bert(c) => {
                c.vocab_size = n;
                fix(&mut c.pad_token_id);
            }
            ModelConfig::Gpt2(c) => {
                c.vocab_size = n;
                fix(&mut c.bos_token_id);
                fix(&mut c.eos_token_id);
            }
        }
    }
    /// The HF architecture name (`architectures[0]` of `config.json`, e.g.
    /// `"BertForSequenceClassification"`), which picks the head [`crate::model::Model::build`] puts on a BERT.
    pub fn architecture(&self) -> Option<&str> {
        let extra = match self {
            ModelConfig::Bert(c) => &c.extra,
            ModelConfig::Gpt2(c) => &c.extra,
        };
        extra.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str())
    }
    /// Sets `architectures` to `[name]` (e.g. turn a `bert-tiny` preset into a
    /// `BertForSequenceClassification`; set the label count with [`BertConfig::set_num_labels`]).
    pub fn set_architecture(&mut self, name: &str) {
        let extra = match self {
            ModelConfig::Bert(c) => &mut c.extra,
            ModelConfig::Gpt2(c) => &mut c.extra,
        };
        extra.insert("architectures".into(), serde_json::json!([name]));
    }
    /// Longest sequence the position embeddings allow.
    pub fn max_positions(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.max_position_embeddings,
            ModelConfig::Gpt2(c) => c.n_positions,
        }
    }
    /// Hidden width.
    pub fn hidden_size(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.hidden_size,
            ModelConfig::Gpt2(c) => c.n_embd,
        }
    }
    /// Number of transformer blocks.
    pub fn num_layers(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.num_hidden_layers,
            ModelConfig::Gpt2(c) => c.n_layer,
        }
    }
    /// LayerNorm epsilon (1e-12 for BERT, 1e-5 for GPT-2 by default).
    pub fn layer_norm_eps(&self) -> f64 {
        match self {
            ModelConfig::Bert(c) => c.layer_norm_eps,
            ModelConfig::Gpt2(c) => c.layer_norm_epsilon,
        }
    }
    /// The feed-forward activation.
    pub fn activation(&self) -> Result<Activation> {
        match self {
            ModelConfig::Bert(c) => c.activation(),
            ModelConfig::Gpt2(c) => c.activation(),
        }
    }
    /// Validates the inner config.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Bert(c) => c.validate(),
            ModelConfig::Gpt2(c) => c.validate(),
        }
    }

    /// A named preset: `bert-tiny` (L2 H128 A2), `bert-base` (L12 H768 A12), `bert-large`
    /// (L24 H1024 A16), `gpt2-tiny` (L2 H128 A2, 256 positions), `gpt2` (124M), `gpt2-medium` (355M).
    /// Presets carry the HF vocabulary sizes (30522 / 50257); set another with
    /// [`ModelConfig::set_vocab_size`].
    pub fn preset(name: &str) -> Result<ModelConfig> {
        let bert = |l: usize, h: usize, a: usize| {
            let mut c: BertConfig = serde_json::from_str("{}").expect("defaults");
            c.num_hidden_layers = l;
            c.hidden_size = h;
            c.num_attention_heads = a;
            c.intermediate_size = 4 * h;
            c.extra.insert("architectures".into(), serde_json::json!(["BertForPreTraining"]));
            ModelConfig::Bert(c)
        };
        let gpt = |l: usize, h: usize, a: usize, pos: usize| {
            let mut c: Gpt2Config = serde_json::from_str("{}").expect("defaults");
            c.n_layer = l;
            c.n_embd = h;
            c.n_head = a;
            c.n_positions = pos;
            c.extra.insert("architectures".into(), serde_json::json!(["GPT2LMHeadModel"]));
            ModelConfig::Gpt2(c)
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

    /// Parses `config.json` text; `origin` (a path) is named in every error. Validates the result.
    pub fn from_json_str(text: &str, origin: &str) -> Result<ModelConfig> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::msg(format!("{origin}: invalid JSON: {e}")))?;
        let mt = match v.get("model_type") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => return Err(Error::msg(format!("{origin}: model_type must be a string, got {other}"))),
            None => return Err(Error::msg(format!("{origin}: no \"model_type\" field (expected \"bert\" or \"gpt2\")"))),
        };
        let bad = |e: serde_json::Error| Error::msg(format!("{origin}: invalid {mt} config: {e}"));
        let cfg = match mt.as_str() {
            "bert" => {
                let mut c: BertConfig = serde_json::from_value(v).map_err(bad)?;
                c.extra.remove("model_type");
                ModelConfig::Bert(c)
            }
            "gpt2" => {
                let mut c: Gpt2Config = serde_json::from_value(v).map_err(bad)?;
                c.extra.remove("model_type");
                ModelConfig::Gpt2(c)
            }
            other => return Err(Error::msg(format!("{origin}: unknown model_type '{other}' (supported: bert, gpt2)"))),
        };
        cfg.validate().map_err(|e| Error::msg(format!("{origin}: {e}")))?;
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

    /// The HF JSON object, with `model_type` set.
    pub fn to_json_value(&self) -> Result<serde_json::Value> {
        let mut v = match self {
            ModelConfig::Bert(c) => serde_json::to_value(c),
            ModelConfig::Gpt2(c) => serde_json::to_value(c),
        }
        .map_err(|e| Error::msg(format!("config: cannot serialize: {e}")))?;
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("model_type".into(), serde_json::Value::String(self.model_type().into()));
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
