//! The family table: configs as transformers writes them (its defaults, its renamed fields, what it
//! only warns about), every architecture built and run forward + backward, and clear errors for
//! unknown architectures, inconsistent configs and checkpoints of another family. Parity with
//! transformers itself is tests/hf_parity.rs.
use kiln::model::config::ModelConfig;
use kiln::model::family::{Family, Task, ARCHITECTURES, FAMILIES};
use kiln::model::model::{Inputs, LoadedModel, Model};
use kiln::model::nn::ForwardCtx;
use kiln::model::params::ParamStore;
use kiln::{DType, Device, Tensor};
use serde_json::json;
use std::path::PathBuf;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-family-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A tiny config of `arch` in the family's own field names.
fn tiny(arch: &str) -> ModelConfig {
    let a = kiln::model::family::Arch::by_name(arch).unwrap();
    let mut v = match a.family {
        Family::DistilBert => json!({"dim": 16, "n_layers": 2, "n_heads": 2, "hidden_dim": 24}),
        Family::OpenAiGpt | Family::Gpt2 => json!({"n_embd": 16, "n_layer": 2, "n_head": 2, "n_positions": 32}),
        _ => json!({"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 24, "max_position_embeddings": 40}),
    };
    let m = v.as_object_mut().unwrap();
    m.insert("model_type".into(), json!(a.family.model_type()));
    m.insert("vocab_size".into(), json!(50));
    m.insert("architectures".into(), json!([arch]));
    if matches!(a.family, Family::Albert | Family::Electra) {
        m.insert("embedding_size".into(), json!(8));
    }
    if a.family == Family::Albert {
        m.insert("num_hidden_layers".into(), json!(3));
        m.insert("num_hidden_groups".into(), json!(2));
    }
    if a.family.is_decoder() {
        m.insert("pad_token_id".into(), json!(0));
    }
    ModelConfig::from_json_str(&v.to_string(), arch).unwrap()
}

/// Values in [0, n).
fn labels(shape: &[usize], seed: i64, n: i64) -> Tensor {
    let len: usize = shape.iter().product();
    Tensor::from_vec((0..len as i64).map(|i| (i * 7 + seed) % n).collect(), shape).unwrap()
}

/// Token ids in [1, hi).
fn ids(shape: &[usize], seed: i64, hi: i64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n as i64).map(|i| 1 + (i * 7 + seed) % (hi - 1)).collect(), shape).unwrap()
}

/// Every architecture in the table builds from a config in its family's field names, runs
/// forward with labels, produces its HF outputs, and every parameter gets a gradient.
#[test]
fn every_architecture_runs_forward_and_backward() {
    let (b, c, t) = (2, 3, 7);
    for a in ARCHITECTURES {
        let cfg = tiny(a.name);
        let store = ParamStore::new(1, DType::F32, Device::Cpu);
        let model = Model::build(&cfg, &store).unwrap_or_else(|e| panic!("{}: {e}", a.name));
        let mut mask = vec![1i64; b * t];
        mask[b * t - 2..].fill(0);
        let mut inp = Inputs { input_ids: Some(ids(&[b, t], 3, 50)), attention_mask: Some(Tensor::from_vec(mask, &[b, t]).unwrap()), ..Default::default() };
        let nl = cfg.num_labels() as i64;
        match (a.family, a.task) {
            (_, Task::Base) => {}
            (_, Task::MaskedLm | Task::CausalLm) => inp.labels = Some(ids(&[b, t], 5, 50)),
            (Family::Electra, Task::PreTraining) => inp.labels = Some(labels(&[b, t], 1, 2)),
            (Family::Bert, Task::PreTraining) => (inp.labels, inp.next_sentence_label) = (Some(ids(&[b, t], 5, 50)), Some(labels(&[b], 0, 2))),
            (Family::Albert, Task::PreTraining) => (inp.labels, inp.sentence_order_label) = (Some(ids(&[b, t], 5, 50)), Some(labels(&[b], 0, 2))),
            (_, Task::SequenceClassification) => inp.labels = Some(labels(&[b], 0, nl)),
            (_, Task::TokenClassification) => inp.labels = Some(labels(&[b, t], 0, nl)),
            (_, Task::QuestionAnswering) => (inp.start_positions, inp.end_positions) = (Some(ids(&[b], 0, 4)), Some(ids(&[b], 2, 6))),
            (_, Task::DoubleHeads) => {
                inp.input_ids = Some(ids(&[b, c, t], 3, 50));
                inp.attention_mask = None;
                inp.labels = Some(ids(&[b, c, t], 5, 50));
                inp.mc_token_ids = Some(Tensor::from_vec(vec![6i64, 5, 4, 6, 3, 2], &[b, c]).unwrap());
                inp.mc_labels = Some(Tensor::from_vec(vec![0i64, 2], &[b]).unwrap());
            }
            (_, Task::MultipleChoice) => {
                inp.input_ids = Some(ids(&[b, c, t], 3, 50));
                let mut mask = vec![1i64; b * c * t];
                mask[b * c * t - 2..].fill(0);
                inp.attention_mask = Some(Tensor::from_vec(mask, &[b, c, t]).unwrap());
                inp.labels = Some(labels(&[b], 0, c as i64));
            }
            (f, t) => panic!("no batch for {f:?} {t:?}"),
        }
        if a.family == Family::DistilBert {
            assert!(inp.token_type_ids.is_none());
        } else if a.task == Task::MultipleChoice {
            inp.token_type_ids = Some(Tensor::zeros(&[b, c, t], DType::I64, Device::Cpu).unwrap());
        } else if a.task != Task::DoubleHeads {
            inp.token_type_ids = Some(Tensor::zeros(&[b, t], DType::I64, Device::Cpu).unwrap());
        }
        let out = model.forward(&inp, &ForwardCtx::train(7)).unwrap_or_else(|e| panic!("{}: {e}", a.name));
        let h = out.get("last_hidden_state").unwrap_or_else(|| panic!("{}: no last_hidden_state", a.name));
        assert_eq!(*h.shape().last().unwrap(), 16, "{}", a.name);
        let want: &[&str] = match (a.family, a.task) {
            (Family::Bert | Family::Albert, Task::PreTraining) => &["prediction_logits"],
            (_, Task::QuestionAnswering) => &["start_logits", "end_logits"],
            (_, Task::DoubleHeads) => &["logits", "mc_logits", "mc_loss"],
            (_, Task::Base) => &[],
            _ => &["logits"],
        };
        for w in want {
            let o = out.get(w).unwrap_or_else(|| panic!("{}: no {w}", a.name));
            assert!(o.to_vec_f64().unwrap().iter().all(|x| x.is_finite()), "{}: {w} not finite", a.name);
        }
        let loss = match out.total_loss().unwrap() {
            Some(l) => l,
            // a bare stack: every output reaches the loss
            None => out.tensors.iter().fold(Tensor::zeros(&[], DType::F32, Device::Cpu).unwrap(), |acc, (_, t)| acc.add(&t.sum_all().unwrap()).unwrap()),
        };
        assert!(loss.to_scalar().unwrap().is_finite(), "{}", a.name);
        loss.backward().unwrap();
        for p in store.params() {
            assert!(p.grad().is_some(), "{}: no gradient for {}", a.name, p.name());
        }
    }
}

/// A config holding only `model_type` means transformers' defaults; written back, it keeps the
/// family's own field names (DistilBERT's `dim`, GPT-1's `afn`) and reads back equal.
#[test]
fn family_defaults_and_field_names_round_trip() {
    for f in FAMILIES {
        let cfg = ModelConfig::from_json_str(&json!({"model_type": f.model_type()}).to_string(), "defaults").unwrap();
        assert_eq!(cfg.family(), f);
        assert_eq!(cfg.arch().unwrap(), f.default_arch());
        let v = cfg.to_json_value().unwrap();
        assert_eq!(v["model_type"], f.model_type());
        assert_eq!(ModelConfig::from_json_str(&v.to_string(), "back").unwrap(), cfg, "{f:?}");
        match f {
            Family::DistilBert => {
                assert!(v.get("dim").is_some() && v.get("hidden_size").is_none() && v.get("type_vocab_size").is_none(), "{v}");
                assert_eq!((cfg.hidden_size(), cfg.num_layers(), cfg.layer_norm_eps()), (768, 6, 1e-12));
            }
            Family::OpenAiGpt => {
                assert!(v.get("afn").is_some() && v.get("activation_function").is_none() && v.get("n_inner").is_none(), "{v}");
                assert_eq!(cfg.activation().unwrap(), kiln::model::config::Activation::GeluTanh, "GPT-1's 'gelu' is the tanh form");
            }
            Family::Roberta => assert_eq!((cfg.vocab_size(), cfg.max_positions()), (50265, 510)),
            Family::Albert => assert_eq!((cfg.hidden_size(), cfg.activation().unwrap()), (4096, kiln::model::config::Activation::GeluTanh)),
            Family::Electra => assert_eq!(cfg.hidden_size(), 256),
            Family::Gpt2 => assert_eq!(cfg.max_positions(), 1024),
            Family::Bert => assert_eq!(cfg.vocab_size(), 30522),
        }
    }
}

/// What transformers writes with its defaults for a small vocabulary (bos/eos 50256), or with no
/// bos at all, loads (with a warning), builds and trains; the ids are kept as written.
#[test]
fn gpt2_config_with_default_token_ids_outside_a_small_vocabulary() {
    let written = json!({"model_type": "gpt2", "vocab_size": 100, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64,
                         "bos_token_id": 50256, "eos_token_id": 50256, "architectures": ["GPT2LMHeadModel"]});
    let minimal = json!({"model_type": "gpt2", "vocab_size": 100, "n_embd": 32, "n_layer": 2, "n_head": 4});
    for v in [written, minimal] {
        let cfg = ModelConfig::from_json_str(&v.to_string(), "transformers").unwrap();
        let ModelConfig::Decoder(c) = &cfg else { panic!("decoder") };
        assert_eq!((c.bos_token_id, c.eos_token_id), (Some(50256), Some(50256)));
        assert_eq!(ModelConfig::from_json_str(&cfg.to_json_string().unwrap(), "back").unwrap(), cfg);
        let store = ParamStore::new(0, DType::F32, Device::Cpu);
        let m = Model::build(&cfg, &store).unwrap();
        let out = m.forward(&Inputs { labels: Some(ids(&[2, 9], 1, 100)), ..Inputs::ids(&ids(&[2, 9], 3, 100)) }, &ForwardCtx::eval()).unwrap();
        assert!(out.loss.unwrap().to_scalar().unwrap().is_finite());
    }
}

/// Errors name what is wrong: the architecture (listing the supported ones), the field, the
/// tensors of a checkpoint from another family.
#[test]
fn bad_configs_and_checkpoints_are_clear_errors() {
    let err = |v: serde_json::Value| ModelConfig::from_json_str(&v.to_string(), "cfg").map(|_| ()).unwrap_err().to_string();
    let e = err(json!({"model_type": "bert", "architectures": ["BertForNextGreatThing"]}));
    assert!(e.contains("BertForNextGreatThing") && e.contains("RobertaForMaskedLM") && e.contains("GPT2DoubleHeadsModel"), "{e}");
    let e = err(json!({"model_type": "bert", "architectures": ["GPT2LMHeadModel"]}));
    assert!(e.contains("gpt2") && e.contains("bert"), "{e}");
    let e = err(json!({"model_type": "t5"}));
    assert!(e.contains("t5") && e.contains("distilbert") && e.contains("openai-gpt"), "{e}");
    for (v, field) in [
        (json!({"model_type": "roberta", "hidden_size": 30, "num_attention_heads": 4}), "num_attention_heads"),
        (json!({"model_type": "bert", "position_embedding_type": "relative_key"}), "position_embedding_type"),
        (json!({"model_type": "albert", "num_hidden_groups": 0}), "num_hidden_groups"),
        (json!({"model_type": "distilbert", "dropout": 1.5}), "hidden_dropout_prob"),
        (json!({"model_type": "distilbert", "activation": "swishy"}), "swishy"),
        (json!({"model_type": "gpt2", "scale_attn_by_inverse_layer_idx": true}), "scale_attn_by_inverse_layer_idx"),
        (json!({"model_type": "electra", "pad_token_id": 40000}), "pad_token_id"),
        (json!({"model_type": "roberta", "vocab_size": "many"}), "vocab_size"),
        (json!({"model_type": "gpt2", "summary_first_dropout": 2.0}), "summary_first_dropout"),
    ] {
        let e = err(v.clone());
        assert!(e.contains(field), "{v}: {e}");
    }
    // BERT weights under a RoBERTa config: the missing and the unexpected tensors are named
    let d = tmpdir("other-family");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("bert_masked_lm/config.json")).unwrap()).unwrap();
    v["model_type"] = json!("roberta");
    v["architectures"] = json!(["RobertaForMaskedLM"]);
    std::fs::write(d.join("config.json"), v.to_string()).unwrap();
    std::fs::copy(fixture("bert_masked_lm/model.safetensors"), d.join("model.safetensors")).unwrap();
    let e = LoadedModel::from_dir(&d, 0, Device::Cpu).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("missing") && e.contains("roberta.embeddings.word_embeddings.weight") && e.contains("unexpected") && e.contains("cls.predictions.bias"), "{e}");
    std::fs::remove_dir_all(d).unwrap();
}

/// ALBERT runs layer i on group int(i / (L / G)) (transformers' float division), each group its
/// inner layers in order; the stored layers are the groups' layers.
#[test]
fn albert_layer_groups_follow_transformers() {
    for (l, g, inner) in [(12, 1, 1), (4, 2, 1), (3, 1, 2), (4, 3, 1), (5, 3, 2), (2, 4, 1), (7, 7, 1)] {
        let v = json!({"model_type": "albert", "hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 8, "embedding_size": 4,
                       "vocab_size": 10, "num_hidden_layers": l, "num_hidden_groups": g, "inner_group_num": inner});
        let ModelConfig::Encoder(c) = ModelConfig::from_json_str(&v.to_string(), "albert").unwrap() else { panic!() };
        let enc = kiln::model::encoder::Encoder::new(&ParamStore::new(0, DType::F32, Device::Cpu), &c, "albert", false).unwrap();
        assert_eq!(enc.layers.len(), g * inner);
        let want: Vec<usize> = (0..l).flat_map(|i| {
            let group = (i as f64 / (l as f64 / g as f64)) as usize;
            (0..inner).map(move |j| group * inner + j)
        }).collect();
        assert_eq!(enc.plan(), want.as_slice(), "L {l} G {g} inner {inner}");
    }
}
