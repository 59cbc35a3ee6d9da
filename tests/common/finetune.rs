//! Helpers of the `kiln finetune` tests (tests/finetune.rs, tests/finetune_gpt.rs): the binary,
//! scratch directories, a tiny pretrained body, generated data, the metrics a run printed.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("run kiln")
}

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-ft-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A deterministic generator (xorshift).
pub struct Gen(pub u64);
impl Gen {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
    pub fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len())]
    }
}

pub const FILLER: [&str; 10] = ["the", "a", "on", "and", "of", "to", "in", "it", "was", "that"];
pub const NOUNS: [&str; 5] = ["king", "lord", "house", "night", "heart"];
pub const VERBS: [&str; 5] = ["speak", "come", "go", "know", "love"];

/// A tiny pretrained run directory of `preset` (`bert-tiny`, `gpt2-tiny`, ...; with its own
/// tokenizer of 400 tokens) to fine-tune.
pub fn body_of(d: &Path, preset: &str) -> String {
    let out = d.join(format!("body-{preset}"));
    let o = kiln(&["train", "--model", preset, "--steps", "2", "--batch", "2", "--seq", "32", "--vocab", "400", "--json", "--sample-tokens", "0", "--eval-every", "0", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    out.display().to_string()
}

/// The largest value of `name` over the JSON lines a run printed.
pub fn metric(o: &Output, name: &str) -> f64 {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get(name).and_then(|x| x.as_f64()))
        .fold(f64::NEG_INFINITY, f64::max)
}

/// `kiln finetune` with the tests' defaults (`--lr 2e-3 --batch 16`, `--seq 24` unless given).
pub fn finetune(model: &str, task: &str, train: &Path, dev: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut a = vec!["finetune", "--model", model, "--task", task, "--data", train.to_str().unwrap(), "--eval", dev.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json", "--lr", "2e-3", "--batch", "16"];
    if !extra.contains(&"--seq") {
        a.extend(["--seq", "24"]);
    }
    a.extend_from_slice(extra);
    kiln(&a)
}

/// Sentences of filler words with one cue word: "good" → pos, "bad" → neg.
pub fn seq_jsonl(g: &mut Gen, n: usize) -> String {
    (0..n)
        .map(|_| {
            let pos = g.below(2) == 0;
            let mut w: Vec<&str> = (0..6 + g.below(5)).map(|_| g.pick(&FILLER)).collect();
            let at = g.below(w.len());
            w.insert(at, if pos { "good" } else { "bad" });
            serde_json::json!({"text": w.join(" "), "label": if pos { "pos" } else { "neg" }}).to_string() + "\n"
        })
        .collect()
}
