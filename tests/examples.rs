//! The examples in `examples/`, run briefly through their `run` functions (each example file is
//! compiled into this test as a module), so CI checks that they build, run and do what they print.
use clap::Parser;
use std::path::PathBuf;

#[allow(dead_code)]
#[path = "../examples/custom_transformer.rs"]
mod custom_transformer;

#[allow(dead_code)]
#[path = "../examples/bert_finetune.rs"]
mod bert_finetune;

#[allow(dead_code)]
#[path = "../examples/gpt2_generate.rs"]
mod gpt2_generate;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-examples-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn custom_transformer_loss_falls() {
    let d = tmp("ct");
    let text = d.join("text.txt");
    let line = "the cat sat on the mat and the dog sat on the log. ";
    std::fs::write(&text, line.repeat(60)).unwrap();
    let a = custom_transformer::Args::try_parse_from(["x", text.to_str().unwrap(), "--steps", "40", "--dim", "32", "--heads", "2", "--seq", "32", "--batch", "8", "--sample", "16", "--log-every", "20"]).unwrap();
    let s = custom_transformer::run(&a).unwrap();
    assert_eq!(s.losses.len(), 40);
    assert!(s.losses.iter().all(|l| l.1.is_finite()));
    let distinct = line.chars().collect::<std::collections::BTreeSet<_>>().len();
    assert_eq!(s.vocab, distinct);
    assert!((s.eval_before - (distinct as f64).ln()).abs() < 0.3, "an untrained model should be near uniform: {}", s.eval_before);
    assert!(s.eval_after < s.eval_before - 1.0, "held-out loss did not fall: {} -> {}", s.eval_before, s.eval_after);
    assert_eq!(s.sample.chars().count(), 16);
    // Bad input: a clear error, no panic.
    let missing = custom_transformer::Args::try_parse_from(["x", "--data", d.join("nope.txt").to_str().unwrap()]).unwrap();
    assert!(custom_transformer::run(&missing).err().unwrap().to_string().contains("nope.txt"));
    std::fs::write(&text, "too short").unwrap();
    let short = custom_transformer::Args::try_parse_from(["x", text.to_str().unwrap()]).unwrap();
    assert!(custom_transformer::run(&short).err().unwrap().to_string().contains("too short for --seq"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bert_finetune_accuracy_rises_and_the_checkpoint_reloads() {
    let out = tmp("bf");
    let a = bert_finetune::Args::try_parse_from(["x", &fixture("bert_seq_cls"), "--steps", "80", "--eval-every", "40", "--out", out.to_str().unwrap()]).unwrap();
    let s = bert_finetune::run(&a).unwrap();
    assert_eq!(s.classes, 3);
    let (first, last) = (s.accuracy[0].1, s.accuracy.last().unwrap().1);
    assert_eq!(s.accuracy.iter().map(|a| a.0).collect::<Vec<_>>(), [0, 40, 80]);
    assert!(first < 0.5 && last >= 0.8, "accuracy {first} -> {last}");
    assert_eq!(s.reloaded_accuracy, last, "the saved checkpoint classifies differently");
    assert!(out.join("model.safetensors").is_file() && out.join("config.json").is_file());
    // A GPT-2 directory is refused with a message.
    let gpt = bert_finetune::Args::try_parse_from(["x", &fixture("gpt2_lm"), "--out", out.to_str().unwrap()]).unwrap();
    let e = bert_finetune::run(&gpt).err().unwrap().to_string();
    assert!(e.contains("BertForSequenceClassification"), "{e}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn gpt2_generate_greedy_and_top_k() {
    let a = gpt2_generate::Args::try_parse_from(["x", &fixture("gpt2_lm"), "--prompt-ids", "5, 17 3", "--max-new-tokens", "6", "--top-k", "4"]).unwrap();
    let s = gpt2_generate::run(&a).unwrap();
    assert_eq!(s.prompt, [5, 17, 3]);
    for ids in [&s.greedy, &s.top_k] {
        assert_eq!(ids.len(), 9);
        assert_eq!(ids[..3], s.prompt[..]);
        assert!(ids.iter().all(|&i| (0..s.vocab as i64).contains(&i)));
    }
    let err = |args: &[&str]| gpt2_generate::run(&gpt2_generate::Args::try_parse_from(args).unwrap()).err().unwrap().to_string();
    assert!(err(&["x", &fixture("bert_seq_cls")]).contains("GPT-2"));
    assert!(err(&["x", &fixture("gpt2_lm"), "--prompt-ids", "1,x"]).contains("not a token id"));
    assert!(err(&["x", &fixture("gpt2_lm"), "--prompt-ids", "100"]).contains("out of range"));
    assert!(err(&["x", &fixture("gpt2_lm"), "--temperature", "0"]).contains("--temperature"));
}
