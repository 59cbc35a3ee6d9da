//! The bad-input corpus (issue 18): the kinds of bad input a user can give the `kiln` binary, each
//! run under a time limit (`timeout -s KILL`) and a memory limit (`ulimit -v`). Every case expects a
//! clear error (exit status 1, the culprit named, no panic) that leaves every file as it was, or a
//! correct result. None may panic, abort (an allocation failure is an abort) or hang.
//!
//! The loaders' random and mutated inputs are in tests/fuzz_loaders.rs; torn checkpoints and the
//! crash test in tests/checkpoints.rs.
mod common;
use common::snapshot;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Seconds a case may run.
const TIME_LIMIT_S: u32 = 60;
/// Address space a case may map, in KiB (6 GiB; the machines running this have 24 GB).
const MEM_LIMIT_KB: u64 = 6 << 20;

/// Runs `kiln args` under the time and memory limits.
fn limited(args: &[String]) -> Output {
    Command::new("timeout")
        .args(["-s", "KILL", &TIME_LIMIT_S.to_string(), "sh", "-c", &format!("ulimit -v {MEM_LIMIT_KB} && exec \"$0\" \"$@\""), env!("CARGO_BIN_EXE_kiln")])
        .args(args)
        .output()
        .expect("run kiln under timeout(1) and sh(1)")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-bad-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// What a case must do.
enum Expect {
    /// Exit status 1 with this text in stderr, no file under the work directory changed.
    Error(&'static str),
    /// As `Error`, with every one of these texts.
    Errors(Vec<String>),
    /// Success (what it wrote is checked by the case's own closure, if any).
    Ok,
}

struct Case {
    name: &'static str,
    args: Vec<String>,
    expect: Expect,
}

fn case(name: &'static str, args: &[&str], expect: Expect) -> Case {
    Case { name, args: args.iter().map(|a| a.to_string()).collect(), expect }
}

/// Runs the cases; collects every failure before failing, so one run shows them all.
fn run_all(work: &Path, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in cases {
        let before = snapshot(work);
        let o = limited(&c.args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let code = o.status.code();
        let verdict = match (&c.expect, code) {
            (_, Some(137)) => Some(format!("killed after {TIME_LIMIT_S} s (a hang)")),
            (_, Some(134)) | (_, None) => Some(format!("aborted or killed by a signal ({:?}): {err}", o.status)),
            (_, _) if err.contains("panicked") => Some(format!("panicked: {err}")),
            (Expect::Ok, Some(0)) => None,
            (Expect::Ok, _) => Some(format!("expected success, got {code:?}: {err}")),
            (Expect::Error(want), Some(1)) if err.contains(want) => unchanged(&before, work),
            (Expect::Errors(want), Some(1)) if want.iter().all(|w| err.contains(w.as_str())) => unchanged(&before, work),
            (Expect::Error(want), _) => Some(format!("expected exit 1 mentioning {want:?}, got {code:?}: {err}")),
            (Expect::Errors(want), _) => Some(format!("expected exit 1 mentioning each of {want:?}, got {code:?}: {err}")),
        };
        if let Some(v) = verdict {
            failures.push(format!("{} (kiln {}): {v}", c.name, c.args.join(" ")));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// None when nothing under `work` changed since `before`, else what did.
fn unchanged(before: &BTreeMap<String, Vec<u8>>, work: &Path) -> Option<String> {
    let after = snapshot(work);
    let changed: Vec<&String> = before.keys().chain(after.keys()).filter(|k| before.get(*k) != after.get(*k)).collect();
    (!changed.is_empty()).then(|| format!("failed as expected but changed {changed:?}"))
}

/// A safetensors file from a header (JSON text) and a data section.
fn st_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// A model directory `name` under `work`: the GPT-2 fixture's config (edited by `cfg`) and
/// `weights` (None: no weights file).
fn model_dir(work: &Path, name: &str, cfg: impl Fn(String) -> String, weights: Option<&[u8]>) -> String {
    let d = work.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("config.json"), cfg(std::fs::read_to_string(fixture("gpt2_lm/config.json")).unwrap())).unwrap();
    if let Some(w) = weights {
        std::fs::write(d.join("model.safetensors"), w).unwrap();
    }
    s(&d)
}

/// `model.safetensors` bytes of `fixture` with one tensor replaced.
fn with_tensor(fixture_dir: &str, suffix: &str, f: impl Fn(&kiln::Tensor) -> kiln::Tensor) -> Vec<u8> {
    let mut ts = kiln::model::st_io::read_safetensors(fixture(fixture_dir).join("model.safetensors")).unwrap();
    let (_, t) = ts.iter_mut().find(|(k, _)| k.ends_with(suffix)).unwrap();
    *t = f(t);
    kiln::model::st_io::to_safetensors_bytes(&ts, None, None).unwrap()
}

fn config_field(name: &str, value: &str) -> impl Fn(String) -> String {
    let (name, value) = (name.to_string(), value.to_string());
    move |c: String| {
        let mut v: serde_json::Value = serde_json::from_str(&c).unwrap();
        v[&name] = serde_json::from_str(&value).unwrap();
        v.to_string()
    }
}

/// Model files, configs, batches and outputs through `kiln forward` / `generate` / `eval`.
#[test]
fn model_and_batch_inputs() {
    let work = tmp("model");
    let w = std::fs::read(fixture("gpt2_lm/model.safetensors")).unwrap();
    let same = |c: String| c;
    let batch = s(&fixture("gpt2_lm/batch.json"));
    let out = s(&work.join("out.safetensors"));
    std::fs::write(work.join("out.safetensors"), "keep me").unwrap();
    let fx = s(&fixture("gpt2_lm"));
    let fwd = |model: &str, batch: &str, out: &str| vec!["forward".to_string(), "--model".into(), model.into(), "--batch".into(), batch.into(), "--out".into(), out.into()];
    let b = |name: &str, text: &str| {
        let p = work.join(name);
        std::fs::write(&p, text).unwrap();
        s(&p)
    };
    let long: Vec<String> = (0..100).map(|_| "1".to_string()).collect();
    let fifo = model_dir(&work, "fifo", same, None);
    assert!(Command::new("mkfifo").arg(Path::new(&fifo).join("model.safetensors")).status().expect("mkfifo").success());
    let dangling = model_dir(&work, "dangling", same, None);
    std::os::unix::fs::symlink(work.join("nowhere.safetensors"), Path::new(&dangling).join("model.safetensors")).unwrap();
    let own = model_dir(&work, "own", same, Some(&w));
    let link = work.join("link.safetensors");
    std::fs::write(work.join("kept.safetensors"), "precious").unwrap();
    std::os::unix::fs::symlink(work.join("kept.safetensors"), &link).unwrap();
    let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let empty_model = s(&work.join("empty-model"));
    std::fs::create_dir_all(&empty_model).unwrap();
    let cases = vec![
        Case { name: "missing model directory", args: fwd(&s(&work.join("nope")), &batch, &out), expect: Expect::Error("does not exist") },
        Case { name: "no config.json", args: fwd(&empty_model, &batch, &out), expect: Expect::Error("config.json") },
        Case { name: "config not JSON", args: fwd(&model_dir(&work, "badjson", |_| "{ not json".into(), None), &batch, &out), expect: Expect::Error("config.json") },
        Case { name: "config field of the wrong type", args: fwd(&model_dir(&work, "badtype", config_field("n_layer", "\"two\""), None), &batch, &out), expect: Expect::Error("n_layer") },
        Case { name: "truncated weights", args: fwd(&model_dir(&work, "trunc", same, Some(&w[..w.len() / 2])), &batch, &out), expect: Expect::Error("truncated") },
        Case { name: "header length past the file", args: fwd(&model_dir(&work, "hdr", same, Some(&[&u64::MAX.to_le_bytes()[..], &w[8..]].concat())), &batch, &out), expect: Expect::Error("header length") },
        Case {
            name: "overlapping offsets",
            args: fwd(&model_dir(&work, "overlap", same, Some(&st_raw(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[3],"data_offsets":[8,20]}}"#, &data))), &batch, &out),
            expect: Expect::Error("overlap"),
        },
        Case { name: "weights of another shape", args: fwd(&model_dir(&work, "shape", |c| c.replace("\"n_embd\": 32", "\"n_embd\": 64"), Some(&w)), &batch, &out), expect: Expect::Error("shape") },
        Case { name: "integer weights", args: fwd(&model_dir(&work, "int", same, Some(&with_tensor("gpt2_lm", "ln_f.weight", |t| t.to_dtype(kiln::DType::I64).unwrap()))), &batch, &out), expect: Expect::Error("integer dtype") },
        Case {
            name: "NaN in the weights",
            args: fwd(
                &model_dir(&work, "nan", same, Some(&with_tensor("gpt2_lm", "ln_f.weight", |t| {
                    let mut v = t.to_vec::<f32>().unwrap();
                    v[3] = f32::NAN;
                    kiln::Tensor::from_vec(v, t.shape()).unwrap()
                }))),
                &batch,
                &out,
            ),
            expect: Expect::Error("ln_f.weight"),
        },
        Case { name: "dangling weights link", args: fwd(&dangling, &batch, &out), expect: Expect::Error("nowhere.safetensors") },
        Case { name: "a FIFO for the weights", args: fwd(&fifo, &batch, &out), expect: Expect::Error("not a regular file") },
        Case { name: "ids past the vocabulary", args: fwd(&fx, &b("ids.json", r#"{"input_ids": [[1, 2, 100000]]}"#), &out), expect: Expect::Error("out of range") },
        Case { name: "a sequence past the context", args: fwd(&fx, &b("long.json", &format!(r#"{{"input_ids": [[{}]]}}"#, long.join(","))), &out), expect: Expect::Error("exceeds") },
        Case { name: "ragged batch", args: fwd(&fx, &b("ragged.json", r#"{"input_ids": [[1, 2], [3]]}"#), &out), expect: Expect::Error("input_ids") },
        Case { name: "batch not JSON", args: fwd(&fx, &b("bad.json", "[1, 2"), &out), expect: Expect::Error("invalid JSON") },
        Case { name: "batch claiming 1e15 elements", args: fwd(&fx, &b("huge.json", &format!(r#"{{"input_ids": {}}}"#, nested(5))), &out), expect: Expect::Error("input_ids") },
        Case { name: "--out is the weights read", args: fwd(&own, &batch, &format!("{own}/model.safetensors")), expect: Expect::Error("reads") },
        Case { name: "--out is a symlink", args: fwd(&fx, &batch, &s(&link)), expect: Expect::Error("symlink") },
        Case { name: "--out is a device", args: fwd(&fx, &batch, "/dev/null"), expect: Expect::Error("not a regular file") },
        Case { name: "--out under a regular file", args: fwd(&fx, &batch, &format!("{out}/x.safetensors")), expect: Expect::Error("out.safetensors") },
        // a correct result: all labels ignored gives a NaN loss, as in PyTorch
        Case { name: "all labels -100", args: fwd(&fx, &b("ignored.json", r#"{"input_ids": [[1, 2, 3]], "labels": [[-100, -100, -100]]}"#), &s(&work.join("ignored.safetensors"))), expect: Expect::Ok },
        case("top-p 0", &["generate", "--model", &fx, "--prompt", "a", "--top-p", "0"], Expect::Error("top_p")),
        case("temperature NaN", &["generate", "--model", &fx, "--prompt", "a", "--temperature", "NaN"], Expect::Error("temperature")),
    ];
    run_all(&work, cases);
    let loss = kiln::model::st_io::read_safetensors(work.join("ignored.safetensors")).unwrap();
    let loss = &loss.iter().find(|(k, _)| k == "loss").expect("a loss tensor").1;
    assert!(loss.to_vec::<f32>().unwrap()[0].is_nan(), "all-ignored labels: the loss is NaN, as in PyTorch");
    assert_eq!(std::fs::read_to_string(work.join("kept.safetensors")).unwrap(), "precious");
    std::fs::remove_dir_all(&work).unwrap();
}

/// `[[0, 0, ...], 0, ...]` nested `depth` levels of 1000 (a ~10 KB file whose first rows claim
/// 1000^depth elements; the rest is ragged).
fn nested(depth: usize) -> String {
    let mut v = "0".to_string();
    for _ in 0..depth {
        v = format!("[{v}{}]", ",0".repeat(999));
    }
    v
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Training and evaluation flags, data files and run directories through `kiln train` / `eval` /
/// `generate`.
#[test]
fn training_inputs() {
    let work = tmp("train");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/tinyshakespeare.txt")).expect("../shared/data/tinyshakespeare.txt");
    let data = work.join("data.txt");
    std::fs::write(&data, &text[..20_000]).unwrap();
    let data = s(&data);
    let run = s(&work.join("run"));
    let small = ["--batch", "2", "--seq", "16", "--vocab", "300", "--json", "--sample-tokens", "0", "--eval-every", "0"];
    let train = |extra: &[&str]| {
        let mut a: Vec<String> = ["train", "--data", &data].iter().map(|x| x.to_string()).collect();
        a.extend(small.iter().map(|x| x.to_string()));
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    // a run to continue, evaluate and generate from
    let o = limited(&train(&["--steps", "2", "--out", &run]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let empty = work.join("empty.txt");
    std::fs::write(&empty, "   \n").unwrap();
    let fifo = work.join("fifo.txt");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    // 1 MB without whitespace: tokenizer training is linear in it
    let nows = work.join("nows.txt");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let letters: String = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect();
    std::fs::write(&nows, letters).unwrap();
    let out = s(&work.join("new"));
    // a model directory with weights and a tokenizer but no training state
    let nostate = s(&work.join("nostate"));
    std::fs::create_dir_all(&nostate).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(Path::new(&run).join(f), Path::new(&nostate).join(f)).unwrap();
    }
    let cases = vec![
        Case { name: "--lr -1", args: train(&["--steps", "1", "--lr=-1", "--out", &out]), expect: Expect::Error("lr") },
        Case { name: "--lr NaN", args: train(&["--steps", "1", "--lr", "NaN", "--out", &out]), expect: Expect::Error("lr") },
        Case { name: "--clip -1", args: train(&["--steps", "1", "--clip=-1", "--out", &out]), expect: Expect::Error("clip") },
        Case { name: "--clip NaN", args: train(&["--steps", "1", "--clip", "NaN", "--out", &out]), expect: Expect::Error("clip") },
        Case { name: "--weight-decay -0.5", args: train(&["--steps", "1", "--weight-decay=-0.5", "--out", &out]), expect: Expect::Error("weight_decay") },
        Case { name: "--eval-batches 0", args: train(&["--steps", "1", "--eval-batches", "0", "--out", &out]), expect: Expect::Error("batch") },
        Case { name: "--steps 0", args: train(&["--steps", "0", "--out", &out]), expect: Expect::Error("--steps") },
        Case { name: "empty data", args: ["train", "--data", &s(&empty), "--steps", "1", "--out", &out].iter().map(|x| x.to_string()).collect(), expect: Expect::Error("empty") },
        Case { name: "a FIFO for the data", args: ["train", "--data", &s(&fifo), "--steps", "1", "--out", &out].iter().map(|x| x.to_string()).collect(), expect: Expect::Error("not a regular file") },
        Case { name: "--out over a run", args: train(&["--steps", "1", "--out", &run]), expect: Expect::Error("--overwrite") },
        Case { name: "--resume past --steps", args: train(&["--steps", "2", "--resume", &run]), expect: Expect::Error("already at step 2") },
        Case { name: "--resume without a training state", args: train(&["--steps", "3", "--resume", &nostate, "--out", &out]), expect: Expect::Error("training_state") },
        case("--device cuda without CUDA", &["train", "--device", "cuda", "--steps", "1", "--out", &out], Expect::Error("CUDA")),
        case("eval --batches 0", &["eval", "--model", &run, "--data", &data, "--batches", "0"], Expect::Error("batches")),
        case("generate past the context", &["generate", "--model", &run, "--prompt", "the", "--max-new-tokens", "1000000000"], Expect::Error("context")),
        case("generate", &["generate", "--model", &run, "--prompt", "the", "--max-new-tokens", "3"], Expect::Ok),
        Case { name: "1 MB without whitespace", args: ["train", "--data", &s(&nows), "--steps", "1", "--batch", "2", "--seq", "16", "--vocab", "300", "--json", "--sample-tokens", "0", "--out", &s(&work.join("nows"))].iter().map(|x| x.to_string()).collect(), expect: Expect::Ok },
        Case { name: "--overwrite", args: train(&["--steps", "1", "--seed", "9", "--out", &run, "--overwrite"]), expect: Expect::Ok },
    ];
    run_all(&work, cases);
    std::fs::remove_dir_all(&work).unwrap();
}

/// Sizes no machine can hold, in a config written as transformers writes it or in a command's
/// flags: refused before anything is allocated (they used to abort with `memory allocation of N
/// bytes failed`, some after filling the memory), the message naming the field, the bytes needed
/// and the memory available.
#[test]
fn sizes_no_machine_holds() {
    let work = tmp("limits");
    let data = work.join("data.txt");
    std::fs::write(&data, "The cat sat on the mat. A dog ran in the park.\n".repeat(100)).unwrap();
    let data = s(&data);
    let tok = s(&fixture("tokenizers/gpt2/tokenizer.json"));
    let base: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("gpt2_default_config/config.json")).unwrap()).unwrap();
    let batch = s(&fixture("gpt2_default_config/batch.json"));
    let out = s(&work.join("out.safetensors"));
    let mut cases = Vec::new();
    for (field, value) in [("vocab_size", 1_000_000_000_000u64), ("n_embd", 1 << 40), ("n_inner", 1_000_000_000_000), ("n_layer", 1_000_000_000)] {
        let m = work.join(field);
        std::fs::create_dir_all(&m).unwrap();
        let mut cfg = base.clone();
        cfg[field] = value.into();
        std::fs::write(m.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
        let model = s(&m);
        let run = s(&work.join(format!("run-{field}")));
        // the field, the memory, and bytes in units no machine has
        let want = |unit: &str| vec![format!("{field} = {value} is too large"), "available".into(), "total".into(), unit.into()];
        let unit = if field == "n_embd" { " EiB" } else { "iB" };
        for args in [
            vec!["forward", "--model", &model, "--batch", &batch, "--out", &out],
            vec!["generate", "--model", &model, "--prompt", "hello", "--max-new-tokens", "2"],
            vec!["eval", "--model", &model, "--data", &data, "--seq", "16"],
            vec!["train", "--model", &model, "--tokenizer", &tok, "--steps", "1", "--seq", "16", "--out", &run],
        ] {
            cases.push(Case { name: "a config size", args: args.iter().map(|a| a.to_string()).collect(), expect: Expect::Errors(want(unit)) });
        }
    }
    let o = |tag: &str| s(&work.join(tag));
    let lm = s(&fixture("gpt2_lm"));
    let e = |v: &[&str]| Expect::Errors(v.iter().map(|x| x.to_string()).collect());
    cases.extend([
        case("train --batch 1e11", &["train", "--batch", "100000000000", "--steps", "1", "--out", &o("b")], e(&["--batch = 100000000000 is too large: training", "activations", "available"])),
        case("train --vocab 1e11", &["train", "--vocab", "100000000000", "--steps", "1", "--out", &o("v")], e(&["--vocab = 100000000000 is too large: training a tokenizer", "5.09 TiB", "available"])),
        case("train --seq 1e9", &["train", "--seq", "1000000000", "--steps", "1", "--out", &o("s")], Expect::Error("--seq 1000000000 exceeds the model's 256 positions")),
        case("eval --batch 1e10", &["eval", "--model", &lm, "--data", &data, "--batch", "10000000000"], e(&["--batch = 10000000000 is too large", "available"])),
        case("eval --seq 1e6", &["eval", "--model", &lm, "--data", &data, "--seq", "1000000"], Expect::Error("--seq 1000000 exceeds the model's 64 positions")),
    ]);
    run_all(&work, cases);
    std::fs::remove_dir_all(&work).unwrap();
}
