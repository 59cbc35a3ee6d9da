//! Parity with PyTorch + Hugging Face transformers on the same weights (tests/fixtures, made by
//! scripts/make_fixtures.py): outputs at relative error 1e-4, the loss, and the gradient of every
//! parameter at 1e-3. Relative error = max|ours - theirs| / max(max|theirs|, 1e-4) over the tensor
//! (the floor keeps gradients that are exactly zero in theory, like attention key biases, from
//! comparing float noise against float noise).
use kiln::model::model::{Inputs, LoadedModel};
use kiln::model::nn::ForwardCtx;
use kiln::model::checkpoint::hf_tensors;
use kiln::model::st_io::{read_safetensors, StFile};
use kiln::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
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

fn max_abs(t: &Tensor) -> f64 {
    t.to_vec_f64().unwrap().iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

fn read_json(path: PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The HF output names a kiln output may be stored under in older fixtures.
fn expected_key<'a>(expected: &HashMap<String, Tensor>, k: &'a str) -> Option<&'a str> {
    if expected.contains_key(k) {
        return Some(k);
    }
    (k == "prediction_logits" && expected.contains_key("logits")).then_some("logits")
}

/// Loads the fixture directory as a user would (`LoadedModel::from_dir`: config, architecture,
/// pooler from the file, strict load), runs the batch, and compares every output transformers
/// saved, the loss(es) and the gradient of every parameter (named as `named_parameters()` names
/// them). Bare models without a head are given transformers' stand-in loss: Σ over outputs of
/// (output · `loss_weight.<output>`).sum(). Returns the number of gradients compared.
fn check(name: &str) -> usize {
    let dir = fixture(name);
    let l = LoadedModel::from_dir(&dir, 0, device()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected: HashMap<String, Tensor> = read_safetensors(dir.join("expected.safetensors")).unwrap().into_iter().collect();
    if !name.contains("legacy") {
        // saving writes the names transformers wrote (GPT-1's double heads keep the tied matrix
        // under `lm_head.weight`, kiln under `transformer.tokens_embed.weight`: transformers
        // loads either, since it ties them)
        let ours: BTreeSet<String> = hf_tensors(&l.store, &l.cfg.family().name_map()).unwrap().into_iter().map(|(n, _)| n).collect();
        let mut theirs: BTreeSet<String> = StFile::open(dir.join("model.safetensors")).unwrap().names().into_iter().collect();
        if !ours.contains("lm_head.weight") && theirs.remove("lm_head.weight") {
            theirs.insert("transformer.tokens_embed.weight".into());
        }
        assert_eq!(ours, theirs, "{name}: the tensors kiln saves differ from transformers' file");
    }
    let inputs = Inputs::from_json(&read_json(dir.join("batch.json"))).unwrap().to_device(device()).unwrap();
    let out = l.model.forward(&inputs, &ForwardCtx::eval()).unwrap_or_else(|e| panic!("{name}: forward: {e}"));
    let mut compared = 0;
    for (k, ours) in &out.tensors {
        if let Some(key) = expected_key(&expected, k) {
            let e = rel_err(ours, &expected[key]);
            assert!(e <= 1e-4, "{name}: {k} relative error {e:.2e}");
            compared += 1;
        }
    }
    // every output transformers saved has a kiln counterpart
    for k in expected.keys().filter(|k| !k.contains('.') && !k.ends_with("loss")) {
        let ours = if k == "logits" { out.get("logits").or(out.get("prediction_logits")) } else { out.get(k) };
        assert!(ours.is_some(), "{name}: kiln produced no '{k}' (it produced {:?})", out.tensors.iter().map(|(k, _)| k).collect::<Vec<_>>());
    }
    assert!(compared >= 1, "{name}: no output compared");
    let loss = match (&out.loss, expected.get("loss")) {
        (Some(loss), Some(theirs)) => {
            let e = rel_err(&loss.reshape(&[1]).unwrap(), theirs);
            assert!(e <= 1e-4, "{name}: loss relative error {e:.2e}");
            if let Some(theirs) = expected.get("mc_loss") {
                let e = rel_err(&out.get("mc_loss").expect("mc_loss").reshape(&[1]).unwrap(), theirs);
                assert!(e <= 1e-4, "{name}: mc_loss relative error {e:.2e}");
            }
            out.total_loss().unwrap().unwrap()
        }
        (Some(_), None) => panic!("{name}: kiln computed a loss, transformers none"),
        (None, theirs) => {
            let weights: Vec<(&String, &Tensor)> = expected.iter().filter(|(k, _)| k.starts_with("loss_weight.")).collect();
            if weights.is_empty() {
                return 0; // a forward-only fixture
            }
            let mut total: Option<Tensor> = None;
            for (k, w) in weights {
                let o = out.get(&k["loss_weight.".len()..]).unwrap_or_else(|| panic!("{name}: no output for {k}"));
                let term = o.mul(&w.to_device(device()).unwrap()).unwrap().sum_all().unwrap();
                total = Some(match total {
                    Some(t) => t.add(&term).unwrap(),
                    None => term,
                });
            }
            let total = total.unwrap();
            let theirs = theirs.unwrap_or_else(|| panic!("{name}: the fixture has loss weights but no loss"));
            let e = rel_err(&total.reshape(&[1]).unwrap(), theirs);
            assert!(e <= 1e-4, "{name}: stand-in loss relative error {e:.2e}");
            total
        }
    };
    if !expected.keys().any(|k| k.starts_with("grad.")) {
        return 0; // a forward-only fixture (the checkpoint-quirk files)
    }
    loss.backward().unwrap();
    let mut n_grads = 0;
    for p in l.store.params() {
        let theirs = expected.get(&format!("grad.{}", p.name())).unwrap_or_else(|| panic!("{name}: transformers has no parameter '{}'", p.name()));
        let ours = p.grad().unwrap_or_else(|| panic!("{name}: no gradient for {}", p.name()));
        // gradients that are zero in theory (a QA head's bias: the softmax sums to 1) are float
        // noise on both sides: within 1e-6 absolute passes too
        let (e, abs) = (rel_err(&ours, theirs), rel_err(&ours, theirs) * max_abs(theirs).max(1e-4));
        assert!(e <= 1e-3 || abs <= 1e-6, "{name}: grad.{} relative error {e:.2e} (absolute {abs:.2e})", p.name());
        n_grads += 1;
    }
    let theirs = expected.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(n_grads, theirs, "{name}: kiln has {n_grads} parameters, transformers {theirs}");
    n_grads
}

macro_rules! parity {
    ($($test:ident => $fixture:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            check($fixture);
        }
    )*};
}

parity! {
    gpt2_lm_head_model => "gpt2_lm",
    bert_for_masked_lm => "bert_masked_lm",
    bert_for_pretraining => "bert_pretraining",
    bert_for_sequence_classification => "bert_seq_cls",
    bert_for_token_classification => "bert_token_cls",
    bert_for_question_answering => "bert_qa",
    bert_model_with_pooler_no_prefix => "bert_base_model",
    bert_model_without_pooler => "bert_model_no_pooler",
    roberta_model => "roberta_model",
    roberta_for_masked_lm => "roberta_masked_lm",
    roberta_for_sequence_classification => "roberta_seq_cls",
    roberta_for_token_classification => "roberta_token_cls",
    roberta_for_question_answering => "roberta_qa",
    roberta_with_transformers_default_config => "roberta_default_config",
    albert_model => "albert_model",
    albert_for_pretraining => "albert_pretraining",
    albert_for_masked_lm => "albert_masked_lm",
    albert_for_sequence_classification => "albert_seq_cls",
    albert_for_token_classification => "albert_token_cls",
    albert_for_question_answering => "albert_qa",
    distilbert_model => "distilbert_model",
    distilbert_with_sinusoidal_positions => "distilbert_sinusoidal_model",
    distilbert_for_masked_lm => "distilbert_masked_lm",
    distilbert_for_sequence_classification => "distilbert_seq_cls",
    distilbert_for_question_answering => "distilbert_qa",
    distilbert_for_token_classification => "distilbert_token_cls",
    electra_model => "electra_model",
    electra_for_pretraining => "electra_pretraining",
    electra_for_masked_lm => "electra_masked_lm",
    electra_for_sequence_classification => "electra_seq_cls",
    electra_for_token_classification => "electra_token_cls",
    electra_for_question_answering => "electra_qa",
    openai_gpt_model => "openai_gpt_model",
    openai_gpt_lm_head_model => "openai_gpt_lm",
    openai_gpt_double_heads_model => "openai_gpt_double_heads",
    gpt2_model => "gpt2_model",
    gpt2_for_sequence_classification => "gpt2_seq_cls",
    gpt2_double_heads_model => "gpt2_double_heads",
    gpt2_for_token_classification => "gpt2_token_cls",
    gpt2_with_token_type_ids => "gpt2_token_types",
    gpt2_with_untied_lm_head => "gpt2_untied_head",
    gpt2_with_transformers_default_config => "gpt2_default_config",
}

/// Legacy checkpoints (gamma/beta names, position_ids buffer; GPT-2 without prefix, attn.bias
/// buffers) give the same outputs as the modern files.
#[test]
fn legacy_checkpoints() {
    for name in ["bert_legacy_names", "gpt2_legacy_names"] {
        check(name);
    }
}

/// Greedy generation through the key/value cache gives transformers' tokens (its own cached
/// `generate`), and every step's next-token logits match transformers' at relative error 1e-4.
/// The fixture records the smallest top-1 / top-2 logit gap (0.015), far above that error.
#[test]
fn gpt2_greedy_generation_matches_transformers() {
    use kiln::model::generate::SampleOptions;
        let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("gpt2_generate").join("meta.json")).unwrap()).unwrap();
    let expected: HashMap<String, Tensor> = read_safetensors(fixture("gpt2_generate").join("expected.safetensors")).unwrap().into_iter().collect();
    let loaded = LoadedModel::from_dir(fixture(meta["model_dir"].as_str().unwrap()), 0, device()).unwrap();
    let m = loaded.model.as_causal_lm().unwrap();
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
        let loaded = LoadedModel::from_dir(fixture("gpt2_lm"), 0, device()).unwrap();
    let m = loaded.model.as_causal_lm().unwrap();
    let (b, t) = (2, 30);
    let ids: Vec<i64> = (0..b * t).map(|i| ((i * 37 + 11) % 100) as i64).collect();
    let ids = Tensor::from_vec(ids, &[b, t]).unwrap().to_device(device()).unwrap();
    let ctx = ForwardCtx::eval();
    let full = kiln::tensor::no_grad(|| m.transformer.forward(&ids, None, None, &ctx)).unwrap();
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
    let want = kiln::tensor::no_grad(|| m.transformer.forward(&ext, None, None, &ctx)).unwrap().narrow(1, t, 1).unwrap();
    assert!(rel_err(&h, &want) < 1e-5);
}

/// With bf16 weights (`LoadedModel::from_dir_as`), generation computes in bf16 through the same
/// cache: every step's logits stay within bf16 rounding of transformers' f32 logits, and feeding
/// the tokens in pieces gives the full bf16 forward's logits.
#[test]
fn gpt2_generation_with_bf16_weights() {
        let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("gpt2_generate").join("meta.json")).unwrap()).unwrap();
    let expected: HashMap<String, Tensor> = read_safetensors(fixture("gpt2_generate").join("expected.safetensors")).unwrap().into_iter().collect();
    let loaded = LoadedModel::from_dir_as(fixture("gpt2_lm"), 0, device(), DType::BF16).unwrap();
    let m = loaded.model.as_causal_lm().unwrap();
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
