//! Bad input to the file loaders: property tests that feed random bytes and random mutations of
//! valid files (bit flips, truncation, byte insertions and deletions, header-length changes, header
//! and JSON field edits) to the safetensors reader (then reading every tensor and loading a real
//! model), the config loader, the `kiln forward --batch` loader (then running the model on what it
//! loads) and the tokenizer loader; each must return `Ok` or `Err`, never panic, and finish. Then
//! explicit malformed safetensors files, each with the clear error it must give.
//!
//! Seeds are fixed (the runs are deterministic) and the case counts small, so this file runs in
//! seconds. A failing case is shrunk and reported by proptest; every call runs on its own thread
//! under a time limit, so a panic or a hang is reported as a failing input too.
use kiln::model::checkpoint::{load_params, load_params_from, LoadOptions};
use kiln::model::config::ModelConfig;
use kiln::model::model::{Inputs, LoadedModel, Model};
use kiln::model::nn::ForwardCtx;
use kiln::model::params::ParamStore;
use kiln::model::st_io::{read_safetensors, StFile};
use kiln::model::tokenize;
use kiln::{DType, Device, Tensor};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as ProptestConfig, RngSeed, TestCaseError, TestRunner};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::Duration;

// ------------------------------------------------------------------------------- harness ----

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tmpdir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!("kiln-fuzz-{}-{}-{}", std::process::id(), tag, N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A loader call may take this long (the inputs are tiny: a real run takes milliseconds).
const LIMIT: Duration = Duration::from_secs(30);

/// Runs `f` on its own thread: its value, or an error saying that it panicked (with the panic's
/// message) or did not finish within [`LIMIT`] (the thread is then left behind).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::Builder::new()
        .name(format!("fuzz {what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    match rx.recv_timeout(LIMIT) {
        Ok(v) => {
            h.join().unwrap();
            Ok(v)
        }
        Err(RecvTimeoutError::Disconnected) => {
            let p = h.join().expect_err("the thread ended without sending, so it panicked");
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Err(format!("{what} panicked: {msg}"))
        }
        Err(RecvTimeoutError::Timeout) => Err(format!("{what} did not finish in {LIMIT:?}")),
    }
}

fn config(cases: u32, seed: u64) -> ProptestConfig {
    ProptestConfig { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, max_shrink_iters: 512, ..ProptestConfig::default() }
}

// ----------------------------------------------------------------------------- mutations ----

/// Where a byte mutation lands: anywhere, or within the first `front` bytes (a safetensors
/// file's length field and header, where a flip changes the meaning rather than a weight).
#[derive(Debug, Clone)]
struct At {
    front: bool,
    i: Index,
}

impl At {
    fn pick(&self, len: usize, front: usize) -> Option<usize> {
        let n = if self.front { len.min(front) } else { len };
        (n > 0).then(|| self.i.index(n))
    }
}

#[derive(Debug, Clone)]
enum ByteEdit {
    FlipBit(At, u8),
    SetByte(At, u8),
    Truncate(At),
    Insert(At, Vec<u8>),
    Delete(At, usize),
    /// The 8-byte little-endian header length: + delta (wrapping).
    HeaderLenDelta(i64),
    /// The header length set outright.
    HeaderLen(u64),
}

fn at() -> impl Strategy<Value = At> {
    (any::<bool>(), any::<Index>()).prop_map(|(front, i)| At { front, i })
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        4 => (at(), 0u8..8).prop_map(|(a, b)| ByteEdit::FlipBit(a, b)),
        2 => (at(), any::<u8>()).prop_map(|(a, b)| ByteEdit::SetByte(a, b)),
        2 => at().prop_map(ByteEdit::Truncate),
        2 => (at(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(a, v)| ByteEdit::Insert(a, v)),
        2 => (at(), 1usize..64).prop_map(|(a, n)| ByteEdit::Delete(a, n)),
        1 => (-64i64..64).prop_map(ByteEdit::HeaderLenDelta),
        1 => prop_oneof![
            any::<u64>(),
            Just(0u64),
            Just(2),
            Just(100_000_000),
            Just(100_000_001),
            Just(1 << 32),
            Just(1 << 62),
            Just(u64::MAX),
            Just(u64::MAX - 7),
        ]
        .prop_map(ByteEdit::HeaderLen),
    ]
}

/// Applies `e` to `b`; `front` is the length of the region `At { front: true }` aims at.
fn apply_bytes(b: &mut Vec<u8>, e: &ByteEdit, front: usize) {
    let len = b.len();
    match e {
        ByteEdit::FlipBit(a, bit) => {
            if let Some(i) = a.pick(len, front) {
                b[i] ^= 1 << bit;
            }
        }
        ByteEdit::SetByte(a, v) => {
            if let Some(i) = a.pick(len, front) {
                b[i] = *v;
            }
        }
        ByteEdit::Truncate(a) => {
            if let Some(i) = a.pick(len, front) {
                b.truncate(i);
            }
        }
        ByteEdit::Insert(a, v) => {
            let i = a.pick(len + 1, front + 1).unwrap_or(0);
            b.splice(i..i, v.iter().copied());
        }
        ByteEdit::Delete(a, n) => {
            if let Some(i) = a.pick(len, front) {
                b.drain(i..(i + n).min(len));
            }
        }
        ByteEdit::HeaderLenDelta(d) => {
            if len >= 8 {
                let n = u64::from_le_bytes(b[..8].try_into().unwrap()).wrapping_add(*d as u64);
                b[..8].copy_from_slice(&n.to_le_bytes());
            }
        }
        ByteEdit::HeaderLen(n) => {
            if len >= 8 {
                b[..8].copy_from_slice(&n.to_le_bytes());
            }
        }
    }
}

/// A JSON value of any kind, with the numbers that break naive code (0, huge, negative, 2^53+1).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(2), Just(3), Just(7), Just(64), Just(100), Just(-100), Just(i64::MIN), Just(i64::MAX), any::<i64>()]
            .prop_map(Value::from),
        prop_oneof![Just(u64::MAX), Just(1u64 << 40), Just((1u64 << 53) + 1), Just(usize::MAX as u64 / 2)].prop_map(Value::from),
        prop_oneof![Just(0.5f64), Just(-0.0), Just(1e-300), Just(1e300), Just(-1e300), Just(0.1), Just(1.5), any::<f64>().prop_filter("finite", |x| x.is_finite())]
            .prop_map(Value::from),
        prop_oneof![
            "[a-zA-Z_ ]{0,12}",
            Just(String::new()),
            Just("gelu".to_string()),
            Just("relu".to_string()),
            Just("[UNK]".to_string()),
            Just("<|endoftext|>".to_string()),
            Just("BertModel".to_string()),
            Just("GPT2LMHeadModel".to_string()),
            Just("\u{0}\u{ffff}é".to_string()),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum JsonEdit {
    /// Replace the node at (pre-order) index `i` with a value.
    Replace(Index, Value),
    /// Remove the node (a field or an array element).
    Remove(Index),
    /// Duplicate an array element, or insert a field under a known key into an object.
    Grow(Index, Value),
    /// Replace one of the numbers (the `i`-th of them) with an integer: token ids, labels and
    /// sizes out of range.
    Int(Index, i64),
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        4 => (any::<Index>(), json_value()).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        2 => any::<Index>().prop_map(JsonEdit::Remove),
        1 => (any::<Index>(), json_value()).prop_map(|(i, v)| JsonEdit::Grow(i, v)),
        4 => (any::<Index>(), prop_oneof![-3i64..130, Just(-100), Just(i64::MIN), Just(i64::MAX), Just(1 << 31), Just(1 << 32), any::<i64>()])
            .prop_map(|(i, v)| JsonEdit::Int(i, v)),
    ]
}

/// Byte edits for a JSON text: none in half the cases (most byte edits make it invalid JSON).
fn json_byte_edits() -> impl Strategy<Value = Vec<ByteEdit>> {
    prop_oneof![Just(Vec::new()), prop::collection::vec(byte_edit(), 1..3)]
}

fn numbers(v: &mut Value) -> Vec<&mut Value> {
    match v {
        Value::Number(_) => vec![v],
        Value::Array(a) => a.iter_mut().flat_map(numbers).collect(),
        Value::Object(o) => o.values_mut().flat_map(numbers).collect(),
        _ => vec![],
    }
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// The node at pre-order index `i` (0 = the root) with its parent slot, mutated by `f`.
/// `f` gets the parent container and the key / position of the node in it (`None` for the root).
fn with_node(v: &mut Value, mut i: usize, f: &mut dyn FnMut(&mut Value, Option<Slot>)) {
    fn go(v: &mut Value, i: &mut usize, f: &mut dyn FnMut(&mut Value, Option<Slot>)) -> bool {
        let slots: Vec<Slot> = match v {
            Value::Array(a) => (0..a.len()).map(Slot::Pos).collect(),
            Value::Object(o) => o.keys().cloned().map(Slot::Key).collect(),
            _ => return false,
        };
        for s in slots {
            if *i == 0 {
                f(v, Some(s));
                return true;
            }
            *i -= 1;
            let child = match (&mut *v, &s) {
                (Value::Array(a), Slot::Pos(p)) => &mut a[*p],
                (Value::Object(o), Slot::Key(k)) => o.get_mut(k).unwrap(),
                _ => unreachable!(),
            };
            if go(child, i, f) {
                return true;
            }
        }
        false
    }
    if i == 0 {
        f(v, None);
        return;
    }
    i -= 1;
    go(v, &mut i, f);
}

#[derive(Debug, Clone)]
enum Slot {
    Pos(usize),
    Key(String),
}

/// Keys that the loaders read (so that `Grow` adds fields they look at).
const KNOWN_KEYS: [&str; 24] = [
    "vocab_size",
    "hidden_size",
    "n_embd",
    "num_hidden_layers",
    "n_layer",
    "num_attention_heads",
    "n_head",
    "intermediate_size",
    "n_inner",
    "max_position_embeddings",
    "n_positions",
    "type_vocab_size",
    "layer_norm_eps",
    "layer_norm_epsilon",
    "hidden_act",
    "activation_function",
    "architectures",
    "num_labels",
    "id2label",
    "embedding_size",
    "input_ids",
    "labels",
    "unk_token",
    "added_tokens",
];

fn apply_json(v: &mut Value, e: &JsonEdit) {
    let n = count_nodes(v);
    match e {
        JsonEdit::Replace(i, x) => with_node(v, i.index(n), &mut |parent, slot| match slot {
            None => *parent = x.clone(),
            Some(Slot::Pos(p)) => parent.as_array_mut().unwrap()[p] = x.clone(),
            Some(Slot::Key(k)) => {
                parent.as_object_mut().unwrap().insert(k, x.clone());
            }
        }),
        JsonEdit::Remove(i) => with_node(v, i.index(n), &mut |parent, slot| match slot {
            None => {}
            Some(Slot::Pos(p)) => {
                parent.as_array_mut().unwrap().remove(p);
            }
            Some(Slot::Key(k)) => {
                parent.as_object_mut().unwrap().remove(&k);
            }
        }),
        JsonEdit::Int(i, x) => {
            let mut nums = numbers(v);
            if !nums.is_empty() {
                let k = i.index(nums.len());
                *nums[k] = json!(x);
            }
        }
        JsonEdit::Grow(i, x) => {
            let key = KNOWN_KEYS[i.index(KNOWN_KEYS.len())];
            with_node(v, i.index(n), &mut |parent, slot| {
                let node = match slot {
                    None => parent,
                    Some(Slot::Pos(p)) => &mut parent.as_array_mut().unwrap()[p],
                    Some(Slot::Key(k)) => parent.as_object_mut().unwrap().get_mut(&k).unwrap(),
                };
                match node {
                    Value::Array(a) => {
                        let first = a.first().cloned().unwrap_or_else(|| x.clone());
                        a.push(first);
                    }
                    Value::Object(o) => {
                        o.insert(key.to_string(), x.clone());
                    }
                    other => *other = x.clone(),
                }
            })
        }
    }
}

/// A mutated JSON text: field edits on the parsed value, then byte edits on its text.
fn mutate_json_text(text: &str, edits: &[JsonEdit], bytes: &[ByteEdit]) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(text).unwrap();
    for e in edits {
        apply_json(&mut v, e);
    }
    let mut b = serde_json::to_vec_pretty(&v).unwrap();
    for e in bytes {
        let len = b.len();
        apply_bytes(&mut b, e, len);
    }
    b
}

// ------------------------------------------------------------------------------ fixtures ----

/// A fixture model directory: its name, config text, weights, batch text and whether its file
/// holds a pooler.
struct ModelFixture {
    name: String,
    config: String,
    weights: Vec<u8>,
    batch: Option<String>,
}

fn model_fixtures() -> &'static [ModelFixture] {
    static F: OnceLock<Vec<ModelFixture>> = OnceLock::new();
    F.get_or_init(|| {
        let mut out = Vec::new();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures()).unwrap().map(|e| e.unwrap().path()).collect();
        dirs.sort();
        for d in dirs {
            let (c, w) = (d.join("config.json"), d.join("model.safetensors"));
            if !c.is_file() || !w.is_file() || d.join("modules.json").exists() {
                continue;
            }
            let batch = std::fs::read_to_string(d.join("batch.json")).ok();
            out.push(ModelFixture {
                name: d.file_name().unwrap().to_string_lossy().into(),
                config: std::fs::read_to_string(c).unwrap(),
                weights: std::fs::read(w).unwrap(),
                batch,
            });
        }
        assert!(out.len() >= 30, "the model fixtures are there ({} found)", out.len());
        out
    })
}

fn tokenizer_fixtures() -> &'static [(String, String)] {
    static F: OnceLock<Vec<(String, String)>> = OnceLock::new();
    F.get_or_init(|| {
        let mut out = Vec::new();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures().join("tokenizers")).unwrap().map(|e| e.unwrap().path()).collect();
        dirs.sort();
        for d in dirs {
            if let Ok(t) = std::fs::read_to_string(d.join("tokenizer.json")) {
                out.push((d.file_name().unwrap().to_string_lossy().into(), t));
            }
        }
        assert!(out.len() >= 7, "the tokenizer fixtures are there");
        out
    })
}

// ----------------------------------------------------------------------------- safetensors ----

/// The header length of a safetensors file (0 if it has none).
fn header_end(b: &[u8]) -> usize {
    b.get(..8).map_or(0, |n| 8usize.saturating_add(u64::from_le_bytes(n.try_into().unwrap()).min(1 << 30) as usize))
}

const DTYPES: [&str; 22] = [
    "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3",
    "F6_E3M2", "C64", "f32", "Q4",
];

fn bits_of(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" | "C64" => 64,
        "F32" | "I32" | "U32" => 32,
        "F16" | "BF16" | "I16" | "U16" => 16,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 8,
        "F6_E2M3" | "F6_E3M2" => 6,
        "F4" => 4,
        _ => return None,
    })
}

fn dim() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..40, 1 => Just(0), 1 => any::<u32>().prop_map(u64::from), 1 => Just(1 << 32), 1 => Just(1 << 40), 1 => Just(u64::MAX), 1 => any::<u64>()]
}

/// An edit of one tensor entry of a safetensors header (the file is rewritten with a consistent
/// header length, so the edit reaches the validation past the JSON).
#[derive(Debug, Clone)]
enum HeaderEdit {
    /// Another dtype, same shape (the byte count no longer fits unless the sizes agree).
    Dtype(Index, &'static str),
    /// Another dtype with the shape `[bytes / size]`: a file whose offsets fit.
    Retype(Index, &'static str),
    /// Another shape.
    Shape(Index, Vec<u64>),
    /// The same element count in another shape (e.g. `[a, b]` as `[b, a]` or `[a * b]`).
    Reshape(Index, Index),
    /// Other data offsets.
    Offsets(Index, u64, u64),
    /// Both offsets moved by a delta.
    Shift(Index, i64),
    /// The entry removed (its bytes stay: a gap).
    Remove(Index),
    /// The entry copied under another name (overlapping offsets).
    Copy(Index, String),
    /// The names of two entries swapped (each tensor under the other's name).
    Swap(Index, Index),
    /// The entry replaced by a JSON value.
    Garbage(Index, Value),
    /// `__metadata__` replaced by a JSON value.
    Metadata(Value),
    /// An empty tensor (a zero among its dims, the others any size) added at offset 0: a file
    /// whose offsets still tile the data.
    AddEmpty(String, Vec<u64>, Index),
    /// U8 tensors appended after the last one whose ends climb to `end` (near `u64::MAX`), as if
    /// the file held that much data.
    AppendHuge(u64),
}

fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    let dt = prop::sample::select(&DTYPES[..]);
    prop_oneof![
        2 => (any::<Index>(), dt.clone()).prop_map(|(i, d)| HeaderEdit::Dtype(i, d)),
        3 => (any::<Index>(), dt).prop_map(|(i, d)| HeaderEdit::Retype(i, d)),
        2 => (any::<Index>(), prop::collection::vec(dim(), 0..5)).prop_map(|(i, s)| HeaderEdit::Shape(i, s)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(i, j)| HeaderEdit::Reshape(i, j)),
        2 => (any::<Index>(), dim(), dim()).prop_map(|(i, a, b)| HeaderEdit::Offsets(i, a, b)),
        1 => (any::<Index>(), -64i64..64).prop_map(|(i, d)| HeaderEdit::Shift(i, d)),
        1 => any::<Index>().prop_map(HeaderEdit::Remove),
        1 => (any::<Index>(), prop_oneof!["[a-z_.]{0,10}".prop_map(String::from), Just("transformer.wte.weight".to_string()), Just("lm_head.weight".to_string())])
            .prop_map(|(i, n)| HeaderEdit::Copy(i, n)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(i, j)| HeaderEdit::Swap(i, j)),
        1 => (any::<Index>(), json_value()).prop_map(|(i, v)| HeaderEdit::Garbage(i, v)),
        1 => json_value().prop_map(HeaderEdit::Metadata),
        1 => ("[a-z_.]{1,10}", prop::collection::vec(prop_oneof![0u64..4, Just(1 << 32), Just(1 << 40), any::<u32>().prop_map(u64::from)], 1..4), any::<Index>())
            .prop_map(|(n, s, z)| HeaderEdit::AddEmpty(n, s, z)),
        1 => prop_oneof![Just(u64::MAX), Just(u64::MAX - 100), Just(1 << 63), (1u64 << 62)..u64::MAX].prop_map(HeaderEdit::AppendHuge),
    ]
}

/// Splits a valid safetensors file into its header (as a JSON map) and its data section.
fn split_st(b: &[u8]) -> (serde_json::Map<String, Value>, Vec<u8>) {
    let end = header_end(b);
    let Value::Object(m) = serde_json::from_slice(&b[8..end]).unwrap() else { panic!("header is an object") };
    (m, b[end..].to_vec())
}

fn join_st(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn apply_header(m: &mut serde_json::Map<String, Value>, e: &HeaderEdit) {
    let names: Vec<String> = m.keys().filter(|k| *k != "__metadata__").cloned().collect();
    if names.is_empty() {
        return;
    }
    let name = |i: &Index| names[i.index(names.len())].clone();
    let entry = |m: &mut serde_json::Map<String, Value>, i: &Index| -> Option<serde_json::Map<String, Value>> { m.get(&name(i)).and_then(|v| v.as_object().cloned()) };
    match e {
        HeaderEdit::Dtype(i, d) => {
            if let Some(Value::Object(o)) = m.get_mut(&name(i)) {
                o.insert("dtype".into(), json!(d));
            }
        }
        HeaderEdit::Retype(i, d) => {
            if let Some(mut o) = entry(m, i) {
                let offs: Vec<u64> = o.get("data_offsets").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
                if let (&[s, e], Some(bits)) = (&offs[..], bits_of(d)) {
                    let nbits = e.saturating_sub(s).saturating_mul(8);
                    if nbits % bits as u64 == 0 {
                        o.insert("dtype".into(), json!(d));
                        o.insert("shape".into(), json!([nbits / bits as u64]));
                        m.insert(name(i), Value::Object(o));
                    }
                }
            }
        }
        HeaderEdit::Shape(i, s) => {
            if let Some(Value::Object(o)) = m.get_mut(&name(i)) {
                o.insert("shape".into(), json!(s));
            }
        }
        HeaderEdit::Reshape(i, j) => {
            if let Some(Value::Object(o)) = m.get_mut(&name(i)) {
                let shape: Vec<u64> = o.get("shape").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
                let n: u64 = shape.iter().fold(1u64, |a, &d| a.saturating_mul(d));
                let new = match j.index(3) {
                    0 => shape.iter().rev().copied().collect(),
                    1 => vec![n],
                    _ => vec![1, n],
                };
                o.insert("shape".into(), json!(new));
            }
        }
        HeaderEdit::Offsets(i, a, b) => {
            if let Some(Value::Object(o)) = m.get_mut(&name(i)) {
                o.insert("data_offsets".into(), json!([a, b]));
            }
        }
        HeaderEdit::Shift(i, d) => {
            if let Some(Value::Object(o)) = m.get_mut(&name(i)) {
                let offs: Vec<i64> = o.get("data_offsets").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
                if let [s, e] = offs[..] {
                    o.insert("data_offsets".into(), json!([s.saturating_add(*d).max(0), e.saturating_add(*d).max(0)]));
                }
            }
        }
        HeaderEdit::Remove(i) => {
            m.remove(&name(i));
        }
        HeaderEdit::Copy(i, n) => {
            if let Some(v) = m.get(&name(i)).cloned() {
                m.insert(n.clone(), v);
            }
        }
        HeaderEdit::Swap(i, j) => {
            let (a, b) = (name(i), name(j));
            let (va, vb) = (m[&a].clone(), m[&b].clone());
            m.insert(a, vb);
            m.insert(b, va);
        }
        HeaderEdit::Garbage(i, v) => {
            m.insert(name(i), v.clone());
        }
        HeaderEdit::Metadata(v) => {
            m.insert("__metadata__".into(), v.clone());
        }
        HeaderEdit::AddEmpty(n, dims, z) => {
            let mut dims = dims.clone();
            let at = z.index(dims.len() + 1);
            dims.insert(at, 0);
            m.insert(n.clone(), json!({"dtype": "F32", "shape": dims, "data_offsets": [0, 0]}));
        }
        HeaderEdit::AppendHuge(end) => {
            let last = m.values().filter_map(|v| v.get("data_offsets")?.get(1)?.as_u64()).max().unwrap_or(0);
            let (mut start, mut i) = (last, 0);
            while start < *end && i < 16 {
                let n = (end - start).min((1 << 61) - 1);
                m.insert(format!("huge.{i}"), json!({"dtype": "U8", "shape": [n], "data_offsets": [start, start + n]}));
                start += n;
                i += 1;
            }
        }
    }
}

/// Runs a property: `f` gets each generated input and says how far kiln got with it (a stage name),
/// or why the case failed. Returns the count of cases per stage (printed), so that a test can
/// check that its inputs reach past the first check of the loader.
fn check_property<S: Strategy>(name: &str, cases: u32, seed: u64, strategy: S, f: impl Fn(S::Value) -> Result<&'static str, String>) -> BTreeMap<&'static str, usize> {
    let counts = RefCell::new(BTreeMap::new());
    let mut runner = TestRunner::new(config(cases, seed));
    let r = runner.run(&strategy, |v| match f(v) {
        Ok(stage) => {
            *counts.borrow_mut().entry(stage).or_insert(0) += 1;
            Ok(())
        }
        Err(e) => Err(TestCaseError::fail(e)),
    });
    if let Err(e) = r {
        panic!("{name}: {e}");
    }
    let counts = counts.into_inner();
    eprintln!("{name}: cases per stage: {counts:?}");
    counts
}

/// Asserts that at least `min` cases reached each of `stages`.
fn assert_reached(name: &str, counts: &BTreeMap<&'static str, usize>, stages: &[(&str, usize)]) {
    for &(stage, min) in stages {
        let n = counts.get(stage).copied().unwrap_or(0);
        assert!(n >= min, "{name}: only {n} cases reached '{stage}' (want {min}): {counts:?}");
    }
}

/// Everything kiln does with a model file: parse it, read every tensor, load it strictly into a
/// fresh model of its fixture's config (as `kiln forward` / `generate` do) and loosely into
/// another (as fine-tuning from a partial checkpoint does), and through a file on disk
/// (`LoadedModel::from_dir`). Errors are fine (they must name the file); so is success.
fn exercise_safetensors(fixture: usize, bytes: Vec<u8>) -> Result<&'static str, String> {
    bounded("safetensors", move || {
        let f = &model_fixtures()[fixture];
        let origin = format!("fuzz/{}/model.safetensors", f.name);
        let file = match StFile::from_bytes(bytes.clone(), &origin) {
            Ok(file) => file,
            Err(e) if e.to_string().starts_with(&format!("{origin}: cannot read safetensors: ")) => return Ok("rejected"),
            Err(e) => return Err(format!("the error does not name the file: {e}")),
        };
        for n in file.names() {
            let _ = file.info(&n);
            let _ = file.tensor(&n);
        }
        let _ = file.metadata();
        let _ = file.tensors();
        let cfg = ModelConfig::from_json_str(&f.config, "config.json").unwrap();
        let map = cfg.family().name_map();
        for strict in [true, false] {
            let store = ParamStore::new(0, DType::F32, Device::Cpu);
            let _model = Model::build(&cfg, &store).unwrap();
            if let Err(e) = load_params_from(&file, &store, &map, &LoadOptions { strict }) {
                if !e.to_string().contains(&origin) {
                    return Err(format!("the error does not name the file: {e}"));
                }
            }
        }
        let d = tmpdir("st");
        std::fs::write(d.join("config.json"), &f.config).unwrap();
        std::fs::write(d.join("model.safetensors"), &bytes).unwrap();
        let loaded = LoadedModel::from_dir(&d, 0, Device::Cpu);
        std::fs::remove_dir_all(&d).unwrap();
        Ok(if loaded.is_ok() { "loaded" } else { "opened" })
    })?
}

#[test]
fn safetensors_random_bytes_never_panic() {
    // random bytes, half of them behind a plausible header length
    let input = (any::<Index>(), prop::collection::vec(any::<u8>(), 0..512), prop::option::of(0u64..600));
    let counts = check_property("safetensors random bytes", 256, 0x5afe_7e45, input, |(fixture, mut bytes, hdr)| {
        if let Some(n) = hdr {
            let mut b = n.to_le_bytes().to_vec();
            b.append(&mut bytes);
            bytes = b;
        }
        exercise_safetensors(fixture.index(model_fixtures().len()), bytes)
    });
    assert_reached("safetensors random bytes", &counts, &[("rejected", 200)]);
}

#[test]
fn safetensors_byte_mutations_never_panic() {
    let input = (any::<Index>(), prop::collection::vec(byte_edit(), 1..5));
    let counts = check_property("safetensors byte mutations", 192, 0x5afe_0001, input, |(fixture, edits)| {
        let fx = fixture.index(model_fixtures().len());
        let mut b = model_fixtures()[fx].weights.clone();
        for e in &edits {
            let front = header_end(&b).min(b.len());
            apply_bytes(&mut b, e, front);
        }
        exercise_safetensors(fx, b)
    });
    // bit flips in the data section load (or hit a NaN); most edits of the framing are rejected
    assert_reached("safetensors byte mutations", &counts, &[("rejected", 50), ("loaded", 5)]);
}

#[test]
fn safetensors_header_edits_never_panic() {
    let input = (any::<Index>(), prop::collection::vec(header_edit(), 1..4), prop::collection::vec(byte_edit(), 0..2));
    let counts = check_property("safetensors header edits", 192, 0x5afe_0002, input, |(fixture, edits, bytes)| {
        let fx = fixture.index(model_fixtures().len());
        let (mut m, data) = split_st(&model_fixtures()[fx].weights);
        for e in &edits {
            apply_header(&mut m, e);
        }
        let mut b = join_st(&Value::Object(m), &data);
        for e in &bytes {
            let front = header_end(&b).min(b.len());
            apply_bytes(&mut b, e, front);
        }
        exercise_safetensors(fx, b)
    });
    // consistent retypes, reshapes and swaps get past the file's checks into the model's
    assert_reached("safetensors header edits", &counts, &[("rejected", 30), ("opened", 10)]);
}

// --------------------------------------------------------------------------------- config ----

/// Loads a config from text (and from a file), and on success checks what kiln then does with
/// it: it names its architecture, saves it, and loads what it saved.
fn exercise_config(bytes: Vec<u8>) -> Result<&'static str, String> {
    bounded("config", move || -> Result<&'static str, String> {
        let d = tmpdir("cfg");
        let p = d.join("config.json");
        std::fs::write(&p, &bytes).unwrap();
        let from_file = ModelConfig::load(&d);
        std::fs::remove_dir_all(&d).unwrap();
        let Ok(text) = std::str::from_utf8(&bytes) else {
            let e = from_file.err().ok_or("a config that is not UTF-8 loaded")?.to_string();
            return if e.contains("config.json") { Ok("rejected") } else { Err(format!("the error does not name the file: {e}")) };
        };
        let from_text = ModelConfig::from_json_str(text, "fuzz/config.json");
        if from_text.is_ok() != from_file.is_ok() {
            return Err(format!("text and file disagree: {:?} vs {:?}", from_text.err(), from_file.err()));
        }
        match from_text {
            Err(e) => {
                let e = e.to_string();
                if !e.contains("fuzz/config.json") {
                    return Err(format!("the error does not name the file: {e}"));
                }
                Ok("rejected")
            }
            Ok(cfg) => {
                cfg.arch().map_err(|e| format!("a validated config has no architecture: {e}"))?;
                let _ = (cfg.vocab_size(), cfg.hidden_size(), cfg.num_layers(), cfg.max_positions(), cfg.num_labels(), cfg.activation());
                let saved = cfg.to_json_string().map_err(|e| format!("a loaded config does not save: {e}"))?;
                let again = ModelConfig::from_json_str(&saved, "saved").map_err(|e| format!("a saved config does not load: {e}\n{saved}"))?;
                if again.to_json_string().unwrap() != saved {
                    return Err(format!("save -> load -> save changes the config:\n{saved}"));
                }
                Ok("loaded")
            }
        }
    })?
}

#[test]
fn config_random_bytes_never_panic() {
    let counts = check_property("config random bytes", 256, 0xc0f1_9000, prop::collection::vec(any::<u8>(), 0..256), exercise_config);
    assert_reached("config random bytes", &counts, &[("rejected", 256)]);
}

#[test]
fn config_mutations_never_panic() {
    let input = (any::<Index>(), prop::collection::vec(json_edit(), 0..4), json_byte_edits());
    let counts = check_property("config mutations", 256, 0xc0f1_9001, input, |(fixture, edits, bytes)| {
        let f = &model_fixtures()[fixture.index(model_fixtures().len())];
        exercise_config(mutate_json_text(&f.config, &edits, &bytes)).map_err(|e| format!("{e} ({})", f.name))
    });
    assert_reached("config mutations", &counts, &[("rejected", 30), ("loaded", 30)]);
}

// ---------------------------------------------------------------------------------- batch ----

/// Parses a batch as `kiln forward` does and runs its fixture's model on it (and the backward of
/// the loss where there are labels).
fn exercise_batch(fixture: Option<usize>, bytes: Vec<u8>) -> Result<&'static str, String> {
    bounded("batch", move || {
        let Ok(text) = std::str::from_utf8(&bytes) else { return "not JSON" };
        let Ok(v) = serde_json::from_str::<Value>(text) else { return "not JSON" };
        let Ok(inputs) = Inputs::from_json(&v) else { return "rejected" };
        let Some(fx) = fixture else { return "parsed" };
        let f = &model_fixtures()[fx];
        let cfg = ModelConfig::from_json_str(&f.config, "config.json").unwrap();
        let store = ParamStore::new(0, DType::F32, Device::Cpu);
        let model = Model::build(&cfg, &store).unwrap();
        match model.forward(&inputs, &ForwardCtx::eval()) {
            Err(_) => "forward error",
            Ok(out) => {
                if let Ok(Some(loss)) = out.total_loss() {
                    let _ = loss.backward();
                }
                "forward ok"
            }
        }
    })
}

#[test]
fn batch_random_bytes_never_panic() {
    let counts = check_property("batch random bytes", 256, 0xba7c_4000, prop::collection::vec(any::<u8>(), 0..256), |b| exercise_batch(None, b));
    assert_reached("batch random bytes", &counts, &[("not JSON", 200)]);
}

#[test]
fn batch_mutations_never_panic() {
    let input = (any::<Index>(), prop::collection::vec(json_edit(), 0..4), json_byte_edits());
    let counts = check_property("batch mutations", 256, 0xba7c_4001, input, |(fixture, edits, bytes)| {
        let with: Vec<usize> = (0..model_fixtures().len()).filter(|&i| model_fixtures()[i].batch.is_some()).collect();
        let fx = with[fixture.index(with.len())];
        let b = mutate_json_text(model_fixtures()[fx].batch.as_ref().unwrap(), &edits, &bytes);
        exercise_batch(Some(fx), b).map_err(|e| format!("{e} ({})", model_fixtures()[fx].name))
    });
    assert_reached("batch mutations", &counts, &[("rejected", 20), ("forward error", 10), ("forward ok", 20)]);
}

/// A batch whose first rows claim an enormous shape (each level's first element is a long list
/// while the rest are short) is an error naming the field, not a huge allocation or an overflow.
#[test]
fn batch_claiming_a_huge_shape_is_an_error() {
    // 8 levels of 1000: the first rows make the shape [1000; 8] (1e24 elements), the file is ~16 KB
    let mut v = json!(0);
    for _ in 0..8 {
        let mut row = vec![v];
        row.extend(std::iter::repeat_n(json!(0), 999));
        v = Value::Array(row);
    }
    let r = bounded("huge batch", move || Inputs::from_json(&json!({ "input_ids": v })).err().map(|e| e.to_string())).unwrap();
    let e = r.expect("a ragged batch is an error");
    assert!(e.contains("field 'input_ids' mixes lists and numbers"), "{e}");
    // 5 levels of 1000 claim 1e15 elements (8 PB of i64, no overflow): reserving them aborted
    let mut v = json!(0);
    for _ in 0..5 {
        let mut row = vec![v];
        row.extend(std::iter::repeat_n(json!(0), 999));
        v = Value::Array(row);
    }
    let text = serde_json::to_string(&json!({ "labels": v.clone(), "input_ids": v })).unwrap();
    let r = bounded("huge batch", move || Inputs::from_json(&serde_json::from_str(&text).unwrap()).err().map(|e| e.to_string())).unwrap();
    let e = r.expect("a ragged batch is an error");
    assert!(e.contains("field 'input_ids'") || e.contains("field 'labels'"), "{e}");
}

// ------------------------------------------------------------------------------ tokenizer ----

/// Loads a tokenizer file and, when it loads, encodes and decodes a sentence with it.
fn exercise_tokenizer(bytes: Vec<u8>) -> Result<&'static str, String> {
    bounded("tokenizer", move || -> Result<&'static str, String> {
        let d = tmpdir("tok");
        let p = d.join("tokenizer.json");
        std::fs::write(&p, &bytes).unwrap();
        let r = tokenize::load_tokenizer(&p);
        std::fs::remove_dir_all(&d).unwrap();
        match r {
            Err(e) => {
                let e = e.to_string();
                if !e.contains(&p.display().to_string()) {
                    return Err(format!("the error does not name the file: {e}"));
                }
                Ok("rejected")
            }
            Ok(tok) => {
                let _ = tokenize::SpecialIds::of(&tok);
                // with the special tokens too, as `kiln embed` encodes
                let _ = tok.encode_batch_fast(vec!["a first text", "[CLS] and a second [SEP]"], true);
                match tokenize::encode_ids(&tok, "Hello, World! kiln's tokenizer: 123 ünïcödé [MASK] <|endoftext|>") {
                    Ok(ids) => {
                        let _ = tokenize::decode_ids(&tok, &ids);
                        Ok("encoded")
                    }
                    Err(_) => Ok("loaded"),
                }
            }
        }
    })?
}

#[test]
fn tokenizer_random_bytes_never_panic() {
    let counts = check_property("tokenizer random bytes", 128, 0x70c3_0001, prop::collection::vec(any::<u8>(), 0..256), exercise_tokenizer);
    assert_reached("tokenizer random bytes", &counts, &[("rejected", 128)]);
}

#[test]
fn tokenizer_mutations_never_panic() {
    let input = (any::<Index>(), prop::collection::vec(json_edit(), 0..4), json_byte_edits());
    let counts = check_property("tokenizer mutations", 128, 0x70c3_0002, input, |(fixture, edits, bytes)| {
        let (name, text) = &tokenizer_fixtures()[fixture.index(tokenizer_fixtures().len())];
        exercise_tokenizer(mutate_json_text(text, &edits, &bytes)).map_err(|e| format!("{e} ({name})"))
    });
    assert_reached("tokenizer mutations", &counts, &[("rejected", 10), ("encoded", 10)]);
}

// ------------------------------------------------------------- explicit safetensors cases ----

/// A safetensors file from a header (JSON text, as given) and a data section.
fn st_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// Writes `bytes` to a file and opens it; the error's text (the file must not open).
fn open_err(tag: &str, bytes: &[u8]) -> (String, String) {
    let d = tmpdir("case");
    let p = d.join(format!("{tag}.safetensors"));
    std::fs::write(&p, bytes).unwrap();
    let e = match StFile::open(&p) {
        Ok(_) => panic!("{tag}: a malformed file opened"),
        Err(e) => e.to_string(),
    };
    // every reader says the same
    assert_eq!(read_safetensors(&p).unwrap_err().to_string(), e, "{tag}");
    std::fs::remove_dir_all(&d).unwrap();
    (p.display().to_string(), e)
}

fn assert_names(tag: &str, path: &str, e: &str, problem: &[&str]) {
    assert!(e.contains(path), "{tag}: the error names the file: {e}");
    for w in problem {
        assert!(e.contains(w), "{tag}: the error says {w:?}: {e}");
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn truncated_and_short_files_are_clear_errors() {
    let good = &model_fixtures().iter().find(|f| f.name == "gpt2_lm").unwrap().weights;
    let hdr = header_end(good);
    for (tag, cut, words) in [
        ("empty", 0, &["8-byte header length", "0 bytes"][..]),
        ("length_cut", 5, &["8-byte header length", "5 bytes"]),
        ("header_cut", hdr - 10, &["header length", "past the end of the file", "truncated"]),
        ("data_cut", good.len() - 1, &["truncated", "data section"]),
        ("half", good.len() / 2, &["truncated", "data section"]),
    ] {
        let (p, e) = open_err(tag, &good[..cut]);
        assert_names(tag, &p, &e, words);
    }
    // and a file with bytes past its last tensor
    let mut long = good.clone();
    long.extend([0u8; 12]);
    let (p, e) = open_err("trailing", &long);
    assert_names("trailing", &p, &e, &["12 bytes past the last tensor"]);
}

#[test]
fn header_length_past_the_file_or_over_the_limit_is_a_clear_error() {
    let file = st_raw(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &f32_bytes(&[1.0, 2.0]));
    for (tag, n, words) in [
        ("past_end", file.len() as u64, &["header length", "past the end of the file"][..]),
        ("one_past", file.len() as u64 - 8 + 1, &["header length", "past the end of the file"]),
        ("100mb", 100_000_001, &["header length 100000001", "limit"]),
        ("1gb", 1 << 30, &["header length 1073741824", "limit"]),
        ("max", u64::MAX, &["header length 18446744073709551615", "limit"]),
    ] {
        let mut b = file.clone();
        b[..8].copy_from_slice(&n.to_le_bytes());
        let (p, e) = open_err(tag, &b);
        assert_names(tag, &p, &e, words);
    }
}

#[test]
fn bad_offsets_are_clear_errors_naming_the_tensor() {
    let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    for (tag, header, words) in [
        (
            "overlap",
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[3],"data_offsets":[8,20]}}"#,
            &["'a'", "'b'", "overlap"][..],
        ),
        (
            "gap",
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[3],"data_offsets":[12,24]}}"#,
            &["'a'", "'b'", "gap"],
        ),
        ("backwards", r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[12,0]},"b":{"dtype":"F32","shape":[3],"data_offsets":[12,24]}}"#, &["'a'", "end before they start"]),
        ("outside", r#"{"a":{"dtype":"F32","shape":[6],"data_offsets":[0,24]},"b":{"dtype":"F32","shape":[2],"data_offsets":[24,32]}}"#, &["'b'", "past the end of the data section (24 bytes)"]),
        ("huge_end", r#"{"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,18446744073709551615]}}"#, &["'a'", "past the end of the data section"]),
        ("count", r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[3],"data_offsets":[12,24]}}"#, &["'a'", "[2, 2]", "16 bytes", "12"]),
        ("count_dtype", r#"{"a":{"dtype":"F64","shape":[2],"data_offsets":[0,24]}}"#, &["'a'", "F64", "[2]", "needs 16 bytes"]),
        ("overflow", r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,24]}}"#, &["'a'", "too large"]),
        ("zero_overflow", r#"{"a":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]},"b":{"dtype":"F32","shape":[6],"data_offsets":[0,24]}}"#, &["'a'", "too large"]),
    ] {
        let (p, e) = open_err(tag, &st_raw(header, &data));
        assert_names(tag, &p, &e, words);
    }
    // offsets listed out of file order are fine (the format sorts them): both tensors read back
    let h = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let f = StFile::from_bytes(st_raw(h, &data), "out_of_order").unwrap();
    assert_eq!(f.tensor("b").unwrap().to_vec::<f32>().unwrap(), vec![5.0, 6.0]);
}

/// The sum of the offsets checked in safetensors' own validation (`buffer_end + 8 + n`) would
/// overflow for tensors that end near `usize::MAX`: kiln rejects them before that (a debug build
/// panicked here).
#[test]
fn offsets_near_usize_max_are_errors_not_overflows() {
    // U8 tensors of up to 2^61 - 1 elements (their 8-bit sizes fit in a u64) that end 23 bytes
    // short of 2^64: adding the header's length to their end overflows
    let big = (1u64 << 61) - 1;
    let mut h = serde_json::Map::new();
    let mut start = 0u64;
    for (i, n) in [big, big, big, big, big, big, big, (1 << 61) - 16].into_iter().enumerate() {
        let end = start + n;
        h.insert(format!("t{i}"), json!({"dtype": "U8", "shape": [n], "data_offsets": [start, end]}));
        start = end;
    }
    assert_eq!(start, u64::MAX - 22);
    let (p, e) = open_err("near_max", &join_st(&Value::Object(h), &[0u8; 16]));
    assert_names("near_max", &p, &e, &["past the end of the data section"]);
}

#[test]
fn duplicate_names_and_bad_text_are_clear_errors() {
    let data = f32_bytes(&[1.0, 2.0]);
    let dup = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let (p, e) = open_err("dup", &st_raw(dup, &data));
    assert_names("dup", &p, &e, &["duplicate", "'a'"]);
    let dup_meta = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{}}"#;
    let (p, e) = open_err("dup_meta", &st_raw(dup_meta, &data));
    assert_names("dup_meta", &p, &e, &["duplicate", "'__metadata__'"]);
    let mut bad = st_raw(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &data);
    bad[10] = 0xff; // inside the name
    let (p, e) = open_err("utf8", &bad);
    assert_names("utf8", &p, &e, &["header", "UTF-8"]);
    let (p, e) = open_err("not_json", &st_raw("{not json}", &data));
    assert_names("not_json", &p, &e, &["header", "JSON"]);
    let (p, e) = open_err("array", &st_raw("[1, 2]", &data));
    assert_names("array", &p, &e, &["header", "JSON object"]);
    let (p, e) = open_err("entry", &st_raw(r#"{"a":{"dtype":"F32","shape":[2]}}"#, &data));
    assert_names("entry", &p, &e, &["'a'", "data_offsets"]);
    let (p, e) = open_err("dtype_name", &st_raw(r#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#, &data));
    assert_names("dtype_name", &p, &e, &["'a'", "Q4"]);
    let (p, e) = open_err("metadata", &st_raw(r#"{"__metadata__":{"format":3},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &data));
    assert_names("metadata", &p, &e, &["__metadata__"]);
}

/// `fixture`'s weights rewritten tensor by tensor: `edit` gets each name, dtype, shape and bytes
/// and returns them changed, or `None` to drop the tensor; offsets are laid out anew.
fn rewrite(fixture: &str, edit: impl Fn(&str, String, Value, Vec<u8>) -> Option<(String, Value, Vec<u8>)>) -> Vec<u8> {
    let f = model_fixtures().iter().find(|f| f.name == fixture).unwrap();
    let (m, data) = split_st(&f.weights);
    let mut entries: Vec<(String, Value)> = m.into_iter().filter(|(k, _)| k != "__metadata__").collect();
    entries.sort_by_key(|(_, v)| v["data_offsets"][0].as_u64().unwrap());
    let (mut h, mut out) = (serde_json::Map::new(), Vec::new());
    for (k, v) in entries {
        let (s, e) = (v["data_offsets"][0].as_u64().unwrap() as usize, v["data_offsets"][1].as_u64().unwrap() as usize);
        let Some((dt, shape, bytes)) = edit(&k, v["dtype"].as_str().unwrap().to_string(), v["shape"].clone(), data[s..e].to_vec()) else { continue };
        let start = out.len();
        out.extend(bytes);
        h.insert(k, json!({"dtype": dt, "shape": shape, "data_offsets": [start, out.len()]}));
    }
    join_st(&Value::Object(h), &out)
}

/// `fixture`'s weights with tensor `name` as `dtype` data of the same shape, every byte `fill`.
fn with_tensor_as(fixture: &str, name: &str, dtype: &str, elem_bytes: usize, fill: u8) -> Vec<u8> {
    rewrite(fixture, |k, dt, shape, bytes| {
        if k != name {
            return Some((dt, shape, bytes));
        }
        let n: usize = shape.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).product();
        Some((dtype.to_string(), shape, vec![fill; n * elem_bytes]))
    })
}

/// Loads `bytes` as `fixture`'s model file: (the file's path, the error).
fn load_err(tag: &str, fixture: &str, bytes: &[u8]) -> (String, String) {
    let f = model_fixtures().iter().find(|f| f.name == fixture).unwrap();
    let d = tmpdir("load");
    let p = d.join(format!("{tag}.safetensors"));
    std::fs::write(&p, bytes).unwrap();
    let cfg = ModelConfig::from_json_str(&f.config, "config.json").unwrap();
    let store = ParamStore::new(0, DType::F32, Device::Cpu);
    Model::build(&cfg, &store).unwrap();
    let e = load_params(&p, &store, &cfg.family().name_map(), &LoadOptions::strict()).expect_err(tag).to_string();
    // the user's path says the same
    std::fs::write(d.join("config.json"), &f.config).unwrap();
    std::fs::rename(&p, d.join("model.safetensors")).unwrap();
    let e2 = LoadedModel::from_dir(&d, 0, Device::Cpu).err().expect(tag).to_string();
    assert_eq!(e2, e.replace(&p.display().to_string(), &d.join("model.safetensors").display().to_string()), "{tag}");
    std::fs::remove_dir_all(&d).unwrap();
    (p.display().to_string(), e)
}

#[test]
fn a_weight_of_a_non_float_dtype_is_a_clear_error() {
    let name = "transformer.h.0.attn.c_attn.weight";
    for (dtype, size) in [("I64", 8), ("I32", 4), ("U8", 1), ("BOOL", 1), ("I8", 1)] {
        let (p, e) = load_err(dtype, "gpt2_lm", &with_tensor_as("gpt2_lm", name, dtype, size, 1));
        assert_names(dtype, &p, &e, &[name, "integer dtype", "needs a float"]);
    }
    for (dtype, size) in [("U32", 4), ("U16", 2), ("F8_E4M3", 1), ("C64", 8)] {
        let (p, e) = load_err(dtype, "gpt2_lm", &with_tensor_as("gpt2_lm", name, dtype, size, 1));
        assert_names(dtype, &p, &e, &[name, "unsupported safetensors dtype", dtype]);
    }
    // a float of another width converts (f16 ones are ones)
    let b = with_tensor_as("gpt2_lm", name, "F16", 2, 0);
    let d = tmpdir("f16");
    std::fs::write(d.join("model.safetensors"), &b).unwrap();
    std::fs::write(d.join("config.json"), &model_fixtures().iter().find(|f| f.name == "gpt2_lm").unwrap().config).unwrap();
    let l = LoadedModel::from_dir(&d, 0, Device::Cpu).unwrap();
    assert!(l.store.get(name).unwrap().tensor().to_vec::<f32>().unwrap().iter().all(|&x| x == 0.0));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_weight_holding_nan_or_inf_is_a_clear_error() {
    let name = "bert.encoder.layer.0.output.dense.weight";
    let f = model_fixtures().iter().find(|f| f.name == "bert_masked_lm").unwrap();
    let (m, data) = split_st(&f.weights);
    assert!(m.contains_key(name), "fixture holds {name}");
    for (tag, bits) in [("nan", f32::NAN.to_le_bytes()), ("inf", f32::NEG_INFINITY.to_le_bytes())] {
        let s = m[name]["data_offsets"][0].as_u64().unwrap() as usize;
        let mut data = data.clone();
        data[s + 12..s + 16].copy_from_slice(&bits);
        let (p, e) = load_err(tag, "bert_masked_lm", &join_st(&Value::Object(m.clone()), &data));
        assert_names(tag, &p, &e, &[name, "NaN or infinite"]);
    }
}

#[test]
fn shape_mismatch_and_missing_weights_are_clear_errors() {
    let name = "transformer.h.1.mlp.c_proj.bias";
    let f = model_fixtures().iter().find(|f| f.name == "gpt2_lm").unwrap();
    let (mut m, data) = split_st(&f.weights);
    // the bias [32] read as [4, 8]: the byte count fits, the model's shape does not
    m.get_mut(name).unwrap()["shape"] = json!([4, 8]);
    let (p, e) = load_err("shape", "gpt2_lm", &join_st(&Value::Object(m.clone()), &data));
    assert_names("shape", &p, &e, &["does not fit the model", name, "[32]", "[4, 8]"]);
    // an empty tensor with huge dims is a shape mismatch too (not a stride overflow)
    let w = read_safetensors(fixtures().join("gpt2_lm/model.safetensors")).unwrap();
    let mut tensors: Vec<(String, Tensor)> = w.into_iter().filter(|(n, _)| n != name).collect();
    tensors.push((name.into(), Tensor::from_vec(Vec::<f32>::new(), &[0, 1 << 20]).unwrap()));
    let d = tmpdir("shape");
    let p = d.join("m.safetensors");
    kiln::model::st_io::write_safetensors(&p, &tensors, None, None).unwrap();
    let (pp, e) = load_err("empty", "gpt2_lm", &std::fs::read(&p).unwrap());
    assert_names("empty", &pp, &e, &[name, "[0, 1048576]"]);
    std::fs::remove_dir_all(&d).unwrap();
    // a missing weight is named, and so is an unexpected one
    let b = rewrite("gpt2_lm", |k, dt, shape, bytes| (k != name).then_some((dt, shape, bytes)));
    let (p, e) = load_err("missing", "gpt2_lm", &b);
    assert_names("missing", &p, &e, &["does not fit the model", "missing from the file (1)", name]);
    let mut t = read_safetensors(fixtures().join("gpt2_lm/model.safetensors")).unwrap();
    t.push(("transformer.h.9.attn.c_attn.weight".into(), Tensor::from_vec(vec![0f32; 4], &[2, 2]).unwrap()));
    let d = tmpdir("extra");
    let p2 = d.join("m.safetensors");
    kiln::model::st_io::write_safetensors(&p2, &t, None, None).unwrap();
    let (p, e) = load_err("unexpected", "gpt2_lm", &std::fs::read(&p2).unwrap());
    assert_names("unexpected", &p, &e, &["does not fit the model", "unexpected in the file (1)", "transformer.h.9.attn.c_attn.weight"]);
    std::fs::remove_dir_all(&d).unwrap();
}

/// An empty tensor whose other dimensions multiply past `usize::MAX` is an error where it is made
/// (its contiguous strides would overflow; a debug build panicked).
#[test]
fn an_empty_tensor_with_overflowing_dims_is_an_error() {
    let e = Tensor::from_vec(Vec::<f32>::new(), &[0, 1 << 40, 1 << 40]).unwrap_err().to_string();
    assert!(e.contains("too large") && e.contains("[0, 1099511627776, 1099511627776]"), "{e}");
    // an empty tensor with modest dims is fine
    assert_eq!(Tensor::from_vec(Vec::<f32>::new(), &[0, 1 << 20, 3]).unwrap().shape(), &[0, 1 << 20, 3]);
}
