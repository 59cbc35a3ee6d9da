//! The `kiln` binary end to end: forward parity through the CLI, exact resume, presets and
//! config-only directories. Bad input is in tests/bad_input.rs, checkpoints in tests/checkpoints.rs.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("run kiln")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `kiln forward --grads` on fixtures of every family (double heads and a GPT-2 classifier over
/// right-padded rows included) writes transformers' output names, the loss(es) and every
/// gradient, matching transformers.
#[test]
fn forward_through_the_cli_matches_transformers() {
    let d = tmp("fwd");
    for name in ["gpt2_lm", "roberta_qa", "albert_pretraining", "distilbert_masked_lm", "electra_pretraining", "openai_gpt_double_heads", "gpt2_seq_cls"] {
        let out = d.join(format!("{name}.safetensors"));
        let fx = fixture(name);
        let o = kiln(&["forward", "--model", fx.to_str().unwrap(), "--batch", fx.join("batch.json").to_str().unwrap(), "--out", out.to_str().unwrap(), "--grads"]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let ours: std::collections::HashMap<_, _> = kiln::model::st_io::read_safetensors(&out).unwrap().into_iter().collect();
        let theirs: std::collections::HashMap<_, _> = kiln::model::st_io::read_safetensors(fx.join("expected.safetensors")).unwrap().into_iter().collect();
        let mut compared = 0;
        for (key, b) in &theirs {
            if key.starts_with("after_adamw.") || key.ends_with("_loss") && key != "mc_loss" {
                continue;
            }
            let a = ours.get(key).unwrap_or_else(|| panic!("{name}: kiln forward wrote no '{key}'")).to_vec_f64().unwrap();
            let b = b.to_vec_f64().unwrap();
            let scale = b.iter().fold(1e-4f64, |m, x| m.max(x.abs()));
            let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(err / scale < 1e-3 || err < 1e-6, "{name}: {key}: {err}");
            compared += 1;
        }
        assert!(compared > 10, "{name}: {compared} tensors compared");
    }
    std::fs::remove_dir_all(d).unwrap();
}

fn loss_lines(o: &Output) -> Vec<(u64, String)> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), format!("{}", v["loss"])))
        .collect()
}

/// 8 steps in one go equal 4 steps + resume for 4 more, loss for loss, bit for bit. (A constant
/// schedule, so that the 4-step run's learning rates are the 8-step run's first four.)
#[test]
fn resume_is_exact() {
    let d = tmp("resume");
    let common = ["--steps", "8", "--batch", "4", "--seq", "32", "--eval-every", "0", "--vocab", "300", "--json", "--sample-tokens", "0", "--schedule", "constant", "--warmup", "0"];
    let full = d.join("full");
    let o = kiln(&[&["train", "--out", full.to_str().unwrap()][..], &common].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let want = loss_lines(&o);
    assert_eq!(want.len(), 8);
    let part = d.join("part");
    let mut first = common.to_vec();
    first[1] = "4";
    let o = kiln(&[&["train", "--out", part.to_str().unwrap()][..], &first].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(loss_lines(&o)[..], want[..4]);
    let o = kiln(&[&["train", "--resume", part.to_str().unwrap()][..], &common].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(loss_lines(&o)[..], want[4..], "resumed losses differ from the uninterrupted run");
}

fn write(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap();
}

/// Every preset family trains from the built-in corpus with no data argument, in every training
/// dtype: BERT pre-training (MLM + NSP needs documents of several sentences) and GPT-2 in f32, bf16
/// and f16; each run writes its checkpoint and its loss falls.
#[test]
fn presets_train_on_the_builtin_corpus_in_every_dtype() {
    for (model, dtype) in [("bert-tiny", "f32"), ("gpt2-tiny", "bf16"), ("gpt2-tiny", "f16")] {
        let d = tmp(&format!("preset-{model}-{dtype}"));
        let o = kiln(&["train", "--model", model, "--dtype", dtype, "--steps", "12", "--batch", "4", "--seq", "32", "--lr", "3e-3", "--warmup", "2", "--json", "--sample-tokens", "0", "--out", d.to_str().unwrap()]);
        assert!(o.status.success(), "{model} {dtype}: {}", stderr(&o));
        let losses: Vec<f64> = String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter_map(|v| v.get("loss").and_then(|x| x.as_f64())).collect();
        assert_eq!(losses.len(), 12, "{model} {dtype}: {losses:?}");
        assert!(losses[11] < losses[0] - 0.3, "{model} {dtype}: loss did not fall: {losses:?}");
        for f in ["model.safetensors", "config.json", "tokenizer.json", "training_state.safetensors"] {
            assert!(d.join(f).is_file(), "{model} {dtype}: no {f}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}

/// `kiln train --model DIR` where DIR holds only a minimal config.json as transformers would read
/// it (GPT-2 with its default bos/eos 50256; RoBERTa and DistilBERT masked LMs with their own
/// field names): each trains and writes a checkpoint that loads back.
#[test]
fn config_only_directories_of_the_family_train() {
    for (tag, cfg) in [
        ("gpt2", r#"{"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64}"#),
        ("roberta", r#"{"model_type": "roberta", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 66, "type_vocab_size": 1}"#),
        ("distilbert", r#"{"model_type": "distilbert", "dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 64}"#),
    ] {
        let d = tmp(&format!("cfg-only-{tag}"));
        let model = d.join("model");
        std::fs::create_dir_all(&model).unwrap();
        write(&model.join("config.json"), cfg);
        let out = d.join("out");
        let o = kiln(&["train", "--model", model.to_str().unwrap(), "--steps", "3", "--batch", "2", "--seq", "16", "--vocab", "200", "--json", "--sample-tokens", "0", "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{tag}: {}", stderr(&o));
        assert_eq!(loss_lines(&o).len(), 3, "{tag}");
        let back = kiln::model::model::LoadedModel::from_dir(&out, 0, kiln::Device::Cpu).unwrap();
        assert_eq!(back.cfg.model_type(), tag);
        let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        if tag == "distilbert" {
            assert!(written.get("dim").is_some() && written.get("hidden_size").is_none(), "{written}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}

