//! Model-crate infrastructure without neural-net ops: configs, parameter store, safetensors
//! checkpoints with HF quirks, AdamW (vs the PyTorch fixtures), clipping, schedules, tokenizers,
//! data pipelines (MLM / NSP / causal LM) and exact resume.
use kiln::model::checkpoint::{load_params, plan_load, save_params, HfNameMap, LoadOptions};
use kiln::model::config::{ModelConfig, PRESETS};
use kiln::model::family::Family;
use kiln::model::data::{pad_rows, split_documents, BertBatcher, CausalLmBatcher, MlmMasker, NspBuilder, IGNORE_INDEX};
use kiln::model::optim::{clip_grad_norm, grad_norm, AdamW, AdamWConfig, Optimizer};
use kiln::model::params::{Init, ParamStore};
use kiln::model::rng::DataRng;
use kiln::model::sched::{lr_at, Decay, LrSchedule};
use kiln::model::st_io::{read_safetensors, write_safetensors, StFile};
use kiln::model::tokenize::{self, SpecialIds};
use kiln::model::train_state::{load_train_state, save_checkpoint, save_train_state, TrainState};
use kiln::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn tmpdir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!("kiln-model-infra-{}-{}-{}", std::process::id(), tag, N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A store with one parameter per tensor of `file` (same names and shapes), zero-filled.
fn store_like(file: &Path, rename: impl Fn(&str) -> Option<String>) -> ParamStore {
    let f = StFile::open(file).unwrap();
    let store = ParamStore::new(0, DType::F32, Device::Cpu);
    for n in f.names() {
        if let Some(name) = rename(&n) {
            store.get_or_init(&name, &f.info(&n).unwrap().shape, Init::Zeros).unwrap();
        }
    }
    store
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap()
}

// ---------------------------------------------------------------------------------- config ----

#[test]
fn config_fixture_round_trip_keeps_unknown_fields() {
    let cfg = ModelConfig::load(fixture("bert_seq_cls")).unwrap();
    let ModelConfig::Encoder(b) = &cfg else { panic!("expected bert") };
    assert_eq!((b.hidden_size, b.num_attention_heads, cfg.num_labels(), b.layer_norm_eps), (32, 4, 3, 1e-12));
    assert_eq!(b.extra.get("architectures").unwrap()[0], "BertForSequenceClassification");
    let d = tmpdir("cfg");
    cfg.save(&d).unwrap();
    assert_eq!(ModelConfig::load(&d).unwrap(), cfg);

    let g = ModelConfig::load(fixture("gpt2_lm/config.json")).unwrap();
    let ModelConfig::Decoder(c) = &g else { panic!("expected gpt2") };
    assert_eq!((c.n_inner, c.inner_size(), c.layer_norm_epsilon, c.activation_function.as_str()), (None, 128, 1e-5, "gelu_new"));
    assert_eq!((c.bos_token_id, c.eos_token_id), (Some(99), Some(99)));
    let v = g.to_json_value().unwrap();
    assert!(v["n_inner"].is_null() && v["model_type"] == "gpt2" && v["pad_token_id"].is_null());
    assert_eq!(ModelConfig::from_json_str(&g.to_json_string().unwrap(), "x").unwrap(), g);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn config_presets_are_valid() {
    for p in PRESETS {
        let c = ModelConfig::preset(p).unwrap();
        c.validate().unwrap();
        assert_eq!(ModelConfig::from_json_str(&c.to_json_string().unwrap(), p).unwrap(), c, "{p}");
    }
    let base = ModelConfig::preset("bert-base").unwrap();
    assert_eq!((base.num_layers(), base.hidden_size(), base.layer_norm_eps()), (12, 768, 1e-12));
    let large = ModelConfig::preset("bert-large").unwrap();
    assert_eq!((large.num_layers(), large.hidden_size()), (24, 1024));
    let m = ModelConfig::preset("gpt2-medium").unwrap();
    assert_eq!((m.num_layers(), m.hidden_size(), m.vocab_size(), m.max_positions()), (24, 1024, 50257, 1024));
    let e = ModelConfig::preset("gpt3").unwrap_err().to_string();
    assert!(e.contains("gpt3") && e.contains("gpt2-tiny"), "{e}");
}

#[test]
fn config_errors_are_clear() {
    let err = |s: &str| ModelConfig::from_json_str(s, "/some/dir/config.json").unwrap_err().to_string();
    let e = err(r#"{"model_type": "bert", "hidden_size": 30, "num_attention_heads": 4}"#);
    assert!(e.contains("/some/dir/config.json") && e.contains("not divisible") && e.contains("30"), "{e}");
    let e = err(r#"{"model_type": "gpt2", "n_layer": 0}"#);
    assert!(e.contains("n_layer must be > 0"), "{e}");
    let e = err(r#"{"model_type": "t5"}"#);
    assert!(e.contains("unknown model_type 't5'"), "{e}");
    let e = err(r#"{"hidden_size": 8}"#);
    assert!(e.contains("model_type"), "{e}");
    let e = err(r#"{"model_type": "bert", "hidden_size": 8,"#);
    assert!(e.contains("/some/dir/config.json") && e.contains("invalid JSON") && e.contains("line 1"), "{e}");
    let e = err(r#"{"model_type": "bert", "hidden_size": "big"}"#);
    assert!(e.contains("invalid bert config") && e.contains("invalid type"), "{e}");
    let e = err(r#"{"model_type": "bert", "hidden_act": "swish"}"#);
    assert!(e.contains("hidden_act") && e.contains("swish"), "{e}");
    let e = err(r#"{"model_type": "gpt2", "attn_pdrop": 1.5}"#);
    assert!(e.contains("attn_pdrop"), "{e}");
    let e = ModelConfig::load("/nonexistent/kiln/dir").unwrap_err().to_string();
    assert!(e.contains("/nonexistent/kiln/dir"), "{e}");
}

// ------------------------------------------------------------------------------ param store ----

#[test]
fn param_store_names_init_freeze() {
    let a = ParamStore::new(7, DType::F32, Device::Cpu);
    let w1 = a.get_or_init("enc.w", &[3, 4], Init::Normal { std: 0.02 }).unwrap();
    a.get_or_init("enc.b", &[3], Init::Zeros).unwrap();
    a.get_or_init("dec.ln.weight", &[4], Init::Ones).unwrap();
    // Same seed, other creation order: identical values (seed derives from the name).
    let b = ParamStore::new(7, DType::F32, Device::Cpu);
    b.get_or_init("dec.ln.weight", &[4], Init::Ones).unwrap();
    let w2 = b.get_or_init("enc.w", &[3, 4], Init::Normal { std: 0.02 }).unwrap();
    assert_eq!(f32s(&w1.tensor()), f32s(&w2.tensor()));
    let std = (f32s(&w1.tensor()).iter().map(|x| x * x).sum::<f32>() / 12.0).sqrt();
    assert!(std > 0.005 && std < 0.05, "{std}");
    assert_eq!(a.names(), vec!["dec.ln.weight", "enc.b", "enc.w"]);
    assert_eq!(a.num_params(), 12 + 3 + 4);
    assert!(a.get("enc.b").unwrap().no_decay() && a.get("dec.ln.weight").unwrap().no_decay() && !w1.no_decay());
    let e = a.get_or_init("enc.w", &[4, 3], Init::Zeros).unwrap_err().to_string();
    assert!(e.contains("enc.w") && e.contains("[3, 4]") && e.contains("[4, 3]"), "{e}");

    // Freeze by prefix: tensors stop requiring grad, trainable count drops; later params too.
    assert!(w1.tensor().requires_grad());
    assert_eq!(a.freeze("enc"), 2);
    assert!(!w1.tensor().requires_grad() && w1.is_frozen());
    assert_eq!(a.num_trainable(), 4);
    let late = a.get_or_init("enc.extra", &[2], Init::Zeros).unwrap();
    assert!(late.is_frozen());
    assert_eq!(a.freeze("en"), 0, "prefixes match whole name components");
    assert_eq!(a.unfreeze("enc"), 3);
    assert!(w1.tensor().requires_grad() && a.num_trainable() == a.num_params());
    // Freezing keeps the data shared: an assign through the handle is seen by every clone.
    a.freeze("enc.w");
    w1.assign(&Tensor::ones(&[3, 4], DType::F32, Device::Cpu).unwrap()).unwrap();
    assert_eq!(f32s(&a.get("enc.w").unwrap().tensor()), vec![1.0; 12]);
    let p = a.path("bert").pp("encoder").pp(0);
    assert_eq!(p.get_or_init("w", &[1], Init::Const(2.0)).unwrap().name(), "bert.encoder.0.w");
}

// ------------------------------------------------------------------------------ checkpoints ----

#[test]
fn safetensors_round_trip_f32_f16_bf16() {
    let d = tmpdir("st");
    let store = ParamStore::new(3, DType::F32, Device::Cpu);
    store.get_or_init("a.weight", &[5, 7], Init::Normal { std: 1.0 }).unwrap();
    store.get_or_init("a.bias", &[7], Init::Uniform { lo: -1.0, hi: 1.0 }).unwrap();
    let map = HfNameMap::exact();
    for (dt, tag) in [(None, "f32"), (Some(DType::F16), "f16"), (Some(DType::BF16), "bf16")] {
        let path = d.join(format!("m_{tag}.safetensors"));
        save_params(&path, &store, &map, dt).unwrap();
        let f = StFile::open(&path).unwrap();
        assert_eq!(f.metadata().get("format").map(String::as_str), Some("pt"));
        let other = ParamStore::new(99, DType::F32, Device::Cpu);
        other.get_or_init("a.weight", &[5, 7], Init::Zeros).unwrap();
        other.get_or_init("a.bias", &[7], Init::Zeros).unwrap();
        let rep = load_params(&path, &other, &map, &LoadOptions::strict()).unwrap();
        assert!(rep.is_clean() && rep.loaded.len() == 2);
        for n in ["a.weight", "a.bias"] {
            let orig = store.get(n).unwrap().tensor();
            let want = match dt {
                Some(d) => f32s(&orig.to_dtype(d).unwrap()),
                None => f32s(&orig),
            };
            assert_eq!(f32s(&other.get(n).unwrap().tensor()), want, "{tag} {n}");
        }
    }
    // A bf16 parameter store loads an f32 file (converted) and writes bf16 back unchanged.
    let half = ParamStore::new(0, DType::BF16, Device::Cpu);
    half.get_or_init("a.weight", &[5, 7], Init::Zeros).unwrap();
    half.get_or_init("a.bias", &[7], Init::Zeros).unwrap();
    load_params(d.join("m_f32.safetensors"), &half, &map, &LoadOptions::strict()).unwrap();
    write_safetensors(d.join("h.safetensors"), &half.named_tensors(), None, None).unwrap();
    let back = read_safetensors(d.join("h.safetensors")).unwrap();
    assert_eq!(back[0].1.dtype(), DType::BF16);
    assert_eq!(f32s(&back[1].1), f32s(&store.get("a.weight").unwrap().tensor().to_dtype(DType::BF16).unwrap()));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn hf_quirks_legacy_names_buffers_prefix_and_tied() {
    // BERT: gamma/beta + int64 position_ids buffer → same weights as the modern file.
    let modern = fixture("bert_masked_lm/model.safetensors");
    let store = store_like(&modern, |n| Some(n.to_string()));
    let rep = load_params(fixture("bert_legacy_names/model.safetensors"), &store, &Family::Bert.name_map(), &LoadOptions::strict()).unwrap();
    assert!(rep.is_clean(), "{rep}");
    assert_eq!(rep.ignored, vec!["bert.embeddings.position_ids"]);
    assert!(rep.loaded.contains(&("bert.embeddings.LayerNorm.weight".into(), "bert.embeddings.LayerNorm.gamma".into())));
    let reference = StFile::open(&modern).unwrap();
    for (name, t) in store.named_tensors() {
        assert_eq!(f32s(&t), f32s(&reference.tensor(&name).unwrap()), "{name}");
    }
    // GPT-2 hub layout: no `transformer.` prefix, attn.bias / attn.masked_bias buffers.
    let gstore = store_like(&fixture("gpt2_lm/model.safetensors"), |n| Some(n.to_string()));
    let rep = load_params(fixture("gpt2_legacy_names/model.safetensors"), &gstore, &Family::Gpt2.name_map(), &LoadOptions::strict()).unwrap();
    assert!(rep.is_clean(), "{rep}");
    assert_eq!(rep.ignored.len(), 4);
    assert!(rep.loaded.contains(&("transformer.wte.weight".into(), "wte.weight".into())));
    // Conv1D stays [in, out]; a model storing [out, in] declares it and gets the transpose.
    let c_attn = gstore.get("transformer.h.0.attn.c_attn.weight").unwrap();
    assert_eq!(c_attn.shape(), vec![32, 96]);
    let tstore = store_like(&fixture("gpt2_lm/model.safetensors"), |n| Some(n.to_string()));
    let tp = tstore.get("transformer.h.0.attn.c_attn.weight").unwrap();
    tstore.remove(tp.name());
    let tp = tstore.get_or_init("transformer.h.0.attn.c_attn.weight", &[96, 32], Init::Zeros).unwrap();
    let tmap = Family::Gpt2.name_map().with_transposed(&["h.0.attn.c_attn.weight"]);
    load_params(fixture("gpt2_lm/model.safetensors"), &tstore, &tmap, &LoadOptions::strict()).unwrap();
    assert_eq!(f32s(&tp.tensor()), f32s(&c_attn.tensor().t().unwrap()));
    let d = tmpdir("tp");
    save_params(d.join("t.safetensors"), &tstore, &tmap, None).unwrap();
    assert_eq!(StFile::open(d.join("t.safetensors")).unwrap().info("transformer.h.0.attn.c_attn.weight").unwrap().shape, vec![32, 96]);

    // BertModel file (no prefix) into a model with `bert.`: encoder loads, MLM head missing.
    let mlm = store_like(&modern, |n| Some(n.to_string()));
    let rep = load_params(fixture("bert_base_model/model.safetensors"), &mlm, &Family::Bert.name_map(), &LoadOptions::default()).unwrap();
    assert_eq!(rep.missing, vec!["cls.predictions.bias", "cls.predictions.transform.LayerNorm.bias", "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.dense.bias", "cls.predictions.transform.dense.weight"]);
    assert_eq!(rep.unexpected, vec!["pooler.dense.bias", "pooler.dense.weight"]);
    assert!(rep.loaded.contains(&("bert.embeddings.word_embeddings.weight".into(), "embeddings.word_embeddings.weight".into())));
    // ...and the other direction: a prefixed file into a bare encoder.
    let bare = store_like(&fixture("bert_base_model/model.safetensors"), |n| Some(n.to_string()));
    let rep = load_params(&modern, &bare, &Family::Bert.name_map(), &LoadOptions::default()).unwrap();
    assert_eq!(rep.missing, vec!["pooler.dense.bias", "pooler.dense.weight"]);
    assert_eq!(rep.unexpected.len(), 5);

    // Tied alias: a file that has only `cls.predictions.decoder.bias` fills `cls.predictions.bias`;
    // when both exist the alias is ignored; saving never writes the alias.
    let mut ts: Vec<(String, Tensor)> = reference.tensors().unwrap();
    let bias = ts.iter().find(|(n, _)| n == "cls.predictions.bias").unwrap().1.clone();
    ts.push(("cls.predictions.decoder.bias".into(), bias.clone()));
    ts.push(("cls.predictions.decoder.weight".into(), reference.tensor("bert.embeddings.word_embeddings.weight").unwrap()));
    write_safetensors(d.join("both.safetensors"), &ts, None, None).unwrap();
    let rep = load_params(d.join("both.safetensors"), &store, &Family::Bert.name_map(), &LoadOptions::strict()).unwrap();
    assert_eq!(rep.ignored, vec!["cls.predictions.decoder.bias", "cls.predictions.decoder.weight"]);
    ts.retain(|(n, _)| n != "cls.predictions.bias");
    write_safetensors(d.join("alias.safetensors"), &ts, None, None).unwrap();
    let fresh = store_like(&modern, |n| Some(n.to_string()));
    let rep = load_params(d.join("alias.safetensors"), &fresh, &Family::Bert.name_map(), &LoadOptions::strict()).unwrap();
    assert!(rep.loaded.contains(&("cls.predictions.bias".into(), "cls.predictions.decoder.bias".into())), "{rep}");
    assert_eq!(f32s(&fresh.get("cls.predictions.bias").unwrap().tensor()), f32s(&bias));
    save_params(d.join("resaved.safetensors"), &fresh, &Family::Bert.name_map(), None).unwrap();
    assert_eq!(StFile::open(d.join("resaved.safetensors")).unwrap().names(), reference.names());
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn load_report_lists_missing_unexpected_and_both_shapes() {
    let d = tmpdir("rep");
    let src = ParamStore::new(1, DType::F32, Device::Cpu);
    src.get_or_init("enc.w", &[4, 6], Init::Normal { std: 1.0 }).unwrap();
    src.get_or_init("enc.b", &[4], Init::Zeros).unwrap();
    src.get_or_init("old.head", &[2], Init::Zeros).unwrap();
    save_params(d.join("m.safetensors"), &src, &HfNameMap::exact(), None).unwrap();
    let dst = ParamStore::new(2, DType::F32, Device::Cpu);
    let w = dst.get_or_init("enc.w", &[4, 5], Init::Zeros).unwrap();
    let b = dst.get_or_init("enc.b", &[4], Init::Ones).unwrap();
    dst.get_or_init("new.head", &[3], Init::Zeros).unwrap();
    let path = d.join("m.safetensors");
    let e = load_params(&path, &dst, &HfNameMap::exact(), &LoadOptions::strict()).unwrap_err().to_string();
    for s in ["m.safetensors", "missing", "new.head", "unexpected", "old.head", "enc.w", "[4, 5]", "[4, 6]"] {
        assert!(e.contains(s), "'{s}' not in: {e}");
    }
    assert_eq!(f32s(&b.tensor()), vec![1.0; 4], "a failed strict load modifies nothing");
    let rep = load_params(&path, &dst, &HfNameMap::exact(), &LoadOptions::default()).unwrap();
    assert_eq!(rep.missing, vec!["new.head"]);
    assert_eq!(rep.unexpected, vec!["old.head"]);
    assert_eq!(rep.shape_mismatches.len(), 1);
    let m = &rep.shape_mismatches[0];
    assert_eq!((m.name.as_str(), m.expected.clone(), m.got.clone()), ("enc.w", vec![4, 5], vec![4, 6]));
    assert_eq!(f32s(&b.tensor()), vec![0.0; 4], "the fitting tensor is loaded");
    assert_eq!(f32s(&w.tensor()), vec![0.0; 20], "the mismatched one is not");
    assert_eq!(plan_load(&StFile::open(&path).unwrap(), &dst, &HfNameMap::exact()), rep);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn corrupt_or_truncated_files_are_errors_naming_the_path() {
    let d = tmpdir("bad");
    let good = std::fs::read(fixture("bert_base_model/model.safetensors")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() - 100].to_vec()),
        ("header_cut", good[..good.len().min(40)].to_vec()),
        ("tiny", vec![1, 2, 3]),
        ("empty", vec![]),
        ("garbage", (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()),
        ("bad_json", {
            let mut v = 16u64.to_le_bytes().to_vec();
            v.extend(b"{not json here!}");
            v
        }),
    ];
    let store = store_like(&fixture("bert_base_model/model.safetensors"), |n| Some(n.to_string()));
    for (tag, bytes) in cases {
        let p = d.join(format!("{tag}.safetensors"));
        std::fs::write(&p, &bytes).unwrap();
        let e = load_params(&p, &store, &Family::Bert.name_map(), &LoadOptions::default()).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()) && e.contains("safetensors"), "{tag}: {e}");
        assert!(read_safetensors(&p).is_err(), "{tag}");
    }
    let e = load_params(d.join("nope.safetensors"), &store, &Family::Bert.name_map(), &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("nope.safetensors"), "{e}");
    let e = load_train_state(fixture("bert_base_model/model.safetensors")).unwrap_err().to_string();
    assert!(e.contains("not a kiln training-state file"), "{e}");
    std::fs::remove_dir_all(d).unwrap();
}

// ------------------------------------------------------------------------------- optimizers ----

fn one_param(name: &str, vals: &[f32]) -> (ParamStore, kiln::model::Param) {
    let s = ParamStore::new(0, DType::F32, Device::Cpu);
    let p = s.insert(name, &Tensor::from_slice(vals, &[vals.len()]).unwrap());
    (s, p)
}

#[test]
fn adamw_matches_hand_computed_torch_semantics() {
    // Two steps on one 2-d parameter (decays) and one bias (no decay), computed in f64 by hand.
    let store = ParamStore::new(0, DType::F32, Device::Cpu);
    let w = store.insert("l.weight", &Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0], &[2, 2]).unwrap());
    let b = store.insert("l.bias", &Tensor::from_slice(&[0.25f32, -0.75], &[2]).unwrap());
    assert!(b.no_decay() && !w.no_decay());
    let cfg = AdamWConfig { lr: 0.01, beta1: 0.8, beta2: 0.9, eps: 1e-3, weight_decay: 0.1 };
    let mut opt = AdamW::new(cfg);
    let grads_w = [[0.1f32, -0.2, 0.3, 0.0], [-0.4, 0.5, 0.25, 1.0]];
    let grads_b = [[1.0f32, -1.0], [0.5, 2.0]];
    let mut ref_w: Vec<f64> = vec![0.5, -1.0, 2.0, 0.0];
    let mut ref_b: Vec<f64> = vec![0.25, -0.75];
    let (mut mw, mut vw, mut mb, mut vb) = (vec![0.0; 4], vec![0.0; 4], vec![0.0; 2], vec![0.0; 2]);
    let refstep = |p: &mut Vec<f64>, m: &mut Vec<f64>, v: &mut Vec<f64>, g: &[f32], t: i32, wd: f64| {
        for i in 0..p.len() {
            let g = g[i] as f64;
            p[i] *= 1.0 - cfg.lr * wd;
            m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g;
            v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g * g;
            let mh = m[i] / (1.0 - cfg.beta1.powi(t));
            let vh = v[i] / (1.0 - cfg.beta2.powi(t));
            p[i] -= cfg.lr * mh / (vh.sqrt() + cfg.eps);
        }
    };
    for t in 0..2 {
        w.set_grad(Some(Tensor::from_slice(&grads_w[t], &[2, 2]).unwrap()));
        b.set_grad(Some(Tensor::from_slice(&grads_b[t], &[2]).unwrap()));
        opt.step(&store.trainable()).unwrap();
        refstep(&mut ref_w, &mut mw, &mut vw, &grads_w[t], t as i32 + 1, cfg.weight_decay);
        refstep(&mut ref_b, &mut mb, &mut vb, &grads_b[t], t as i32 + 1, 0.0);
        for (got, want) in f32s(&w.tensor()).iter().zip(&ref_w).chain(f32s(&b.tensor()).iter().zip(&ref_b)) {
            assert!((*got as f64 - want).abs() < 1e-6, "step {t}: {got} vs {want}");
        }
    }
    assert_eq!(opt.step_of("l.weight"), 2);
    // Frozen or gradient-less parameters are skipped (their step does not advance).
    store.freeze("l.weight");
    b.zero_grad();
    let before = (f32s(&w.tensor()), f32s(&b.tensor()));
    opt.step(&store.params()).unwrap();
    assert_eq!((f32s(&w.tensor()), f32s(&b.tensor())), before);
    assert_eq!((opt.step_of("l.weight"), opt.step_of("l.bias")), (2, 2));
}

#[test]
fn adamw_matches_pytorch_fixtures() {
    // expected.safetensors holds torch's gradients and the parameters after one torch AdamW step
    // (lr 1e-3, wd 0.01 on every parameter). Same inputs → our step must agree to ~1 ulp.
    for fx in ["gpt2_lm", "bert_masked_lm"] {
        let model = StFile::open(fixture(&format!("{fx}/model.safetensors"))).unwrap();
        let exp = StFile::open(fixture(&format!("{fx}/expected.safetensors"))).unwrap();
        let store = ParamStore::new(0, DType::F32, Device::Cpu);
        for n in model.names() {
            let p = store.insert(&n, &model.tensor(&n).unwrap());
            p.set_no_decay(false);
            p.set_grad(Some(exp.tensor(&format!("grad.{n}")).unwrap()));
        }
        let mut opt = AdamW::new(AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 });
        opt.step(&store.trainable()).unwrap();
        let (mut total, mut exact, mut worst) = (0usize, 0usize, 0f32);
        for p in store.params() {
            let want = f32s(&exp.tensor(&format!("after_adamw.{}", p.name())).unwrap());
            for (g, w) in f32s(&p.tensor()).iter().zip(&want) {
                total += 1;
                exact += (g == w) as usize;
                worst = worst.max((g - w).abs());
            }
        }
        eprintln!("{fx}: {exact}/{total} entries bit-exact vs torch, max |Δ| {worst:e}");
        assert!(worst <= 1e-6, "{fx}: max |Δ| {worst}");
        assert!(exact as f64 >= 0.99 * total as f64, "{fx}: only {exact}/{total} bit-exact");
    }
}

#[test]
fn adamw_state_round_trip_continues_bit_exactly() {
    let grads: Vec<Vec<f32>> = (0..6).map(|k| (0..5).map(|i| ((k * 5 + i) as f32 * 0.7).sin()).collect()).collect();
    let init = [0.1f32, 0.2, -0.3, 0.4, -0.5];
    let run = |split: Option<usize>| {
        let (s, p) = one_param("x.weight", &init);
        p.set_no_decay(false);
        let mut opt = AdamW::new(AdamWConfig::default());
        for (k, g) in grads.iter().enumerate() {
            if Some(k) == split {
                let d = tmpdir("opt");
                let st = TrainState { step: k as u64, optimizer: opt.state().unwrap(), ..Default::default() };
                save_train_state(&d, &st).unwrap();
                let back = load_train_state(&d).unwrap();
                assert_eq!(back.step, k as u64);
                opt = AdamW::new(AdamWConfig { lr: 123.0, ..Default::default() });
                opt.load_state(&back.optimizer).unwrap();
                assert_eq!(opt.lr(), AdamWConfig::default().lr);
                std::fs::remove_dir_all(d).unwrap();
            }
            p.set_grad(Some(Tensor::from_slice(g, &[5]).unwrap()));
            opt.step(&s.trainable()).unwrap();
        }
        f32s(&p.tensor())
    };
    assert_eq!(run(Some(3)), run(None));
}

#[test]
fn clip_grad_norm_is_global() {
    let store = ParamStore::new(0, DType::F32, Device::Cpu);
    let a = store.insert("a", &Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap());
    let b = store.insert("b", &Tensor::zeros(&[1], DType::F32, Device::Cpu).unwrap());
    store.insert("c", &Tensor::zeros(&[1], DType::F32, Device::Cpu).unwrap()); // no gradient
    a.set_grad(Some(Tensor::from_slice(&[3.0f32, 0.0], &[2]).unwrap()));
    b.set_grad(Some(Tensor::from_slice(&[4.0f32], &[1]).unwrap()));
    let ps = store.params();
    assert_eq!(clip_grad_norm(&ps, 10.0).unwrap(), 5.0);
    assert_eq!(f32s(&a.grad().unwrap()), vec![3.0, 0.0], "below max_norm: untouched");
    assert_eq!(clip_grad_norm(&ps, 1.0).unwrap(), 5.0);
    let c = (1.0 / (5.0 + 1e-6)) as f32;
    assert_eq!(f32s(&a.grad().unwrap()), vec![3.0 * c, 0.0]);
    assert_eq!(f32s(&b.grad().unwrap()), vec![4.0 * c]);
    assert!((grad_norm(&ps).unwrap() - 1.0).abs() < 1e-6);
    assert!(clip_grad_norm(&ps, 0.0).is_err());
    b.set_grad(Some(Tensor::from_slice(&[f32::NAN], &[1]).unwrap()));
    assert!(clip_grad_norm(&ps, 1.0).unwrap().is_nan());
}

#[test]
fn schedules_warm_up_then_decay() {
    let lin = LrSchedule { peak_lr: 1.0, min_lr: 0.0, warmup_steps: 4, total_steps: 14, decay: Decay::Linear };
    let v: Vec<f64> = (0..16).map(|s| lin.lr_at(s)).collect();
    assert_eq!(&v[..4], &[0.25, 0.5, 0.75, 1.0]);
    assert_eq!(v[4], 1.0);
    assert!((v[9] - 0.5).abs() < 1e-12 && v[14] == 0.0 && v[15] == 0.0);
    let cos = LrSchedule { decay: Decay::Cosine, min_lr: 0.1, ..lin };
    assert!((cos.lr_at(9) - 0.55).abs() < 1e-12, "half way: min + (peak-min)/2");
    assert!((cos.lr_at(14) - 0.1).abs() < 1e-12 && (cos.lr_at(100) - 0.1).abs() < 1e-12);
    let c: Vec<f64> = (4..15).map(|s| cos.lr_at(s)).collect();
    assert!(c.windows(2).all(|w| w[1] < w[0]), "cosine decays monotonically");
    assert_eq!(LrSchedule::constant(3e-4).lr_at(12345), 3e-4);
    assert_eq!(lr_at(100, 2.0, 0.0, 10, 50, Decay::Constant), 2.0);
    assert_eq!(lr_at(3, 1.0, 0.0, 0, 0, Decay::Linear), 0.0, "no span: at the floor");
    assert_eq!("cosine".parse::<Decay>().unwrap(), Decay::Cosine);
}

// ------------------------------------------------------------------------------------- data ----

fn i64s(t: &Tensor) -> Vec<i64> {
    t.to_vec::<i64>().unwrap()
}

#[test]
fn mlm_masking_statistics_and_determinism() {
    let (pad, cls, sep, mask) = (0u32, 2u32, 3u32, 4u32);
    let specials = [0u32, 1, 2, 3, 4];
    let vocab = 1000u32;
    let make = |k: u64| -> Vec<u32> {
        let mut s = vec![cls];
        s.extend((0..120).map(|i| 5 + ((i * 37 + k * 11) % 995) as u32));
        s.push(sep);
        s.extend(std::iter::repeat_n(pad, 6));
        s
    };
    let mut m = MlmMasker::new(mask, vocab, &specials, 1234);
    let (mut candidates, mut chosen, mut to_mask, mut to_rand, mut kept) = (0usize, 0usize, 0usize, 0usize, 0usize);
    for k in 0..400 {
        let orig = make(k);
        let mut ids = orig.clone();
        let labels = m.mask(&mut ids);
        assert_eq!(labels.len(), ids.len());
        for i in 0..ids.len() {
            if specials.contains(&orig[i]) {
                assert_eq!((ids[i], labels[i]), (orig[i], IGNORE_INDEX), "special/padding never masked");
                continue;
            }
            candidates += 1;
            if labels[i] == IGNORE_INDEX {
                assert_eq!(ids[i], orig[i]);
                continue;
            }
            chosen += 1;
            assert_eq!(labels[i], orig[i] as i64);
            if ids[i] == mask {
                to_mask += 1;
            } else if ids[i] != orig[i] {
                to_rand += 1;
                assert!(!specials.contains(&ids[i]) && ids[i] < vocab);
            } else {
                kept += 1;
            }
        }
    }
    let frac = chosen as f64 / candidates as f64;
    assert!((frac - 0.15).abs() < 0.004, "chosen {frac}");
    let c = chosen as f64;
    // Random replacements can draw the original token (p ≈ 1/995), so `kept` is ~10.01%.
    for (what, got, want) in [("mask", to_mask, 0.8), ("random", to_rand, 0.1), ("kept", kept, 0.1)] {
        assert!((got as f64 / c - want).abs() < 0.015, "{what}: {} vs {want}", got as f64 / c);
    }
    // Deterministic per seed; a sequence seen again (next epoch) is masked differently.
    let run = |seed: u64| {
        let mut m = MlmMasker::new(mask, vocab, &specials, seed);
        (0..3).map(|_| {
            let mut ids = make(0);
            let l = m.mask(&mut ids);
            (ids, l)
        }).collect::<Vec<_>>()
    };
    let (a, b) = (run(5), run(5));
    assert_eq!(a, b);
    assert_ne!(a[0], a[1], "dynamic masking: new positions every time");
    assert_ne!(run(6)[0], a[0]);
    // Only specials: nothing to mask.
    let mut only = vec![cls, sep, pad];
    assert_eq!(MlmMasker::new(mask, vocab, &specials, 0).mask(&mut only), vec![IGNORE_INDEX; 3]);
}

fn toy_docs(n_docs: usize, sents: usize) -> Vec<Vec<Vec<u32>>> {
    (0..n_docs).map(|d| (0..sents).map(|s| (0..(3 + (d + s) % 4)).map(|t| 10 + (d * 100 + s * 10 + t) as u32).collect()).collect()).collect()
}

#[test]
fn nsp_pairs_are_half_next_half_random() {
    let docs = toy_docs(20, 6);
    let b = NspBuilder::new(docs.clone(), 2, 3, 24).unwrap();
    let mut rng = DataRng::new(9, 0);
    let mut random = 0;
    let n = 4000;
    for k in 0..n {
        let ex = b.example(k % b.len(), &mut rng);
        assert!(ex.ids.len() <= 24);
        assert_eq!(ex.ids[0], 2);
        let seps: Vec<usize> = (0..ex.ids.len()).filter(|&i| ex.ids[i] == 3).collect();
        assert_eq!(seps.len(), 2, "[CLS] A [SEP] B [SEP]");
        assert_eq!(*seps.last().unwrap(), ex.ids.len() - 1);
        let expect_tt: Vec<i64> = (0..ex.ids.len()).map(|i| (i > seps[0]) as i64).collect();
        assert_eq!(ex.type_ids, expect_tt);
        let doc_of = |t: u32| ((t - 10) / 100) as usize;
        let (a_doc, b_doc) = (doc_of(ex.ids[1]), doc_of(ex.ids[seps[0] + 1]));
        assert_eq!(ex.is_random_next, a_doc != b_doc, "random B comes from another document");
        if !ex.is_random_next {
            // B continues A: its first sentence index is right after A's last one.
            let sent = |t: u32| ((t - 10) % 100 / 10) as usize;
            assert_eq!(sent(ex.ids[seps[0] + 1]), sent(ex.ids[seps[0] - 1]) + 1);
        }
        random += ex.is_random_next as usize;
    }
    let frac = random as f64 / n as f64;
    assert!((frac - 0.5).abs() < 0.03, "{frac}");
    assert!(NspBuilder::new(vec![vec![vec![5, 6]]], 2, 3, 16).is_err(), "one sentence: no pairs");
    assert!(NspBuilder::new(toy_docs(1, 20), 2, 3, 16).is_ok(), "one long document is split");
    assert!(NspBuilder::new(vec![], 2, 3, 16).unwrap_err().to_string().contains("two documents"));
}

#[test]
fn causal_lm_windows_shift_by_one() {
    let tokens: Vec<u32> = (0..101).collect();
    let mut b = CausalLmBatcher::new(tokens, 3, 10, 7).unwrap();
    assert_eq!(b.num_windows(), 10);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let batch = b.next_batch().unwrap();
        assert_eq!(batch.input_ids.shape(), &[3, 10]);
        let (x, y) = (i64s(&batch.input_ids), i64s(&batch.labels));
        for r in 0..3 {
            let row = &x[r * 10..r * 10 + 10];
            assert_eq!(row[0] % 10, 0, "windows start at multiples of T");
            for t in 0..10 {
                assert_eq!(y[r * 10 + t], row[t] + 1, "labels = inputs shifted by one");
            }
            seen.push(row[0]);
        }
        assert_eq!(i64s(&batch.attention_mask), vec![1; 30]);
    }
    let mut first: Vec<i64> = seen[..10].to_vec();
    assert_ne!(first, (0..10).map(|i| i * 10).collect::<Vec<_>>(), "shuffled");
    first.sort();
    assert_eq!(first, (0..10).map(|i| i * 10).collect::<Vec<_>>(), "an epoch visits every window once");
    assert_ne!(seen[10..12], seen[..2], "next epoch: another order");
    let e = CausalLmBatcher::new(vec![1, 2, 3], 2, 8, 0).unwrap_err().to_string();
    assert!(e.contains("3 tokens") && e.contains("9"), "{e}");
    assert!(CausalLmBatcher::new(vec![], 1, 1, 0).is_err());
}

#[test]
fn padding_and_documents() {
    let (ids, mask, tt) = pad_rows(&[vec![5, 6, 7], vec![8]], &[vec![0, 0, 1], vec![]], 0, 4).unwrap();
    assert_eq!(ids, vec![vec![5, 6, 7, 0], vec![8, 0, 0, 0]]);
    assert_eq!(mask, vec![vec![1, 1, 1, 0], vec![1, 0, 0, 0]]);
    assert_eq!(tt, vec![vec![0, 0, 1, 0], vec![0, 0, 0, 0]]);
    assert!(pad_rows(&[vec![1; 5]], &[], 0, 4).is_err());
    assert_eq!(split_documents("a\n b \n\n\n c\n"), vec![vec!["a", "b"], vec!["c"]]);
    let d = tmpdir("empty");
    std::fs::write(d.join("e.txt"), " \n\n").unwrap();
    let e = kiln::model::data::read_text(d.join("e.txt")).unwrap_err().to_string();
    assert!(e.contains("e.txt") && e.contains("no text"), "{e}");
    std::fs::remove_dir_all(d).unwrap();
}

const CORPUS: &str = "the quick brown fox jumps over the lazy dog.\nthe dog sleeps in the sun.\n\n\
a tokenizer learns merges from text.\nmerges join frequent pairs of symbols.\nthe quick fox learns.\n\n\
Hello, World! tokenizers split words.\nWordPiece uses ## for continuations.\n";

#[test]
fn tokenizers_train_save_load_round_trip() {
    let d = tmpdir("tok");
    let data = d.join("corpus.txt");
    std::fs::write(&data, CORPUS.repeat(20)).unwrap();

    let bpe = tokenize::train_for_model("gpt2", std::slice::from_ref(&data), 300).unwrap();
    let ids = SpecialIds::of(&bpe);
    assert_eq!(ids.eot, Some(0));
    let text = "the quick brown fox, naïve café!\n";
    let enc = bpe.encode(text, false).unwrap();
    assert!(enc.get_ids().len() < text.len(), "merges were learned");
    assert_eq!(bpe.decode(enc.get_ids(), false).unwrap(), text, "byte-level BPE round-trips any text");
    assert!(!enc.get_tokens()[0].starts_with('Ġ'), "no prefix space added");
    tokenize::save_tokenizer(&bpe, d.join("tokenizer.json")).unwrap();
    let again = tokenize::find_tokenizer(None, Some(&d)).unwrap().unwrap();
    assert_eq!(again.encode(text, false).unwrap().get_ids(), enc.get_ids());
    let mut cfg = ModelConfig::preset("gpt2-tiny").unwrap();
    tokenize::sync_config(&mut cfg, &bpe);
    let ModelConfig::Decoder(g) = &cfg else { unreachable!() };
    assert_eq!((g.vocab_size, g.eos_token_id), (bpe.get_vocab_size(true), Some(0)));
    let stream = kiln::model::data::encode_stream(&bpe, "ab ab\n\ncd", Some(0)).unwrap();
    assert_eq!(stream.iter().filter(|&&t| t == 0).count(), 2, "one <|endoftext|> per document");

    let wp = tokenize::train_for_model("bert", std::slice::from_ref(&data), 200).unwrap();
    let s = SpecialIds::of(&wp);
    assert_eq!(s.bert().unwrap(), (2, 3, 4, 0));
    assert_eq!(s.unk, Some(1));
    let e = wp.encode(("The QUICK fox", "merges join"), true).unwrap();
    let toks = e.get_tokens();
    assert_eq!((toks[0].as_str(), toks[toks.len() - 1].as_str()), ("[CLS]", "[SEP]"));
    assert_eq!(toks[1], "the", "lower-cased");
    let first_b = e.get_type_ids().iter().position(|&t| t == 1).unwrap();
    assert_eq!(toks[first_b - 1], "[SEP]");
    assert_eq!(wp.decode(wp.encode("the quick fox", false).unwrap().get_ids(), true).unwrap(), "the quick fox");
    let docs = kiln::model::data::encode_documents(&wp, CORPUS).unwrap();
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[1].len(), 3);

    let e = tokenize::load_tokenizer(&data).unwrap_err().to_string();
    assert!(e.contains("corpus.txt") && e.contains("tokenizer.json"), "{e}");
    std::fs::write(d.join("empty.txt"), "").unwrap();
    assert!(tokenize::train_bpe(&[d.join("empty.txt")], 100).is_err());
    std::fs::remove_dir_all(d).unwrap();
}

// ------------------------------------------------------------------------------------ resume ----

#[test]
fn data_position_resume_gives_identical_batches() {
    let d = tmpdir("resume");
    let cfg = ModelConfig::preset("bert-tiny").unwrap();
    let special = SpecialIds { pad: Some(0), unk: Some(1), cls: Some(2), sep: Some(3), mask: Some(4), eot: None };
    let docs = toy_docs(7, 5);
    let rows = |b: &kiln::model::data::Batch| {
        let mut v = vec![i64s(&b.input_ids), i64s(&b.labels), i64s(&b.attention_mask), i64s(&b.token_type_ids)];
        v.extend(b.next_sentence_label.as_ref().map(i64s));
        v
    };
    for nsp in [true, false] {
        let mk = || BertBatcher::new(docs.clone(), &special, 500, 4, 16, 11, nsp).unwrap();
        let mut full = mk();
        let all: Vec<_> = (0..20).map(|_| rows(&full.next_batch().unwrap())).collect();
        let mut first = mk();
        for _ in 0..7 {
            first.next_batch().unwrap();
        }
        let st = TrainState { step: 7, config_hash: cfg.hash_hex().unwrap(), data: first.position(), ..Default::default() };
        save_train_state(d.join("s.safetensors"), &st).unwrap();
        let back = load_train_state(d.join("s.safetensors")).unwrap();
        back.check_config(&cfg).unwrap();
        assert!(back.check_config(&ModelConfig::preset("bert-base").unwrap()).is_err());
        let mut resumed = mk();
        resumed.set_position(&back.data).unwrap();
        let rest: Vec<_> = (0..13).map(|_| rows(&resumed.next_batch().unwrap())).collect();
        assert_eq!(rest, all[7..], "nsp={nsp}");
        let b0 = &all[0];
        assert_eq!(b0[0].len(), 64);
        assert!(b0[1].iter().any(|&l| l != IGNORE_INDEX));
    }
    // Causal LM: the position crosses an epoch boundary.
    let tokens: Vec<u32> = (0..200).map(|i| (i * 7 % 50) as u32).collect();
    let mut full = CausalLmBatcher::new(tokens.clone(), 3, 8, 5).unwrap();
    let all: Vec<_> = (0..30).map(|_| i64s(&full.next_batch().unwrap().input_ids)).collect();
    let mut first = CausalLmBatcher::new(tokens.clone(), 3, 8, 5).unwrap();
    for _ in 0..11 {
        first.next_batch().unwrap();
    }
    let pos = first.position();
    assert!(pos.epoch >= 1);
    let json = serde_json::to_string(&pos).unwrap();
    let mut resumed = CausalLmBatcher::new(tokens, 3, 8, 5).unwrap();
    resumed.set_position(&serde_json::from_str(&json).unwrap()).unwrap();
    let rest: Vec<_> = (0..19).map(|_| i64s(&resumed.next_batch().unwrap().input_ids)).collect();
    assert_eq!(rest, all[11..]);
    // The RNG itself restores mid-block.
    let mut r = DataRng::new(3, 1);
    r.next_u64();
    r.below(7);
    let mut s = DataRng::from_state(&r.state()).unwrap();
    assert_eq!((0..50).map(|_| r.next_u64()).collect::<Vec<_>>(), (0..50).map(|_| s.next_u64()).collect::<Vec<_>>());
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn checkpoint_directory_is_hf_layout() {
    let d = tmpdir("ckpt");
    let cfg = ModelConfig::load(fixture("gpt2_lm")).unwrap();
    let store = store_like(&fixture("gpt2_lm/model.safetensors"), |n| Some(n.to_string()));
    load_params(fixture("gpt2_lm/model.safetensors"), &store, &Family::Gpt2.name_map(), &LoadOptions::strict()).unwrap();
    let tok = tokenize::train_bpe_from_texts(&["hello world", "hello there"], 280).unwrap();
    let mut rngs = BTreeMap::new();
    rngs.insert("dropout".to_string(), DataRng::new(1, 2).state());
    let st = TrainState { step: 3, config_hash: cfg.hash_hex().unwrap(), rngs, ..Default::default() };
    save_checkpoint(&d, &cfg, &store, Some(&tok), Some(&st)).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, vec!["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_state.safetensors"], "no temp files left");
    // AutoTokenizer reads tokenizer.json as it is (PreTrainedTokenizerFast), GPT-2's roles
    let tc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!((tc["tokenizer_class"].as_str(), tc["eos_token"].as_str()), (Some("PreTrainedTokenizerFast"), Some("<|endoftext|>")));
    assert_eq!(ModelConfig::load(&d).unwrap(), cfg);
    let a = StFile::open(d.join("model.safetensors")).unwrap();
    let b = StFile::open(fixture("gpt2_lm/model.safetensors")).unwrap();
    assert_eq!(a.names(), b.names());
    for n in a.names() {
        assert_eq!(f32s(&a.tensor(&n).unwrap()), f32s(&b.tensor(&n).unwrap()), "{n}");
    }
    let back = load_train_state(&d).unwrap();
    assert_eq!((back.step, back.rngs.get("dropout")), (3, st.rngs.get("dropout")));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn rms_norm_layer_names_its_weight_and_normalises_in_the_weights_dtype() {
    use kiln::model::nn::RmsNorm;
    let ps = ParamStore::new(3, DType::F32, Device::Cpu);
    let n = RmsNorm::new(&ps, "model.norm", 6, 1e-6).unwrap();
    let w = ps.get("model.norm.weight").expect("the weight under transformers' name");
    assert_eq!((w.tensor().shape().to_vec(), w.tensor().to_vec::<f32>().unwrap()), (vec![6], vec![1.0; 6]));
    let x = Tensor::from_vec(vec![3f32, -4.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], &[2, 6]).unwrap();
    // row 1: rms = √(25/6); row 2: rms = 1
    let y = n.forward(&x).unwrap().to_vec::<f32>().unwrap();
    let r = (25.0f32 / 6.0 + 1e-6).sqrt();
    assert!((y[0] - 3.0 / r).abs() < 1e-6 && (y[1] + 4.0 / r).abs() < 1e-6 && (y[6] - 1.0).abs() < 1e-6, "{y:?}");
    // bf16 in, bf16 out (computed in the f32 weight's dtype)
    assert_eq!(n.forward(&x.to_dtype(DType::BF16).unwrap()).unwrap().dtype(), DType::BF16);
}
