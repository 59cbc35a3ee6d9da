//! `kiln finetune` end to end on generated tasks (issue 22, part): a sequence task (JSONL, string
//! labels), a sentence-pair task (CSV, numeric labels) and a tagging task (JSONL tokens / tags),
//! each from a tiny pretrained BERT made by `kiln train`; the best checkpoint loads with its labels;
//! bad data are clear errors naming the file and line. Multiple choice and GPT-1-style fine-tuning:
//! tests/finetune_gpt.rs.
mod common;

use common::finetune::*;
use kiln::model::model::LoadedModel;
use std::path::Path;
use std::process::Output;

/// A tiny pretrained BERT run directory (with its WordPiece tokenizer) to fine-tune.
fn body(d: &Path) -> String {
    common::finetune::body_of(d, "bert-tiny")
}

#[test]
fn sequence_classification_from_jsonl_reaches_090_and_keeps_its_labels() {
    let d = tmp("seq");
    let model = body(&d);
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    let (train, dev) = (d.join("train.jsonl"), d.join("dev.jsonl"));
    std::fs::write(&train, seq_jsonl(&mut g, 480)).unwrap();
    std::fs::write(&dev, seq_jsonl(&mut g, 120)).unwrap();
    let out = d.join("out");
    let o = finetune(&model, "seq-cls", &train, &dev, &out, &["--epochs", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let acc = metric(&o, "accuracy");
    assert!(acc >= 0.9, "best accuracy {acc}");
    assert!(metric(&o, "macro_f1") >= 0.9);
    // the best checkpoint: the classifier architecture with the data's labels, as written
    let best = LoadedModel::from_dir(out.join("best"), 0, kiln::Device::Cpu).unwrap();
    assert_eq!(best.cfg.architecture(), Some("BertForSequenceClassification"));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("best/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["id2label"], serde_json::json!({"0": "neg", "1": "pos"}));
    assert_eq!(cfg["label2id"], serde_json::json!({"neg": 0, "pos": 1}));
    // --out is refused the second time
    let o = finetune(&model, "seq-cls", &train, &dev, &out, &["--steps", "1"]);
    assert!(!o.status.success() && stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn pair_classification_from_csv_with_numeric_labels() {
    let d = tmp("pair");
    let model = body(&d);
    let mut g = Gen(0x2545_F491_4F6C_DD1D);
    let mut csv = |n: usize| {
        let mut s = String::from("text,text_pair,label\n");
        for _ in 0..n {
            let yes = g.below(2) == 0;
            let a: Vec<&str> = (0..5).map(|_| g.pick(&FILLER)).collect();
            let mut b: Vec<&str> = (0..5).map(|_| g.pick(&FILLER)).collect();
            let at = g.below(b.len());
            b.insert(at, if yes { "good" } else { "bad" });
            s += &format!("\"{}\",\"{}\",{}\n", a.join(" "), b.join(" "), if yes { 1 } else { 0 });
        }
        s
    };
    let (train, dev) = (d.join("train.csv"), d.join("dev.csv"));
    std::fs::write(&train, csv(480)).unwrap();
    std::fs::write(&dev, csv(120)).unwrap();
    let out = d.join("out");
    let o = finetune(&model, "pair-cls", &train, &dev, &out, &["--epochs", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(metric(&o, "accuracy") >= 0.9, "{}", String::from_utf8_lossy(&o.stdout));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("best/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["id2label"], serde_json::json!({"0": "0", "1": "1"}));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn token_classification_reaches_090_token_f1() {
    let d = tmp("tok");
    let model = body(&d);
    let mut g = Gen(0xD1B5_4A32_D192_ED03);
    let mut data = |n: usize| -> String {
        (0..n)
            .map(|_| {
                let words: Vec<&str> = (0..6 + g.below(6)).map(|_| match g.below(4) { 0 => g.pick(&NOUNS), 1 => g.pick(&VERBS), _ => g.pick(&FILLER) }).collect();
                let tags: Vec<&str> = words.iter().map(|w| if NOUNS.contains(w) { "NOUN" } else if VERBS.contains(w) { "VERB" } else { "O" }).collect();
                serde_json::json!({"tokens": words, "tags": tags}).to_string() + "\n"
            })
            .collect()
    };
    let (train, dev) = (d.join("train.jsonl"), d.join("dev.jsonl"));
    std::fs::write(&train, data(480)).unwrap();
    std::fs::write(&dev, data(120)).unwrap();
    let out = d.join("out");
    let o = finetune(&model, "token-cls", &train, &dev, &out, &["--epochs", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f1 = metric(&o, "token_f1");
    assert!(f1 >= 0.9, "best token F1 {f1}: {}", String::from_utf8_lossy(&o.stdout));
    let best = LoadedModel::from_dir(out.join("best"), 0, kiln::Device::Cpu).unwrap();
    assert_eq!(best.cfg.architecture(), Some("BertForTokenClassification"));
    std::fs::remove_dir_all(&d).unwrap();
}

/// Bad data: clear errors naming the file and line, nothing written.
#[test]
fn bad_finetuning_data_is_a_clear_error() {
    let d = tmp("bad");
    let model = body(&d);
    let train = d.join("train.jsonl");
    std::fs::write(&train, "{\"text\": \"a good day\", \"label\": \"pos\"}\n{\"text\": \"a bad day\", \"label\": \"neg\"}\n").unwrap();
    let out = d.join("out");
    let train_tok = d.join("train_tok.jsonl");
    std::fs::write(&train_tok, "{\"tokens\": [\"a\", \"king\"], \"tags\": [\"O\", \"NOUN\"]}\n").unwrap();
    let case = |name: &str, task: &str, dev_text: &str, want: &str| {
        let dev = d.join(name);
        std::fs::write(&dev, dev_text).unwrap();
        let train = if task == "token-cls" { &train_tok } else { &train };
        let o = finetune(&model, task, train, &dev, &out, &["--steps", "1"]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{name}: {e}");
        assert!(e.contains(want) && !e.contains("panicked"), "{name}: {e}");
        assert!(!out.exists(), "{name}: --out was written");
    };
    let dev = d.join("unknown.jsonl");
    case("unknown.jsonl", "seq-cls", "{\"text\": \"x\", \"label\": \"pos\"}\n\n{\"text\": \"y\", \"label\": \"maybe\"}\n", &format!("{}:3: label 'maybe' is not among the training data's labels (neg, pos)", dev.display()));
    case("empty.jsonl", "seq-cls", "", "empty.jsonl");
    case("nolabel.jsonl", "seq-cls", "{\"text\": \"x\"}\n", "nolabel.jsonl:1: no 'label' field");
    case("notjson.jsonl", "seq-cls", "{\"text\": \"x\", \"label\": \"pos\"}\n{oops\n", "notjson.jsonl:2: not a JSON object");
    case("tags.jsonl", "token-cls", "{\"tokens\": [\"a\", \"b\"], \"tags\": [\"O\"]}\n", "tags.jsonl:1: 2 tokens but 1 tags");
    let train_qa = d.join("train_qa.jsonl");
    std::fs::write(&train_qa, "{\"question\": \"what?\", \"context\": \"a king\", \"answers\": {\"text\": [\"king\"], \"answer_start\": [2]}}\n").unwrap();
    let dev = d.join("offsets.jsonl");
    std::fs::write(&dev, "{\"question\": \"what?\", \"context\": \"the lord\", \"answers\": {\"text\": [\"lord\"], \"answer_start\": [3]}}\n").unwrap();
    let o = finetune(&model, "qa", &train_qa, &dev, &out, &["--steps", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("offsets.jsonl:1: answer 'lord' is not at character 3 of the context (found ' lor')"), "{}", stderr(&o));
    std::fs::remove_dir_all(&d).unwrap();
}

/// One run of 60 updates equals 30 updates and a `--resume` for 30 more: the same evaluations
/// and, bit for bit, the same weights (a constant schedule, so that the two runs' learning rates
/// agree; the best metric so far travels in the training state).
#[test]
fn a_resumed_finetuning_run_is_exact() {
    let d = tmp("resume");
    let model = body(&d);
    let mut g = Gen(0x0123_4567_89AB_CDEF);
    let (train, dev) = (d.join("train.jsonl"), d.join("dev.jsonl"));
    std::fs::write(&train, seq_jsonl(&mut g, 240)).unwrap();
    std::fs::write(&dev, seq_jsonl(&mut g, 60)).unwrap();
    let evals = |o: &Output| -> Vec<String> {
        String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("\"accuracy\"")).map(str::to_string).collect()
    };
    let (full, part) = (d.join("full"), d.join("part"));
    let common = ["--schedule", "constant", "--eval-every", "10"];
    let o = finetune(&model, "seq-cls", &train, &dev, &full, &[&common[..], &["--steps", "30"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let want = evals(&o);
    assert_eq!(want.len(), 3);
    let o = finetune(&model, "seq-cls", &train, &dev, &part, &[&common[..], &["--steps", "10"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(evals(&o)[..], want[..1]);
    let mut a = vec!["finetune", "--resume", part.to_str().unwrap(), "--task", "seq-cls", "--data", train.to_str().unwrap(), "--eval", dev.to_str().unwrap(), "--json", "--seq", "24", "--lr", "2e-3", "--batch", "16", "--steps", "30"];
    a.extend_from_slice(&common);
    let o = kiln(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(evals(&o)[..], want[1..], "the resumed evaluations differ");
    let w = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert!(w(&full) == w(&part), "the resumed run's weights differ from the uninterrupted run's");
    assert!(w(&full.join("best")) == w(&part.join("best")), "the best checkpoints differ");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Extractive QA on generated contexts: "... the code of the NOUN is WORD ..." asked "what is the
/// code of the NOUN": exact match >= 0.8 (SQuAD's normalisation), answers given as HF datasets write
/// them (offsets in characters).
#[test]
fn extractive_qa_reaches_080_exact_match() {
    let d = tmp("qa");
    let model = body(&d);
    let mut g = Gen(0x5851_F42D_4C95_7F2D);
    let mut data = |n: usize| -> String {
        (0..n)
            .map(|_| {
                let noun = g.pick(&NOUNS);
                let answer = g.pick(&VERBS);
                let mut words: Vec<String> = (0..4 + g.below(4)).map(|_| g.pick(&FILLER).to_string()).collect();
                let at = g.below(words.len() + 1);
                words.insert(at, format!("the code of the {noun} is {answer} ."));
                // a distractor fact about another noun
                let other = NOUNS.iter().find(|n| **n != noun).unwrap();
                words.push(format!("the code of the {other} is {} .", g.pick(&VERBS)));
                let context = words.join(" ");
                let key = format!("the code of the {noun} is ");
                let start = context.find(&key).unwrap() + key.len();
                serde_json::json!({"question": format!("what is the code of the {noun} ?"), "context": context,
                    "answers": {"text": [answer], "answer_start": [context[..start].chars().count()]}}).to_string() + "\n"
            })
            .collect()
    };
    let (train, dev) = (d.join("train.jsonl"), d.join("dev.jsonl"));
    std::fs::write(&train, data(640)).unwrap();
    std::fs::write(&dev, data(120)).unwrap();
    let out = d.join("out");
    let o = finetune(&model, "qa", &train, &dev, &out, &["--epochs", "4", "--seq", "64"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let em = metric(&o, "exact_match");
    assert!(em >= 0.8, "best exact match {em}: {}", String::from_utf8_lossy(&o.stdout));
    let best = LoadedModel::from_dir(out.join("best"), 0, kiln::Device::Cpu).unwrap();
    assert_eq!(best.cfg.architecture(), Some("BertForQuestionAnswering"));
    std::fs::remove_dir_all(&d).unwrap();
}
