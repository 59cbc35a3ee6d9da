//! `kiln bench` end to end on tiny shapes: every case runs, is checked against its reference and
//! timed; JSON rows carry the fields the kernel lab promises; --out / --from / --compare / --plot
//! work; bad comparison files are clear errors. (Timings here are not asserted: they are only
//! meaningful in a real run, see docs/RESULTS.md.)
use std::path::PathBuf;
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("run kiln")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rows(text: &str) -> Vec<serde_json::Value> {
    text.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `kiln bench --list`: every op name, and the row-wise ops' declarations (name, parameters,
/// composed reference or not, PyTorch expression).
fn list() -> (Vec<String>, Vec<serde_json::Value>) {
    let o = kiln(&["bench", "--list"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let all = rows(&String::from_utf8_lossy(&o.stdout));
    let ops = all.iter().find_map(|r| r["ops"].as_array()).expect("an ops line").iter().map(|v| v.as_str().unwrap().to_string()).collect();
    (ops, all.into_iter().filter(|r| r.get("row_op").is_some()).collect())
}

#[test]
fn quick_bench_checks_times_and_reports_every_case() {
    let dir = tmp("quick");
    let out = dir.join("kiln.jsonl");
    let o = kiln(&["bench", "--quick", "--json", "--out", out.to_str().unwrap(), "--plot", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "kiln bench failed: {stderr}");
    let printed = rows(&String::from_utf8_lossy(&o.stdout));
    let saved = rows(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(printed.len(), saved.len());
    let ops: std::collections::BTreeSet<&str> = printed.iter().map(|r| r["op"].as_str().unwrap()).collect();
    // every op `kiln bench --list` names (the row-wise ones as each op declares itself) has rows
    let (listed, row_ops) = list();
    assert!(listed.len() >= 27 && row_ops.len() >= 5, "{listed:?}");
    for op in &listed {
        assert!(ops.contains(op.as_str()), "no row for {op}: {ops:?}");
    }
    for r in &printed {
        let id = r["id"].as_str().unwrap();
        assert_eq!(r["status"], "ok", "{id}");
        let median = r["median_ms"].as_f64().unwrap();
        assert!(median > 0.0 && r["min_ms"].as_f64().unwrap() <= median && median <= r["max_ms"].as_f64().unwrap(), "{id}");
        assert!(r["gb_per_s"].as_f64().or(r["tflops"].as_f64()).unwrap() > 0.0, "{id}: no throughput");
        for k in ["op", "variant", "device", "dtype", "shape"] {
            assert!(r[k].is_string(), "{id}: {k}");
        }
        let want = format!("{}/{}/{}/{}{}", r["op"].as_str().unwrap(), r["device"].as_str().unwrap(), r["dtype"].as_str().unwrap(), r["shape"].as_str().unwrap(), if r["causal"] == true { "/causal" } else { "" });
        assert_eq!(id, want);
        if r["op"] != "copy" && r["op"] != "matmul" {
            assert!(r["pct_of_ceiling"].as_f64().unwrap() > 0.0, "{id}: no % of ceiling");
        }
    }
    // every fused op has a scalar variant checked against (or being) the reference, and a composed one where kiln has it
    let variants = |op: &str| -> Vec<String> { printed.iter().filter(|r| r["op"] == op).map(|r| r["variant"].as_str().unwrap().to_string()).collect() };
    let composed = row_ops.iter().filter(|o| o["composed"] == true).flat_map(|o| ["fwd", "bwd"].map(|p| format!("{}_{p}", o["row_op"].as_str().unwrap())));
    for op in composed.chain(["attention_fwd".to_string()]) {
        let v = variants(&op);
        assert!(v.contains(&"scalar".into()) && v.contains(&"composed".into()), "{op}: {v:?}");
    }
    assert!(printed.iter().filter(|r| r["variant"] != "composed" && r["op"] == "softmax_fwd").all(|r| r["max_err"].as_f64().unwrap() < 1e-4));
    let train = printed.iter().find(|r| r["op"] == "train_step_gpt").unwrap();
    assert!(train["tokens_per_s"].as_f64().unwrap() > 0.0 && train["params"].as_u64().unwrap() > 0);
    // greedy decoding with the key/value cache, checked against a full recomputation before timing
    // (f32 and bf16 weights)
    for (dt, tol) in [("f32", 1e-4), ("bf16", 2.0 / 128.0)] {
        let id = format!("decode_gpt/cpu/{dt}/1x8x8");
        let dec = printed.iter().find(|r| r["id"] == id.as_str()).unwrap_or_else(|| panic!("no {id} row"));
        assert!(dec["tokens_per_s"].as_f64().unwrap() > 0.0 && dec["check_max_gap"].as_f64().unwrap() <= tol, "{dec}");
    }
    // the bf16 mixed-precision steps, labelled as torch_bench.py labels its autocast rows
    for op in ["train_step_gpt", "train_step_bert"] {
        let mixed = printed.iter().find(|r| r["op"] == op && r["dtype"] == "bf16-autocast").unwrap_or_else(|| panic!("no bf16 {op} row"));
        assert_eq!(mixed["id"], format!("{op}/cpu/bf16-autocast/2x16"));
        assert_eq!(mixed["autocast"], "bf16");
        assert!(mixed["last_loss"].as_f64().unwrap().is_finite() && mixed["tokens_per_s"].as_f64().unwrap() > 0.0, "{mixed}");
        assert!(mixed.get("mfu").is_none(), "no MFU without a known GPU peak");
    }
    assert!(std::fs::read_to_string(dir.join("roofline.svg")).unwrap().contains("<svg"));

    // side by side from saved rows, against a fake other engine twice as slow on one id
    let id = printed.iter().find(|r| r["op"] == "softmax_fwd" && r["default"] == true).unwrap();
    let mut other = id.clone();
    other["variant"] = "torch".into();
    other["median_ms"] = (id["median_ms"].as_f64().unwrap() * 2.0).into();
    other.as_object_mut().unwrap().remove("default");
    let other_file = dir.join("torch.jsonl");
    std::fs::write(&other_file, format!("# env\n{other}\n")).unwrap();
    let o = kiln(&["bench", "--from", out.to_str().unwrap(), "--compare", other_file.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cmp: Vec<serde_json::Value> = rows(&String::from_utf8_lossy(&o.stdout)).into_iter().filter(|r| r.get("compare").is_some()).collect();
    assert_eq!(cmp.len(), 1);
    assert_eq!(cmp[0]["compare"]["id"], id["id"]);
    assert!((cmp[0]["compare"]["speedup"].as_f64().unwrap() - 2.0).abs() < 0.01);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `kiln bench`'s training-step row and `kiln train`'s `step_ms` time the same work: both run the
/// trainer's loop (`Trainer::run`), and the row's config, written as a model directory and trained
/// by `kiln train` at the row's batch × seq, has the same parameters, vocabulary and tokens per step.
/// (A config directory's tokenizer aims at the config's vocab_size: a 512-token default vocabulary
/// made `kiln train` time a smaller model than the bench, 1.45× apart.)
#[test]
fn train_step_rows_and_kiln_train_measure_the_same_work() {
    let dir = tmp("same-step");
    let o = kiln(&["bench", "--quick", "--json", "--op", "train_step_gpt"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = rows(&String::from_utf8_lossy(&o.stdout));
    let row = printed.iter().find(|r| r["op"] == "train_step_gpt" && r["dtype"] == "f32").expect("an f32 train_step_gpt row");
    let mut cfg = row["config"].clone();
    cfg["model_type"] = "gpt2".into();
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
    let (b, t) = (row["batch"].as_u64().unwrap().to_string(), row["seq"].as_u64().unwrap().to_string());
    let run = dir.join("run");
    let o = kiln(&["train", "--model", model.to_str().unwrap(), "--batch", &b, "--seq", &t, "--steps", "2", "--json", "--sample-tokens", "0", "--eval-every", "0", "--out", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = rows(&String::from_utf8_lossy(&o.stdout));
    let head = lines.iter().find(|l| l.get("params").is_some()).expect("kiln train --json describes the run first");
    assert_eq!(head["params"], row["params"], "{head}\n{row}");
    assert_eq!(head["vocab_size"], cfg["vocab_size"]);
    assert_eq!(head["tokens_per_step"].as_u64(), Some(row["batch"].as_u64().unwrap() * row["seq"].as_u64().unwrap()));
    assert_eq!(lines.iter().filter(|l| l["step_ms"].as_f64().is_some_and(|ms| ms > 0.0)).count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tmp("bad");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"id\": 1}\n").unwrap();
    let o = kiln(&["bench", "--from", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.jsonl:1"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = kiln(&["bench", "--quick", "--op", "softmax_fwd", "--compare", dir.join("missing.jsonl").to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("cannot read"));
    assert!(o.stdout.is_empty(), "a bad --compare file must fail before measuring");
    let o = kiln(&["bench", "--quick", "--op", "softmx"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--op softmx: matches no op"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = kiln(&["bench", "--quick", "--variant", "avx3"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no such variant"));
    let o = kiln(&["bench", "--quick", "--dtypes", "f8"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("unknown dtype"));
    let o = kiln(&["bench", "--device", "cuda:7", "--quick"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).to_lowercase().contains("cuda"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_op_filter_is_a_substring_of_op_names() {
    let o = kiln(&["bench", "--quick", "--json", "--op", "bwd", "--variant", "scalar,kiln"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = rows(&String::from_utf8_lossy(&o.stdout));
    let ops: std::collections::BTreeSet<&str> = r.iter().map(|r| r["op"].as_str().unwrap()).collect();
    for op in ["gelu_bwd", "gelu_tanh_bwd", "layer_norm_bwd", "softmax_bwd", "cross_entropy_bwd", "attention_bwd", "attention_fwd_bwd"] {
        assert!(ops.contains(op), "--op bwd lost {op}: {ops:?}");
    }
    assert!(ops.iter().all(|op| op.contains("bwd") || ["copy", "matmul"].contains(op)), "{ops:?}");
}

#[test]
fn filters_select_ops_and_variants() {
    let o = kiln(&["bench", "--quick", "--json", "--op", "softmax_fwd", "--variant", "composed"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = rows(&String::from_utf8_lossy(&o.stdout));
    let ops: Vec<(&str, &str)> = r.iter().map(|r| (r["op"].as_str().unwrap(), r["variant"].as_str().unwrap())).collect();
    // the ceilings always run; the op filter keeps softmax_fwd only, the variant filter its composed variant
    assert!(ops.contains(&("softmax_fwd", "composed")), "{ops:?}");
    assert!(ops.iter().all(|(op, v)| ["copy", "matmul"].contains(op) || (*op == "softmax_fwd" && *v == "composed")), "{ops:?}");
}
