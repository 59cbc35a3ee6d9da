//! Parity with PyTorch + Hugging Face transformers on the same weights (tests/fixtures, made by
//! scripts/make_fixtures.py): outputs at relative error 1e-4, the loss, and the gradient of every
//! parameter at 1e-3. Relative error = max|ours - theirs| / max(max|theirs|, 1e-4) over the tensor
//! (the floor keeps gradients that are exactly zero in theory, like attention key biases, from
//! comparing float noise against float noise).
use kiln::model::bert::{BertLabels, BertModel};
use kiln::model::config::ModelConfig;
use kiln::model::model::Model;
use kiln::model::nn::ForwardCtx;
use kiln::model::params::ParamStore;
use kiln::model::st_io::read_safetensors;
use kiln::model::{load_params, HfNameMap, LoadOptions};
use kiln::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// The fixtures folder: `KILN_FIXTURES_DIR` when set (the test binary copied to another machine,
/// see scripts/gpu_run.sh), else the source tree's tests/fixtures.
fn fixture(name: &str) -> PathBuf {
    match std::env::var_os("KILN_FIXTURES_DIR") {
        Some(d) => PathBuf::from(d).join(name),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name),
    }
}

/// The device the models run on: `KILN_TEST_DEVICE` (e.g. `cuda`), default CPU. Parameters are
/// created there and every batch tensor is uploaded; the comparisons download.
fn device() -> Device {
    std::env::var("KILN_TEST_DEVICE").ok().filter(|v| !v.is_empty()).map_or(Device::Cpu, |v| v.parse().expect("KILN_TEST_DEVICE"))
}

fn rel_err(ours: &Tensor, theirs: &Tensor) -> f64 {
    assert_eq!(ours.elem_count(), theirs.elem_count(), "element counts differ: {:?} vs {:?}", ours.shape(), theirs.shape());
    let (a, b) = (ours.to_vec_f64().unwrap(), theirs.to_vec_f64().unwrap());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-4);
    a.iter().zip(&b).map(|(x, y)| if x.is_finite() { (x - y).abs() } else { f64::INFINITY }).fold(0.0, f64::max) / scale
}

struct Fixture {
    cfg: ModelConfig,
    store: ParamStore,
    batch: serde_json::Value,
    expected: HashMap<String, Tensor>,
}

fn load(name: &str) -> Fixture {
    let dir = fixture(name);
    let cfg = ModelConfig::load(dir.join("config.json")).unwrap();
    let store = ParamStore::new(0, DType::F32, device());
    let batch = serde_json::from_str(&std::fs::read_to_string(dir.join("batch.json")).unwrap()).unwrap();
    let expected = read_safetensors(dir.join("expected.safetensors")).unwrap().into_iter().collect();
    Fixture { cfg, store, batch, expected }
}

fn field(v: &serde_json::Value, key: &str) -> Option<Tensor> {
    let x = v.get(key)?.as_array()?;
    let t = if x.first()?.is_array() {
        let rows: Vec<Vec<i64>> = x.iter().map(|r| r.as_array().unwrap().iter().map(|e| e.as_i64().unwrap()).collect()).collect();
        let t = rows[0].len();
        Some(Tensor::from_vec(rows.concat(), &[rows.len(), t]).unwrap())
    } else {
        let f: Vec<i64> = x.iter().map(|e| e.as_i64().unwrap()).collect();
        let n = f.len();
        Some(Tensor::from_vec(f, &[n]).unwrap())
    };
    t.map(|t| t.to_device(device()).unwrap())
}

/// Builds the model, loads the fixture weights strictly, runs forward + backward and compares.
fn check(name: &str) {
    let f = load(name);
    let model = Model::build(&f.cfg, &f.store).unwrap();
    let report = load_params(fixture(name).join("model.safetensors"), &f.store, &HfNameMap::for_model_type(f.cfg.model_type()), &LoadOptions::strict()).unwrap();
    assert!(report.is_clean(), "{name}: {report}");
    let b = &f.batch;
    let labels = BertLabels {
        labels: field(b, "labels"),
        next_sentence_label: field(b, "next_sentence_label"),
        start_positions: field(b, "start_positions"),
        end_positions: field(b, "end_positions"),
    };
    let ids = field(b, "input_ids").unwrap();
    let out = model.forward(&ids, field(b, "attention_mask").as_ref(), field(b, "token_type_ids").as_ref(), &labels, &ForwardCtx::eval()).unwrap();
    let mut compared = 0;
    for (k, ours) in &out.tensors {
        let key = if k == "logits" && !f.expected.contains_key("logits") { "prediction_logits" } else { k.as_str() };
        if let Some(theirs) = f.expected.get(key) {
            let e = rel_err(ours, theirs);
            assert!(e <= 1e-4, "{name}: {k} relative error {e:.2e}");
            compared += 1;
        }
    }
    assert!(compared >= 2, "{name}: only {compared} outputs compared");
    let loss = out.loss.expect("fixture batch has labels");
    let e = rel_err(&loss.reshape(&[1]).unwrap(), &f.expected["loss"]);
    assert!(e <= 1e-4, "{name}: loss relative error {e:.2e}");
    loss.backward().unwrap();
    let mut n_grads = 0;
    for p in f.store.params() {
        let Some(theirs) = f.expected.get(&format!("grad.{}", p.name())) else { continue };
        let ours = p.grad().unwrap_or_else(|| panic!("{name}: no gradient for {}", p.name()));
        let e = rel_err(&ours, theirs);
        assert!(e <= 1e-3, "{name}: grad.{} relative error {e:.2e}", p.name());
        n_grads += 1;
    }
    assert_eq!(n_grads, f.store.len(), "{name}: every parameter has an expected gradient");
}

#[test]
fn gpt2_lm_head_model() {
    check("gpt2_lm");
}
#[test]
fn bert_for_masked_lm() {
    check("bert_masked_lm");
}
#[test]
fn bert_for_pretraining() {
    check("bert_pretraining");
}
#[test]
fn bert_for_sequence_classification() {
    check("bert_seq_cls");
}
#[test]
fn bert_for_token_classification() {
    check("bert_token_cls");
}
#[test]
fn bert_for_question_answering() {
    check("bert_qa");
}

/// A bare BertModel file (no `bert.` prefix, with pooler) loads into BertModel and matches.
#[test]
fn bert_model_without_prefix() {
    let f = load("bert_base_model");
    let ModelConfig::Bert(c) = &f.cfg else { panic!("not bert") };
    let m = BertModel::new(&f.store, c, "", true).unwrap();
    load_params(fixture("bert_base_model").join("model.safetensors"), &f.store, &HfNameMap::bert(), &LoadOptions::strict()).unwrap();
    let b = &f.batch;
    let o = m.forward(&field(b, "input_ids").unwrap(), field(b, "attention_mask").as_ref(), field(b, "token_type_ids").as_ref(), &ForwardCtx::eval()).unwrap();
    assert!(rel_err(&o.last_hidden_state, &f.expected["last_hidden_state"]) <= 1e-4);
    assert!(rel_err(&o.pooler_output.unwrap(), &f.expected["pooler_output"]) <= 1e-4);
}

/// Legacy checkpoints (gamma/beta names, position_ids buffer; GPT-2 without prefix, attn.bias
/// buffers) give the same outputs as the modern files.
#[test]
fn legacy_checkpoints() {
    for name in ["bert_legacy_names", "gpt2_legacy_names"] {
        let f = load(name);
        let model = Model::build(&f.cfg, &f.store).unwrap();
        load_params(fixture(name).join("model.safetensors"), &f.store, &HfNameMap::for_model_type(f.cfg.model_type()), &LoadOptions::strict()).unwrap();
        let b = &f.batch;
        let labels = BertLabels { labels: field(b, "labels"), ..Default::default() };
        let out = model.forward(&field(b, "input_ids").unwrap(), field(b, "attention_mask").as_ref(), field(b, "token_type_ids").as_ref(), &labels, &ForwardCtx::eval()).unwrap();
        let logits = &out.tensors.iter().find(|(k, _)| k == "logits").unwrap().1;
        assert!(rel_err(logits, &f.expected["logits"]) <= 1e-4, "{name}: logits");
        assert!(rel_err(&out.loss.unwrap().reshape(&[1]).unwrap(), &f.expected["loss"]) <= 1e-4, "{name}: loss");
    }
}
