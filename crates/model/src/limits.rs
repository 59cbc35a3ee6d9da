//! Limits before allocation: every size a user chooses (a config's dimensions, the CLI's batch,
//! sequence length and vocabulary) is checked before anything is allocated, against what the
//! model can hold (a sequence no longer than its positions) and against what the machine can hold
//! (an estimate of the bytes the job needs). Too large is an error naming the field, the bytes and
//! the memory, where it used to be an abort (`memory allocation of N bytes failed`), sometimes after
//! filling all of memory.
//!
//! # The estimate
//!
//! It is deliberately simple, and a *lower* bound: it refuses what cannot fit, and must never refuse
//! a run that would (GPT-2 medium training at batch 8 × 1024 tokens fits a 24 GB machine; the
//! estimate says 13.6 GiB). Every product is computed with checked arithmetic: a size that
//! overflows 64 bits is an error too, never a wrapped small number.
//!
//! - **parameters**: counted from the config as the stacks and heads build them (embeddings,
//!   attention and feed-forward weights and biases, LayerNorms, projection, pooler, heads), in
//!   elements. ALBERT counts its stored layers (`num_hidden_groups × inner_group_num`).
//! - **loading or inference**: parameters × the bytes of their dtype (4 for f32); for ALBERT also
//!   its plan of the layers run at each depth (8 bytes per layer run).
//! - **training**: parameters × 16 bytes: the f32 weights, their gradients and AdamW's two moments.
//! - **activations** (f32, 4 bytes each), for `batch × seq` tokens:
//!   - training keeps, at every depth, the inputs of the layer's GEMMs for the backward: at least
//!     `3 × hidden + intermediate` values per token (the attention input, its output, the
//!     feed-forward input and hidden), plus the logits and their gradient (`2 × vocab_size` per
//!     token) when the head predicts tokens. Attention scores are not counted (the CPU's fused
//!     attention keeps O(seq) per row);
//!   - inference holds one layer's values at a time: `4 × hidden + intermediate` per token, plus the
//!     logits (`vocab_size` per token) when the head predicts tokens.
//!
//! # The memory
//!
//! On the host, what the OS can give now: `MemAvailable` plus free swap (capped by the cgroup's
//! limit where the process runs under one), out of the total. On a CUDA device, its free memory out
//! of its total, as the driver reports them. Where neither can be read, only overflow is refused.
//!
//! # Naming the field
//!
//! The estimate is a sum of terms, each a product of named sizes (`vocab_size × n_embd`,
//! `n_layer × n_embd × n_inner`, `--batch × --seq × vocab_size`, ...). A refusal names the size
//! that is furthest from its usual value (transformers' default; 8 for a batch) in the largest term:
//! `vocab_size` for a 10¹² vocabulary, `--batch` for a batch of 10¹¹.
use crate::config::ModelConfig;
use crate::family::{Family, Task};
use kiln_tensor::mem::human_bytes;
use kiln_tensor::{DType, Device, Error, Result};

/// Bytes per token that a tokenizer trainer reserves up front for its vocabulary: a hash-map slot
/// (a 24-byte string and its id) and the 24-byte string of the id-to-token table.
pub const TOKENIZER_BYTES_PER_TOKEN: u64 = 56;

/// A size chosen by the user: its name as the user wrote it (`"--batch"`, `"vocab_size"`), and
/// its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub name: &'static str,
    pub value: usize,
}

impl Size {
    pub fn new(name: &'static str, value: usize) -> Size {
        Size { name, value }
    }
}

/// What a command does with the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Hold the parameters in `dtype` (building or loading a model).
    Load { dtype: DType },
    /// Forward passes without gradients on `batch × seq` tokens (eval, embed), f32 parameters.
    Infer { batch: Size, seq: Size },
    /// Training steps on `batch × seq` tokens: f32 parameters, gradients, AdamW state, activations.
    Train { batch: Size, seq: Size },
}

impl Job {
    fn describe(&self) -> String {
        match self {
            Job::Load { dtype } => format!("holding the model's {dtype} parameters"),
            Job::Infer { batch, seq } => format!("running the model on {} × {} = {} × {} tokens", batch.name, seq.name, batch.value, seq.value),
            Job::Train { batch, seq } => format!(
                "training (f32 parameters, gradients, AdamW state and activations for {} × {} = {} × {} tokens)",
                batch.name, seq.name, batch.value, seq.value
            ),
        }
    }
}

/// What a job needs, in bytes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Parameter count.
    pub params: u64,
    /// Parameters and, when training, their gradients and optimizer state.
    pub param_bytes: u64,
    /// Activations (0 for [`Job::Load`]).
    pub activation_bytes: u64,
    /// The sum.
    pub bytes: u64,
}

/// Memory a job may use, in bytes, and where (for messages: `"this machine"`, `"cuda:0"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    pub available: u64,
    pub total: u64,
    pub place: String,
}

impl Memory {
    /// The host's memory: `MemAvailable` + free swap, within the cgroup limit if there is one.
    /// `None` where the OS does not say.
    pub fn host() -> Option<Memory> {
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        let mut total = sys.total_memory();
        let mut available = sys.available_memory().saturating_add(sys.free_swap());
        if let Some(cg) = sys.cgroup_limits() {
            if cg.total_memory > 0 {
                total = total.min(cg.total_memory);
                available = available.min(cg.free_memory.saturating_add(cg.free_swap));
            }
        }
        (total > 0).then(|| Memory { available, total, place: "this machine".into() })
    }
    /// The memory of `device`: the host's for the CPU, the device's free and total memory for a
    /// CUDA device (the host's if the driver does not say).
    pub fn of(device: Device) -> Option<Memory> {
        match device {
            Device::Cpu => Memory::host(),
            Device::Cuda(_) => match kiln_tensor::cuda::memory_info(device) {
                Some((free, total)) if total > 0 => Some(Memory { available: free, total, place: device.to_string() }),
                _ => Memory::host(),
            },
        }
    }
    fn describe(&self) -> String {
        format!("{} of memory available on {} ({} total)", human_bytes(self.available as u128), self.place, human_bytes(self.total as u128))
    }
}

/// One named factor of a term, with its usual value (to say which factor is out of line).
#[derive(Debug, Clone, Copy)]
struct Factor {
    name: &'static str,
    value: u64,
    usual: u64,
}

/// `scale × Π factors` elements (parameters or activations).
#[derive(Debug, Clone)]
struct Term {
    factors: Vec<Factor>,
    scale: u64,
}

impl Term {
    fn elems(&self) -> Option<u64> {
        self.factors.iter().try_fold(self.scale, |acc, f| acc.checked_mul(f.value))
    }
    /// The size for ranking terms (f64: never overflows, only ranks).
    fn magnitude(&self) -> f64 {
        self.factors.iter().fold(self.scale as f64, |acc, f| acc * f.value as f64)
    }
    /// The factor furthest above its usual value.
    fn culprit(&self) -> Option<Factor> {
        let ratio = |f: &Factor| f.value as f64 / f.usual.max(1) as f64;
        self.factors.iter().copied().max_by(|a, b| ratio(a).total_cmp(&ratio(b)))
    }
}

/// The terms of the estimate, split into parameters and activations, with the names the user's
/// config file uses for each field.
struct Terms {
    params: Vec<Term>,
    activations: Vec<Term>,
}

fn f(name: &'static str, value: usize, usual: u64) -> Factor {
    Factor { name, value: value as u64, usual }
}

fn term(scale: u64, factors: &[Factor]) -> Term {
    Term { factors: factors.to_vec(), scale }
}

/// The name of field `ours` in `family`'s own config (DistilBERT's `dim` is kiln's `hidden_size`).
fn field(family: Family, ours: &'static str) -> &'static str {
    family.renames().iter().find(|(_, o)| *o == ours).map_or(ours, |(hf, _)| *hf)
}

fn terms(cfg: &ModelConfig, job: &Job) -> Result<Terms> {
    let arch = cfg.arch()?;
    let labels = matches!(arch.task, Task::SequenceClassification | Task::TokenClassification | Task::QuestionAnswering | Task::MultipleChoice);
    let lm = matches!(arch.task, Task::MaskedLm | Task::PreTraining | Task::CausalLm | Task::DoubleHeads);
    let nl = f("num_labels", cfg.num_labels(), 2);
    let mut p = Vec::new();
    // (hidden, intermediate × its scale, vocabulary, depth factors) for the activations
    let (hidden, (iscale, inner), vocab, depth) = match cfg {
        ModelConfig::Encoder(c) => {
            let fam = c.family;
            let v = f(field(fam, "vocab_size"), c.vocab_size, 30522);
            let h = f(field(fam, "hidden_size"), c.hidden_size, 768);
            let i = f(field(fam, "intermediate_size"), c.intermediate_size, 3072);
            let e = match c.embedding_size {
                Some(n) => f("embedding_size", n, 128),
                None => h,
            };
            let pos = f(field(fam, "max_position_embeddings"), c.max_position_embeddings, 512);
            let types = f("type_vocab_size", c.type_vocab_size, 2);
            let layers = f(field(fam, "num_hidden_layers"), c.num_hidden_layers, 12);
            // the layers stored (ALBERT: its groups), and those run at each depth
            let (stored, depth) = match fam {
                Family::Albert => {
                    let inner_groups = f("inner_group_num", c.inner_group_num.unwrap_or(1), 1);
                    (vec![f("num_hidden_groups", c.num_hidden_groups.unwrap_or(1), 1), inner_groups], vec![layers, inner_groups])
                }
                _ => (vec![layers], vec![layers]),
            };
            let with = |scale: u64, fs: &[Factor]| term(scale, &[&stored[..], fs].concat());
            // embeddings: word, position, token type tables and their LayerNorm, the E → H projection
            p.extend([term(1, &[v, e]), term(1, &[pos, e]), term(1, &[types, e]), term(2, &[e])]);
            if c.embedding_size.is_some_and(|n| n != c.hidden_size) || fam == Family::Albert {
                p.extend([term(1, &[e, h]), term(1, &[h])]);
            }
            // per layer: q, k, v, o ([H, H] + bias), two LayerNorms, the feed-forward [H, I] + [I, H]
            p.extend([with(4, &[h, h]), with(2, &[h, i]), with(9, &[h]), with(1, &[i])]);
            // the pooler (or a classifier's dense) [H, H], the MLM transform H → E and its decoder's
            // bias (the decoder weight is the word embeddings), classifiers
            p.extend([term(1, &[h, h]), term(1, &[h, e]), term(1, &[v])]);
            if labels {
                p.push(term(1, &[h, nl]));
            }
            (h, (1, i), v, depth)
        }
        ModelConfig::Decoder(c) => {
            let v = f("vocab_size", c.vocab_size, 50257);
            let h = f("n_embd", c.n_embd, 768);
            // n_inner: null means 4 × n_embd (then n_embd is the size to blame)
            let (iscale, i) = match c.n_inner {
                Some(n) => (1, f("n_inner", n, 3072)),
                None => (4, h),
            };
            let pos = f("n_positions", c.n_positions, 1024);
            let layers = f("n_layer", c.n_layer, 12);
            p.extend([term(1, &[v, h]), term(1, &[pos, h])]);
            p.extend([term(4, &[layers, h, h]), term(2 * iscale, &[layers, h, i]), term(9, &[layers, h]), term(iscale, &[layers, i]), term(2, &[h])]);
            if !c.tie_word_embeddings && lm {
                p.push(term(1, &[v, h]));
            }
            if arch.task == Task::DoubleHeads {
                p.push(term(1, &[h, h]));
            }
            if labels {
                p.push(term(1, &[h, nl]));
            }
            (h, (iscale, i), v, vec![layers])
        }
    };
    let mut a = Vec::new();
    if let (ModelConfig::Encoder(c), [layers, inner_groups]) = (cfg, &depth[..]) {
        // ALBERT's plan of the layers run at each depth, one 8-byte index each (built for any job)
        if c.family == Family::Albert {
            a.push(term(2, &[*layers, *inner_groups]));
        }
    }
    match job {
        Job::Load { .. } => {}
        Job::Infer { batch, seq } => {
            let (b, t) = (f(batch.name, batch.value, 8), f(seq.name, seq.value, 512));
            a.extend([term(4, &[b, t, hidden]), term(iscale, &[b, t, inner])]);
            if lm {
                a.push(term(1, &[b, t, vocab]));
            }
        }
        Job::Train { batch, seq } => {
            let (b, t) = (f(batch.name, batch.value, 8), f(seq.name, seq.value, 512));
            a.extend([term(3, &[&depth[..], &[b, t, hidden]].concat()), term(iscale, &[&depth[..], &[b, t, inner]].concat())]);
            if lm {
                a.push(term(2, &[b, t, vocab]));
            }
        }
    }
    Ok(Terms { params: p, activations: a })
}

/// Why an estimate is refused: the size to blame in the largest term.
fn culprit(t: &Terms) -> Option<Factor> {
    t.params.iter().chain(&t.activations).max_by(|a, b| a.magnitude().total_cmp(&b.magnitude())).and_then(Term::culprit)
}

fn too_large(t: &Terms, job: &Job, need: &str, mem: Option<&Memory>) -> Error {
    let why = match culprit(t) {
        Some(c) => format!("{} = {} is too large: ", c.name, c.value),
        None => String::new(),
    };
    let room = match mem {
        Some(m) => format!(", more than the {}", m.describe()),
        None => String::new(),
    };
    Error::msg(format!("{why}{} needs {need}{room}", job.describe()))
}

/// The bytes `job` needs with the model of `cfg` (see the module docs). A size whose product
/// overflows 64 bits is an error naming the field.
pub fn estimate(cfg: &ModelConfig, job: &Job) -> Result<Estimate> {
    estimate_in(cfg, job, None)
}

fn estimate_in(cfg: &ModelConfig, job: &Job, mem: Option<&Memory>) -> Result<Estimate> {
    let t = terms(cfg, job)?;
    let overflow = || too_large(&t, job, &format!("more than {} (2^64 bytes: its size overflows 64-bit arithmetic)", human_bytes(1 << 64)), mem);
    let sum = |ts: &[Term]| ts.iter().try_fold(0u64, |acc, t| acc.checked_add(t.elems()?));
    let params = sum(&t.params).ok_or_else(overflow)?;
    let param_bytes = match job {
        Job::Load { dtype } => params.checked_mul(dtype.size_in_bytes() as u64),
        Job::Infer { .. } => params.checked_mul(4),
        Job::Train { .. } => params.checked_mul(16),
    }
    .ok_or_else(overflow)?;
    let activation_bytes = sum(&t.activations).and_then(|n| n.checked_mul(4)).ok_or_else(overflow)?;
    let bytes = param_bytes.checked_add(activation_bytes).ok_or_else(overflow)?;
    Ok(Estimate { params, param_bytes, activation_bytes, bytes })
}

/// [`estimate`], refused when it exceeds `mem.available` (with `mem` `None`, only an overflow is
/// refused). The error names the field to blame, the bytes needed and the memory.
pub fn check(cfg: &ModelConfig, job: &Job, mem: Option<&Memory>) -> Result<Estimate> {
    let e = estimate_in(cfg, job, mem)?;
    if let Some(m) = mem.filter(|m| e.bytes > m.available) {
        let t = terms(cfg, job)?;
        let need = match job {
            Job::Load { .. } => format!("{} ({} parameters)", human_bytes(e.bytes as u128), e.params),
            _ => format!(
                "about {} ({} parameters: {} with their training state, plus {} of activations)",
                human_bytes(e.bytes as u128),
                e.params,
                human_bytes(e.param_bytes as u128),
                human_bytes(e.activation_bytes as u128)
            ),
        };
        let need = if matches!(job, Job::Infer { .. }) { need.replace(" with their training state", "") } else { need };
        return Err(too_large(&t, job, &need, Some(m)));
    }
    Ok(e)
}

/// [`check`] against the memory of `device` ([`Memory::of`]).
pub fn check_on(cfg: &ModelConfig, job: &Job, device: Device) -> Result<Estimate> {
    check(cfg, job, Memory::of(device).as_ref())
}

/// A sequence length must fit the model's positions.
pub fn check_positions(cfg: &ModelConfig, seq: Size) -> Result<()> {
    let max = cfg.max_positions();
    if seq.value > max {
        return Err(Error::msg(format!("{} {} exceeds the model's {max} positions", seq.name, seq.value)));
    }
    Ok(())
}

/// `size.value × per_item` bytes (checked) must fit `mem` (what: what they are for, in the
/// message). For sizes that are not a model's: a tokenizer's vocabulary, a file.
pub fn check_bytes(size: Size, per_item: u64, what: &str, mem: Option<&Memory>) -> Result<u64> {
    let Some(bytes) = (size.value as u64).checked_mul(per_item) else {
        let room = mem.map(|m| format!(", more than the {}", m.describe())).unwrap_or_default();
        return Err(Error::msg(format!("{} = {} is too large: {what} needs more than {} (2^64 bytes){room}", size.name, size.value, human_bytes(1 << 64))));
    };
    if let Some(m) = mem.filter(|m| bytes > m.available) {
        return Err(Error::msg(format!("{} = {} is too large: {what} needs {}, more than the {}", size.name, size.value, human_bytes(bytes as u128), m.describe())));
    }
    Ok(bytes)
}

/// Files at least this large are checked against the memory before they are read.
const FILE_CHECK_MIN: u64 = 64 << 20;

/// An input file is read whole (a checkpoint, a text): one larger than the memory available is
/// refused before reading it, where the read would otherwise fill the memory first. Small files
/// are not checked (no memory probe).
pub fn check_file(path: &std::path::Path) -> Result<()> {
    let Ok(len) = std::fs::metadata(path).map(|m| m.len()) else { return Ok(()) }; // the read says why
    check_file_len(path, len, if len >= FILE_CHECK_MIN { Memory::host() } else { None }.as_ref())
}

fn check_file_len(path: &std::path::Path, len: u64, mem: Option<&Memory>) -> Result<()> {
    match mem.filter(|m| len > m.available) {
        Some(m) => Err(Error::msg(format!("{}: the file is {}, more than the {} (kiln reads it whole)", path.display(), human_bytes(len as u128), m.describe()))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn box_of(gb: u64) -> Memory {
        Memory { available: gb * GIB, total: gb * GIB, place: "a test box".into() }
    }

    fn train(batch: usize, seq: usize) -> Job {
        Job::Train { batch: Size::new("--batch", batch), seq: Size::new("--seq", seq) }
    }

    fn decoder(edit: impl FnOnce(&mut crate::DecoderConfig)) -> ModelConfig {
        let ModelConfig::Decoder(mut c) = ModelConfig::preset("gpt2").unwrap() else { unreachable!() };
        edit(&mut c);
        ModelConfig::Decoder(c)
    }

    #[test]
    fn parameter_counts_match_the_built_models() {
        // the estimate counts what the stacks build: compare with the real stores of small models
        for name in ["gpt2-tiny", "bert-tiny"] {
            let cfg = ModelConfig::preset(name).unwrap();
            let store = crate::ParamStore::new(0, DType::F32, Device::Cpu);
            crate::model::Model::build(&cfg, &store).unwrap();
            let real = store.num_params() as f64;
            let est = estimate(&cfg, &Job::Load { dtype: DType::F32 }).unwrap().params as f64;
            assert!((est / real - 1.0).abs() < 0.02, "{name}: estimated {est} parameters, built {real}");
        }
        // and the published sizes: GPT-2 124M, GPT-2 medium 355M, BERT-base 110M
        for (name, millions) in [("gpt2", 124.4), ("gpt2-medium", 354.8), ("bert-base", 110.1)] {
            let p = estimate(&ModelConfig::preset(name).unwrap(), &Job::Load { dtype: DType::F32 }).unwrap().params as f64 / 1e6;
            assert!((p / millions - 1.0).abs() < 0.02, "{name}: {p}M parameters");
        }
    }

    #[test]
    fn realistic_runs_pass_on_a_24_gb_box() {
        let mem = box_of(24);
        let e = check(&ModelConfig::preset("gpt2-medium").unwrap(), &train(8, 1024), Some(&mem)).unwrap();
        assert!(e.bytes > 10 * GIB && e.bytes < 20 * GIB, "{e:?}");
        check(&ModelConfig::preset("gpt2").unwrap(), &train(8, 1024), Some(&mem)).unwrap();
        check(&ModelConfig::preset("bert-base").unwrap(), &train(32, 512), Some(&mem)).unwrap();
        check(&ModelConfig::preset("bert-large").unwrap(), &train(8, 512), Some(&mem)).unwrap();
        let infer = Job::Infer { batch: Size::new("--batch", 64), seq: Size::new("--seq", 512) };
        check(&ModelConfig::preset("bert-base").unwrap(), &infer, Some(&mem)).unwrap();
        // and the default `kiln train` on a small box
        check(&ModelConfig::preset("gpt2-tiny").unwrap(), &train(16, 64), Some(&box_of(1))).unwrap();
    }

    #[test]
    fn huge_config_fields_are_refused_by_name() {
        let mem = box_of(24);
        let load = Job::Load { dtype: DType::F32 };
        let cases: Vec<(ModelConfig, &str)> = vec![
            (decoder(|c| c.vocab_size = 1_000_000_000_000), "vocab_size = 1000000000000 is too large"),
            (decoder(|c| c.n_embd = 1 << 40), "n_embd = 1099511627776 is too large"),
            (decoder(|c| c.n_inner = Some(1_000_000_000_000)), "n_inner = 1000000000000 is too large"),
            (decoder(|c| c.n_layer = 1_000_000_000), "n_layer = 1000000000 is too large"),
            (decoder(|c| c.n_positions = 1 << 40), "n_positions = 1099511627776 is too large"),
        ];
        for (cfg, want) in cases {
            let e = check(&cfg, &load, Some(&mem)).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("24.0 GiB of memory available on a test box"), "{e}");
        }
        // n_embd 2^40 squares past 2^64: an overflow, still named
        let e = estimate(&decoder(|c| c.n_embd = 1 << 40), &load).unwrap_err().to_string();
        assert!(e.contains("n_embd = 1099511627776") && e.contains("more than 16.0 EiB") && e.contains("overflows"), "{e}");
        // the bytes are written for people: vocab 1e12 × n_embd 768 × 4 bytes
        let e = check(&decoder(|c| c.vocab_size = 1_000_000_000_000), &load, Some(&mem)).unwrap_err().to_string();
        assert!(e.contains("needs 2.73 PiB (768000085842432 parameters)"), "{e}");
    }

    #[test]
    fn every_family_names_its_own_fields() {
        let mem = box_of(24);
        let load = Job::Load { dtype: DType::F32 };
        let cases = [
            (r#"{"model_type": "distilbert", "dim": 1099511627776, "n_heads": 1}"#, "dim = 1099511627776"),
            (r#"{"model_type": "distilbert", "hidden_dim": 1000000000000}"#, "hidden_dim = 1000000000000"),
            (r#"{"model_type": "distilbert", "n_layers": 1000000000}"#, "n_layers = 1000000000"),
            (r#"{"model_type": "bert", "intermediate_size": 1000000000000}"#, "intermediate_size = 1000000000000"),
            (r#"{"model_type": "bert", "num_hidden_layers": 1000000000}"#, "num_hidden_layers = 1000000000"),
            (r#"{"model_type": "bert", "type_vocab_size": 1000000000000}"#, "type_vocab_size = 1000000000000"),
            (r#"{"model_type": "roberta", "max_position_embeddings": 1000000000000}"#, "max_position_embeddings = 1000000000000"),
            (r#"{"model_type": "albert", "num_hidden_groups": 1000000000}"#, "num_hidden_groups = 1000000000"),
            (r#"{"model_type": "albert", "embedding_size": 1000000000000}"#, "embedding_size = 1000000000000"),
            (r#"{"model_type": "electra", "vocab_size": 1000000000000}"#, "vocab_size = 1000000000000"),
            (r#"{"model_type": "openai-gpt", "n_embd": 1099511627776, "n_head": 1}"#, "n_embd = 1099511627776"),
            (r#"{"model_type": "bert", "architectures": ["BertForSequenceClassification"], "num_labels": 1000000000000}"#, "num_labels = 1000000000000"),
        ];
        for (json, want) in cases {
            let cfg = ModelConfig::from_json_str(json, "config.json").unwrap();
            let e = check(&cfg, &load, Some(&mem)).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
        // ALBERT's depth costs no parameters (its layers are shared), but activations to train
        let albert = ModelConfig::from_json_str(r#"{"model_type": "albert", "num_hidden_layers": 1000000000}"#, "config.json").unwrap();
        let e = check(&albert, &train(8, 128), Some(&mem)).unwrap_err().to_string();
        assert!(e.starts_with("num_hidden_layers = 1000000000 is too large: training"), "{e}");
    }

    #[test]
    fn huge_batches_are_refused_by_flag() {
        let mem = box_of(24);
        let cfg = ModelConfig::preset("gpt2-tiny").unwrap();
        let e = check(&cfg, &train(100_000_000_000, 64), Some(&mem)).unwrap_err().to_string();
        assert!(e.starts_with("--batch = 100000000000 is too large: training") && e.contains("activations"), "{e}");
        let infer = Job::Infer { batch: Size::new("--batch", 10_000_000_000), seq: Size::new("--seq", 64) };
        let e = check(&cfg, &infer, Some(&mem)).unwrap_err().to_string();
        assert!(e.starts_with("--batch = 10000000000 is too large: running the model"), "{e}");
        // a batch whose tokens overflow: usize::MAX × 64
        let e = estimate(&cfg, &train(usize::MAX, 64)).unwrap_err().to_string();
        assert!(e.contains("--batch") && e.contains("overflows"), "{e}");
        // without knowing the memory, only overflow is refused
        check(&cfg, &train(100_000_000_000, 64), None).unwrap();
    }

    #[test]
    fn positions_and_plain_byte_counts() {
        let cfg = ModelConfig::preset("gpt2-tiny").unwrap();
        check_positions(&cfg, Size::new("--seq", 256)).unwrap();
        let e = check_positions(&cfg, Size::new("--seq", 257)).unwrap_err().to_string();
        assert_eq!(e, "--seq 257 exceeds the model's 256 positions");
        let mem = box_of(8);
        let vocab = |n| Size::new("--vocab", n);
        assert_eq!(check_bytes(vocab(50_000), TOKENIZER_BYTES_PER_TOKEN, "the tokenizer trainer", Some(&mem)).unwrap(), 2_800_000);
        let e = check_bytes(vocab(100_000_000_000), TOKENIZER_BYTES_PER_TOKEN, "the tokenizer trainer", Some(&mem)).unwrap_err().to_string();
        assert_eq!(e, "--vocab = 100000000000 is too large: the tokenizer trainer needs 5.09 TiB, more than the 8.00 GiB of memory available on a test box (8.00 GiB total)");
        assert!(check_bytes(vocab(usize::MAX), 56, "x", None).unwrap_err().to_string().contains("16.0 EiB (2^64 bytes)"));
    }

    #[test]
    fn files_larger_than_the_memory_are_refused_before_reading() {
        let p = std::path::Path::new("big.safetensors");
        check_file_len(p, 7 * GIB, Some(&box_of(8))).unwrap();
        let e = check_file_len(p, 30 * GIB, Some(&box_of(8))).unwrap_err().to_string();
        assert_eq!(e, "big.safetensors: the file is 30.0 GiB, more than the 8.00 GiB of memory available on a test box (8.00 GiB total) (kiln reads it whole)");
        check_file_len(p, 30 * GIB, None).unwrap();
        // a file that is not there is left to the read to report
        check_file(std::path::Path::new("/nonexistent/kiln/file")).unwrap();
    }

    #[test]
    fn the_host_memory_reads() {
        // Linux always says; elsewhere None is allowed
        if cfg!(target_os = "linux") {
            let m = Memory::host().expect("the host memory");
            assert!(m.total > 0 && m.available > 0, "{m:?}");
        }
    }
}
