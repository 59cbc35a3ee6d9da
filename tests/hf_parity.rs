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

/// Greedy generation through the key/value cache gives transformers' tokens (its own cached
/// `generate`), and every step's next-token logits match transformers' at relative error 1e-4.
/// The fixture records the smallest top-1 / top-2 logit gap (0.015), far above that error.
#[test]
fn gpt2_greedy_generation_matches_transformers() {
    use kiln::model::gpt::SampleOptions;
    use kiln::model::model::LoadedModel;
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("gpt2_generate").join("meta.json")).unwrap()).unwrap();
    let expected: HashMap<String, Tensor> = read_safetensors(fixture("gpt2_generate").join("expected.safetensors")).unwrap().into_iter().collect();
    let loaded = LoadedModel::from_dir(fixture(meta["model_dir"].as_str().unwrap()), 0, device()).unwrap();
    let m = loaded.model.as_gpt2().unwrap();
    let new = meta["max_new_tokens"].as_u64().unwrap() as usize;
    let ids = |v: &serde_json::Value| -> Vec<i64> { v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect() };
    for (i, (prompt, want)) in meta["prompts"].as_array().unwrap().iter().zip(meta["sequences"].as_array().unwrap()).enumerate() {
        let (prompt, want) = (ids(prompt), ids(want));
        let got = m.generate(&prompt, &SampleOptions { max_new_tokens: new, ..Default::default() }).unwrap();
        assert_eq!(got, want, "prompt {i}: tokens differ from transformers' generate");
        // the same steps by hand: feed the prompt, then each generated token, comparing logits
        let steps = &expected[&format!("logits.{i}")];
        let mut cache = m.transformer.new_cache();
        let ctx = ForwardCtx::eval();
        let mut input = prompt.clone();
        for s in 0..new {
            let x = Tensor::from_vec(input.clone(), &[1, input.len()]).unwrap().to_device(device()).unwrap();
            let logits = m.next_token_logits(&x, &mut cache, &ctx).unwrap();
            let err = rel_err(&logits, &steps.narrow(0, s, 1).unwrap());
            assert!(err < 1e-4, "prompt {i}, step {s}: logits rel err {err:.2e}");
            input = vec![want[prompt.len() + s]];
        }
        assert_eq!(cache.len(), prompt.len() + new - 1);
    }
}

/// Feeding a batch through the key/value cache in pieces (a prefill, single tokens, and a chunk
/// that goes one position at a time) gives the hidden states of one causal forward over it; bad
/// input is an error that leaves the cache as it was.
#[test]
fn gpt2_kv_cache_pieces_match_one_forward() {
    use kiln::model::model::LoadedModel;
    let loaded = LoadedModel::from_dir(fixture("gpt2_lm"), 0, device()).unwrap();
    let m = loaded.model.as_gpt2().unwrap();
    let (b, t) = (2, 30);
    let ids: Vec<i64> = (0..b * t).map(|i| ((i * 37 + 11) % 100) as i64).collect();
    let ids = Tensor::from_vec(ids, &[b, t]).unwrap().to_device(device()).unwrap();
    let ctx = ForwardCtx::eval();
    let full = kiln::tensor::no_grad(|| m.transformer.forward(&ids, None, &ctx)).unwrap();
    let mut cache = m.transformer.new_cache();
    let mut parts = Vec::new();
    for (start, len) in [(0, 7), (7, 1), (8, 1), (9, 5), (14, 16)] {
        parts.push(m.transformer.forward_cached(&ids.narrow(1, start, len).unwrap(), &mut cache, &ctx).unwrap());
        assert_eq!(cache.len(), start + len);
    }
    let pieces = Tensor::cat(&parts, 1).unwrap();
    let err = rel_err(&pieces, &full);
    assert!(err < 1e-5, "hidden states through the cache differ: rel err {err:.2e}");
    // the LM-head variants agree with the full logits too
    let logits = kiln::tensor::no_grad(|| m.forward(&ids, None, None, &ctx)).unwrap().logits;
    let mut c2 = m.transformer.new_cache();
    let all = m.forward_cached(&ids, &mut c2, &ctx).unwrap();
    assert!(rel_err(&all, &logits) < 1e-5);
    let mut c3 = m.transformer.new_cache();
    let last = m.next_token_logits(&ids, &mut c3, &ctx).unwrap();
    assert!(rel_err(&last, &logits.narrow(1, t - 1, 1).unwrap()) < 1e-5);
    // errors leave the cache untouched: too many positions, another batch size, ids out of range
    let n_pos = 64;
    let before = cache.len();
    let long = Tensor::from_vec(vec![1i64; b * (n_pos - before + 1)], &[b, n_pos - before + 1]).unwrap().to_device(device()).unwrap();
    let e = m.transformer.forward_cached(&long, &mut cache, &ctx).unwrap_err().to_string();
    assert!(e.contains("exceed"), "{e}");
    let one = Tensor::from_vec(vec![1i64], &[1, 1]).unwrap().to_device(device()).unwrap();
    let e = m.transformer.forward_cached(&one, &mut cache, &ctx).unwrap_err().to_string();
    assert!(e.contains("batch"), "{e}");
    let bad = Tensor::from_vec(vec![1i64, 100], &[b, 1]).unwrap().to_device(device()).unwrap();
    assert!(m.transformer.forward_cached(&bad, &mut cache, &ctx).is_err());
    let bad_chunk = Tensor::from_vec(vec![1i64, 2, 3, 4, 5, 100], &[b, 3]).unwrap().to_device(device()).unwrap();
    assert!(m.transformer.forward_cached(&bad_chunk, &mut cache, &ctx).is_err(), "an id out of range in the second position of a chunk");
    assert_eq!(cache.len(), before);
    // and the cache still continues correctly after the errors
    let next = Tensor::from_vec(vec![5i64, 6], &[b, 1]).unwrap().to_device(device()).unwrap();
    let h = m.transformer.forward_cached(&next, &mut cache, &ctx).unwrap();
    let ext = Tensor::cat(&[ids.clone(), next.clone()], 1).unwrap();
    let want = kiln::tensor::no_grad(|| m.transformer.forward(&ext, None, &ctx)).unwrap().narrow(1, t, 1).unwrap();
    assert!(rel_err(&h, &want) < 1e-5);
}

/// With bf16 weights (`LoadedModel::from_dir_as`), generation computes in bf16 through the same
/// cache: every step's logits stay within bf16 rounding of transformers' f32 logits, and feeding
/// the tokens in pieces gives the full bf16 forward's logits.
#[test]
fn gpt2_generation_with_bf16_weights() {
    use kiln::model::model::LoadedModel;
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("gpt2_generate").join("meta.json")).unwrap()).unwrap();
    let expected: HashMap<String, Tensor> = read_safetensors(fixture("gpt2_generate").join("expected.safetensors")).unwrap().into_iter().collect();
    let loaded = LoadedModel::from_dir_as(fixture("gpt2_lm"), 0, device(), DType::BF16).unwrap();
    let m = loaded.model.as_gpt2().unwrap();
    assert_eq!(m.transformer.wte.weight.dtype(), DType::BF16);
    let ids = |v: &serde_json::Value| -> Vec<i64> { v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect() };
    let (prompt, seq) = (ids(&meta["prompts"][0]), ids(&meta["sequences"][0]));
    let steps = &expected["logits.0"];
    let ctx = ForwardCtx::eval().with_compute_dtype(DType::BF16);
    let mut cache = m.transformer.new_cache();
    let mut worst = 0.0f64;
    let mut input = prompt.clone();
    for s in 0..seq.len() - prompt.len() {
        let x = Tensor::from_vec(input.clone(), &[1, input.len()]).unwrap().to_device(device()).unwrap();
        let logits = m.next_token_logits(&x, &mut cache, &ctx).unwrap();
        assert_eq!(logits.dtype(), DType::BF16);
        worst = worst.max(rel_err(&logits, &steps.narrow(0, s, 1).unwrap()));
        input = vec![seq[prompt.len() + s]];
    }
    assert!(worst < 1.6e-2, "bf16 logits vs transformers' f32: rel err {worst:.2e}");
    let all = Tensor::from_vec(seq.clone(), &[1, seq.len()]).unwrap().to_device(device()).unwrap();
    let full = kiln::tensor::no_grad(|| m.forward(&all, None, None, &ctx)).unwrap().logits;
    let mut c2 = m.transformer.new_cache();
    let pieces = Tensor::cat(&[m.forward_cached(&all.narrow(1, 0, 9).unwrap(), &mut c2, &ctx).unwrap(), m.forward_cached(&all.narrow(1, 9, seq.len() - 9).unwrap(), &mut c2, &ctx).unwrap()], 1).unwrap();
    let e = rel_err(&pieces, &full);
    assert!(e < 2e-2, "bf16 cached pieces vs one bf16 forward: rel err {e:.2e}");
    eprintln!("bf16: logits vs transformers f32 {worst:.2e}, cached vs full {e:.2e}");
}
