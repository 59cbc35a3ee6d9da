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
use std::path::Path;

mod decoder;
mod encoder;
pub use decoder::DecoderConfig;
pub use encoder::EncoderConfig;

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

pub(crate) fn yes() -> bool {
    true
}

pub(crate) fn check(cond: bool, model: &str, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::msg(format!("invalid {model} config: {}", msg())))
    }
}

pub(crate) fn check_prob(model: &str, name: &str, p: f64) -> Result<()> {
    check((0.0..1.0).contains(&p), model, || format!("{name} = {p} must be in [0, 1)"))
}

pub(crate) fn check_nonzero(model: &str, fields: &[(&str, usize)]) -> Result<()> {
    for (name, v) in fields {
        check(*v > 0, model, || format!("{name} must be > 0"))?;
    }
    Ok(())
}

/// A float field of `extra` (e.g. `classifier_dropout`), `None` when absent or null.
pub(crate) fn extra_f64(extra: &Extra, key: &str) -> Option<f64> {
    extra.get(key).and_then(|v| v.as_f64())
}

/// The dropout probabilities kept in `extra` (`classifier_dropout`, `summary_first_dropout`, ...)
/// must be probabilities too.
pub(crate) fn check_extra_probs(model: &str, extra: &Extra, keys: &[&str]) -> Result<()> {
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
pub(crate) fn check_unsupported(model: &str, extra: &Extra, key: &str, want: serde_json::Value) -> Result<()> {
    match extra.get(key) {
        Some(v) if *v != want && !(v.is_null() && want.is_boolean()) => {
            Err(Error::msg(format!("invalid {model} config: {key} = {v} is not supported by kiln (only {want})")))
        }
        _ => Ok(()),
    }
}

/// A configuration of any member of the family, chosen by the `model_type` field of `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Encoder(EncoderConfig),
    Decoder(DecoderConfig),
}

/// The preset names accepted by [`ModelConfig::preset`].
pub const PRESETS: &[&str] = &["bert-tiny", "bert-base", "bert-large", "roberta-tiny", "albert-tiny", "electra-tiny", "gpt2-tiny", "gpt2", "gpt2-medium"];

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
        if let Some(m) = self.id2label() {
            return m.len();
        }
        self.extra().get("num_labels").and_then(|v| v.as_u64()).map(|n| n as usize).unwrap_or(2)
    }
    /// `id2label` (`{"0": "neg", ...}`), when the config has one.
    pub fn id2label(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        match self {
            ModelConfig::Encoder(c) => c.id2label.as_ref(),
            ModelConfig::Decoder(c) => c.id2label.as_ref(),
        }
    }
    /// Sets `id2label`/`label2id` to `names` in id order (and drops a `num_labels` they replace).
    pub fn set_labels(&mut self, names: &[String]) {
        let id2 = Some(names.iter().enumerate().map(|(i, l)| (i.to_string(), l.clone())).collect());
        let l2 = Some(names.iter().enumerate().map(|(i, l)| (l.clone(), i as i64)).collect());
        match self {
            ModelConfig::Encoder(c) => (c.id2label, c.label2id) = (id2, l2),
            ModelConfig::Decoder(c) => (c.id2label, c.label2id) = (id2, l2),
        }
        self.extra_mut().remove("num_labels");
    }
    /// Sets `id2label`/`label2id` to `LABEL_0..LABEL_{n-1}` (HF's default names).
    pub fn set_num_labels(&mut self, n: usize) {
        self.set_labels(&(0..n).map(|i| format!("LABEL_{i}")).collect::<Vec<_>>());
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
        // the other encoders' pre-training architectures at bert-tiny's size
        let tiny = |family: Family, arch: &str| {
            let mut c = EncoderConfig::defaults(family);
            (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) = (2, 128, 2, 512);
            c.embedding_size = c.embedding_size.map(|_| 128);
            if family == Family::Roberta {
                c.type_vocab_size = 1;
                c.max_position_embeddings = 514;
            }
            c.extra.insert("architectures".into(), serde_json::json!([arch]));
            ModelConfig::Encoder(c)
        };
        Ok(match name {
            "roberta-tiny" => tiny(Family::Roberta, "RobertaForMaskedLM"),
            "albert-tiny" => tiny(Family::Albert, "AlbertForPreTraining"),
            "electra-tiny" => tiny(Family::Electra, "ElectraForPreTraining"),
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
        let text = crate::io::read_input_text(&p)?;
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

    /// The text of `config.json`: [`ModelConfig::to_json_string`] and a final newline.
    pub fn to_json_file_string(&self) -> Result<String> {
        Ok(self.to_json_string()? + "\n")
    }

    /// Writes `config.json` atomically: `path` is the file or a directory (created if needed).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut p = path.as_ref().to_path_buf();
        if p.is_dir() || p.extension().is_none() {
            std::fs::create_dir_all(&p).map_err(|e| io_err(&p, e))?;
            p = p.join("config.json");
        }
        atomic_write(&p, self.to_json_file_string()?.as_bytes())
    }

    /// A stable 64-bit FNV-1a hash of the canonical JSON (to check that a resumed run uses the
    /// same model), as 16 hex digits.
    pub fn hash_hex(&self) -> Result<String> {
        Ok(format!("{:016x}", crate::io::fnv1a(self.to_json_string()?.as_bytes())))
    }
}
