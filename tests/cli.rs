//! The `kiln` binary end to end: forward parity through the CLI, exact resume, and bad input
//! (clear error, non-zero exit, nothing overwritten).
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

/// Fails unless the command failed with a message containing `want`.
fn assert_fails(o: &Output, want: &str) {
    assert!(!o.status.success(), "expected failure, got success: {}", String::from_utf8_lossy(&o.stdout));
    let e = stderr(o);
    assert!(e.contains(want), "stderr does not mention '{want}': {e}");
    assert!(!e.contains("panicked"), "panicked: {e}");
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

#[test]
fn bad_input_gives_clear_errors() {
    let d = tmp("bad");
    let fx = fixture("gpt2_lm");
    let batch = fx.join("batch.json");
    let out = d.join("out.safetensors");
    write(&out, "keep me");
    let run_fwd = |model: &Path, batch: &Path| kiln(&["forward", "--model", model.to_str().unwrap(), "--batch", batch.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    // missing model directory / config
    assert_fails(&run_fwd(&d.join("nope"), &batch), "does not exist");
    let m = d.join("m1");
    std::fs::create_dir_all(&m).unwrap();
    assert_fails(&run_fwd(&m, &batch), "config.json");
    // corrupt config JSON
    write(&m.join("config.json"), "{ not json");
    assert_fails(&run_fwd(&m, &batch), "config.json");
    // corrupt / truncated weights
    std::fs::copy(fx.join("config.json"), m.join("config.json")).unwrap();
    let w = std::fs::read(fx.join("model.safetensors")).unwrap();
    std::fs::write(m.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    assert_fails(&run_fwd(&m, &batch), "model.safetensors");
    // shape mismatch: a config with another hidden size
    let cfg = std::fs::read_to_string(fx.join("config.json")).unwrap().replace("\"n_embd\": 32", "\"n_embd\": 64");
    write(&m.join("config.json"), &cfg);
    std::fs::write(m.join("model.safetensors"), &w).unwrap();
    assert_fails(&run_fwd(&m, &batch), "shape");
    // ids >= vocab, too long sequences, bad batch JSON
    let b = d.join("b.json");
    write(&b, r#"{"input_ids": [[1, 2, 100000]]}"#);
    assert_fails(&run_fwd(&fx, &b), "out of range");
    let long: Vec<String> = (0..100).map(|_| "1".to_string()).collect();
    write(&b, &format!(r#"{{"input_ids": [[{}]]}}"#, long.join(",")));
    assert_fails(&run_fwd(&fx, &b), "exceeds");
    write(&b, r#"{"input_ids": [[1, 2], [3]]}"#);
    assert_fails(&run_fwd(&fx, &b), "input_ids");
    write(&b, "[1, 2");
    assert_fails(&run_fwd(&fx, &b), "invalid JSON");
    // the output file was never touched
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me");
    // empty training data
    let empty = d.join("empty.txt");
    write(&empty, "   \n");
    assert_fails(&kiln(&["train", "--data", empty.to_str().unwrap(), "--out", d.join("o").to_str().unwrap(), "--steps", "1"]), "empty");
    // unwritable output (a path under a regular file)
    let o = kiln(&["forward", "--model", fx.to_str().unwrap(), "--batch", batch.to_str().unwrap(), "--out", out.join("x.safetensors").to_str().unwrap()]);
    assert!(!o.status.success() && !stderr(&o).contains("panicked"), "{}", stderr(&o));
    // sampling settings that cannot sample, refused before the model is read
    assert_fails(&kiln(&["generate", "--model", d.join("nope").to_str().unwrap(), "--prompt", "a", "--top-p", "0"]), "top_p");
    assert_fails(&kiln(&["generate", "--model", d.join("nope").to_str().unwrap(), "--prompt", "a", "--temperature", "NaN"]), "temperature");
    // CUDA requested on a machine without it
    assert_fails(&kiln(&["train", "--device", "cuda", "--steps", "1"]), "CUDA");
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

/// Issue 18's quiet wrong answers that are now errors before anything is written: a negative or
/// non-finite learning rate, clip or weight decay; `eval --batches 0`; a dangling weights link
/// (was: a randomly initialised model); weights holding NaN or infinity.
#[test]
fn hyper_parameters_and_weights_that_cannot_train_are_errors() {
    let d = tmp("bad-hyper");
    let out = d.join("o");
    for (flag, v, want) in [("--lr", "-1", "lr"), ("--lr", "NaN", "lr"), ("--clip", "-1", "clip"), ("--clip", "NaN", "clip"), ("--weight-decay", "-0.5", "weight_decay"), ("--eval-batches", "0", "batch")] {
        let o = kiln(&["train", "--steps", "1", &format!("{flag}={v}"), "--out", out.to_str().unwrap()]);
        assert_fails(&o, want);
        assert!(!out.exists(), "{flag} {v}: the output directory was created");
    }
    let fx = fixture("gpt2_lm");
    let text = d.join("t.txt");
    write(&text, "some text to evaluate on, some text to evaluate on.\n");
    // a model directory whose weights link points nowhere
    let m = d.join("dangling");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::copy(fx.join("config.json"), m.join("config.json")).unwrap();
    std::os::unix::fs::symlink(d.join("nowhere.safetensors"), m.join("model.safetensors")).unwrap();
    let batch = fx.join("batch.json");
    assert_fails(&kiln(&["forward", "--model", m.to_str().unwrap(), "--batch", batch.to_str().unwrap(), "--out", d.join("f.safetensors").to_str().unwrap()]), "nowhere.safetensors");
    // weights with a NaN
    let n = d.join("nan");
    std::fs::create_dir_all(&n).unwrap();
    std::fs::copy(fx.join("config.json"), n.join("config.json")).unwrap();
    let mut ts = kiln::model::st_io::read_safetensors(fx.join("model.safetensors")).unwrap();
    let (name, t) = ts.iter_mut().find(|(k, _)| k.ends_with("ln_f.weight")).unwrap();
    let mut v = t.to_vec::<f32>().unwrap();
    v[3] = f32::NAN;
    *t = kiln::Tensor::from_vec(v, t.shape()).unwrap();
    let name = name.clone();
    kiln::model::st_io::write_safetensors(n.join("model.safetensors"), &ts, None, None).unwrap();
    assert_fails(&kiln(&["forward", "--model", n.to_str().unwrap(), "--batch", batch.to_str().unwrap(), "--out", d.join("f.safetensors").to_str().unwrap()]), &name);
    // eval over zero batches (the fixture directory has no tokenizer: use a trained tiny run)
    let run = d.join("run");
    let o = kiln(&["train", "--steps", "1", "--batch", "2", "--seq", "16", "--vocab", "300", "--json", "--sample-tokens", "0", "--out", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fails(&kiln(&["eval", "--model", run.to_str().unwrap(), "--data", text.to_str().unwrap(), "--batches", "0"]), "batches");
    // more new tokens than the context holds: an error at once (was: hours of sliding-window work)
    let t0 = std::time::Instant::now();
    assert_fails(&kiln(&["generate", "--model", run.to_str().unwrap(), "--prompt", "the", "--max-new-tokens", "1000000000"]), "context");
    assert!(t0.elapsed().as_secs() < 60);
    let o = kiln(&["generate", "--model", run.to_str().unwrap(), "--prompt", "the", "--max-new-tokens", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(d).unwrap();
}

/// Nothing a user did not ask to overwrite is overwritten: `train --out` over a directory holding a
/// checkpoint refuses without `--overwrite`; `forward --out` naming a file it reads, or an `--out`
/// that is a symlink, is refused; and a FIFO standing for a model file is an error, not a hang.
#[test]
fn outputs_never_replace_inputs_or_links_and_fifos_do_not_hang() {
    let d = tmp("no-overwrite");
    let run = d.join("run");
    let common = ["--steps", "1", "--batch", "2", "--seq", "16", "--vocab", "300", "--json", "--sample-tokens", "0", "--out", run.to_str().unwrap()];
    let o = kiln(&[&["train"][..], &common].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let before = std::fs::read(run.join("model.safetensors")).unwrap();
    assert_fails(&kiln(&[&["train", "--seed", "9"][..], &common].concat()), "--overwrite");
    assert_eq!(std::fs::read(run.join("model.safetensors")).unwrap(), before, "the checkpoint was replaced");
    let o = kiln(&[&["train", "--seed", "9", "--overwrite"][..], &common].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read(run.join("model.safetensors")).unwrap(), before, "--overwrite did not write");

    // forward --out onto the weights it reads, or through a symlink
    let fx = fixture("gpt2_lm");
    let model = d.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fx.join(f), model.join(f)).unwrap();
    }
    let batch = fx.join("batch.json");
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    let fwd = |out: &Path| kiln(&["forward", "--model", model.to_str().unwrap(), "--batch", batch.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_fails(&fwd(&model.join("model.safetensors")), "reads");
    assert_eq!(std::fs::read(model.join("model.safetensors")).unwrap(), weights);
    let kept = d.join("kept.safetensors");
    write(&kept, "precious");
    let link = d.join("link.safetensors");
    std::os::unix::fs::symlink(&kept, &link).unwrap();
    assert_fails(&fwd(&link), "symlink");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "precious");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced by a file");

    // a FIFO named model.safetensors: an error, within seconds
    let fifo_dir = d.join("fifo");
    std::fs::create_dir_all(&fifo_dir).unwrap();
    std::fs::copy(fx.join("config.json"), fifo_dir.join("config.json")).unwrap();
    let mk = Command::new("mkfifo").arg(fifo_dir.join("model.safetensors")).status().expect("mkfifo");
    assert!(mk.success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["forward", "--model", fifo_dir.to_str().unwrap(), "--batch", batch.to_str().unwrap(), "--out", d.join("f.safetensors").to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed().as_secs() > 30 {
            let _ = child.kill();
            panic!("kiln forward hung on a FIFO");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success() && err.contains("not a regular file"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

/// Issue 18, limits before allocation: sizes no machine can hold, in a config written as
/// transformers writes it or in a command's flags, are refused before anything is allocated
/// (they used to abort with `memory allocation of N bytes failed`, some after filling the memory):
/// a normal non-zero exit within seconds, whose message names the field, the bytes needed and the
/// memory available.
#[test]
fn sizes_no_machine_holds_are_refused_before_allocating() {
    let d = tmp("limits");
    let data = d.join("data.txt");
    write(&data, &"The cat sat on the mat. A dog ran in the park.\n".repeat(100));
    let tok = fixture("tokenizers/gpt2/tokenizer.json");
    let refused = |what: &str, args: &[&str], want: &str| {
        let t0 = std::time::Instant::now();
        let o = kiln(args);
        let secs = t0.elapsed().as_secs_f64();
        let e = stderr(&o);
        // an exit code (Some), not a signal (None: SIGABRT, SIGKILL from the OOM killer)
        assert_eq!(o.status.code(), Some(1), "{what}: {:?}: {e}", o.status);
        assert!(e.contains(want), "{what}: stderr does not mention '{want}': {e}");
        assert!(!e.contains("memory allocation") && !e.contains("panicked"), "{what}: {e}");
        assert!(secs < 60.0, "{what}: took {secs:.1} s: was something allocated first?");
        e
    };
    // config fields: the transformers-written GPT-2 config of a fixture with one size changed
    let base: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("gpt2_default_config/config.json")).unwrap()).unwrap();
    for (field, value) in [("vocab_size", 1_000_000_000_000u64), ("n_embd", 1 << 40), ("n_inner", 1_000_000_000_000), ("n_layer", 1_000_000_000)] {
        let m = d.join(field);
        std::fs::create_dir_all(&m).unwrap();
        let mut cfg = base.clone();
        cfg[field] = value.into();
        write(&m.join("config.json"), &serde_json::to_string_pretty(&cfg).unwrap());
        let model = m.to_str().unwrap();
        let want = format!("{field} = {value} is too large");
        let out = d.join("out.safetensors");
        let o = d.join(format!("run-{field}"));
        for (cmd, args) in [
            ("forward", vec!["forward", "--model", model, "--batch", fixture("gpt2_default_config/batch.json").to_str().unwrap(), "--out", out.to_str().unwrap()]),
            ("generate", vec!["generate", "--model", model, "--prompt", "hello", "--max-new-tokens", "2"]),
            ("eval", vec!["eval", "--model", model, "--data", data.to_str().unwrap(), "--seq", "16"]),
            ("train", vec!["train", "--model", model, "--tokenizer", tok.to_str().unwrap(), "--steps", "1", "--seq", "16", "--out", o.to_str().unwrap()]),
        ] {
            let e = refused(&format!("{cmd} with {field} = {value}"), &args, &want);
            assert!(e.contains("available") && e.contains("total"), "{cmd} {field}: the memory is not named: {e}");
            assert!(e.contains(" PiB") || e.contains(" EiB") || e.contains(" TiB"), "{cmd} {field}: the bytes are not named: {e}");
        }
        assert!(!o.exists(), "train with {field} = {value} wrote {}", o.display());
    }
    // flags
    let out = |tag: &str| d.join(tag).to_str().unwrap().to_string();
    let e = refused("train --batch 1e11", &["train", "--batch", "100000000000", "--steps", "1", "--out", &out("b")], "--batch = 100000000000 is too large: training");
    assert!(e.contains("activations") && e.contains("available"), "{e}");
    let e = refused("train --vocab 1e11", &["train", "--vocab", "100000000000", "--steps", "1", "--out", &out("v")], "--vocab = 100000000000 is too large: training a tokenizer");
    assert!(e.contains("5.09 TiB") && e.contains("available"), "{e}");
    refused("train --seq 1e9", &["train", "--seq", "1000000000", "--steps", "1", "--out", &out("s")], "--seq 1000000000 exceeds the model's 256 positions");
    let lm = fixture("gpt2_lm");
    let e = refused("eval --batch 1e10", &["eval", "--model", lm.to_str().unwrap(), "--data", data.to_str().unwrap(), "--batch", "10000000000"], "--batch = 10000000000 is too large");
    assert!(e.contains("available"), "{e}");
    refused("eval --seq 1e6", &["eval", "--model", lm.to_str().unwrap(), "--data", data.to_str().unwrap(), "--seq", "1000000"], "--seq 1000000 exceeds the model's 64 positions");
    for tag in ["b", "v", "s"] {
        assert!(!d.join(tag).exists(), "--out {tag} was written");
    }
    std::fs::remove_dir_all(d).unwrap();
}
