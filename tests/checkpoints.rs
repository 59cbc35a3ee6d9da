//! Checkpoints as one unit (issue 18): the run directory's layout and manifest, torn and foreign
//! sets refused, `--keep`, `--overwrite` and `--resume` rules, stale temporaries, all-ignored
//! labels, and the crash test: `kiln train` killed at every file operation of its checkpoint
//! writes (through the `KILN_TEST_KILL_AT` hook) always leaves a complete checkpoint, and resuming
//! from it ends bit-identical to an uninterrupted run.
mod common;
use common::snapshot;
use kiln::model::data::{Batch, CausalLmBatcher, DataPosition, IGNORE_INDEX};
use kiln::model::model::LoadedModel;
use kiln::model::run_dir::{self, MANIFEST_FILE};
use kiln::model::sched::LrSchedule;
use kiln::model::tokenize::{self, SpecialIds};
use kiln::model::trainer::{BatchSource, TrainObserver, TrainOptions, Trainer};
use kiln::model::{AdamWConfig, ModelConfig, ParamStore};
use kiln::tensor::Tensor;
use kiln::{DType, Device, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).envs(env.iter().copied()).output().expect("run kiln")
}

fn kiln(args: &[&str]) -> Output {
    kiln_env(args, &[])
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_fails(o: &Output, want: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected an error exit mentioning '{want}': {e}");
    assert!(e.contains(want), "stderr does not mention '{want}': {e}");
    assert!(!e.contains("panicked"), "panicked: {e}");
}

/// 30 kB of real text (read in place), as a file for `--data`.
fn data_file(d: &Path) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/tinyshakespeare.txt");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("these tests read {}: {e}", p.display()));
    let f = d.join("data.txt");
    std::fs::write(&f, &text[..30_000]).unwrap();
    f
}

/// `kiln train` on `data` with a small GPT and a constant schedule (steps and the rest in `extra`).
fn train(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let common = ["train", "--data", data.to_str().unwrap(), "--batch", "4", "--seq", "32", "--vocab", "300", "--eval-every", "0", "--sample-tokens", "0", "--json", "--schedule", "constant", "--warmup", "0"];
    kiln_env(&[&common[..], extra].concat(), env)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn manifest(dir: &Path) -> run_dir::Manifest {
    serde_json::from_str(&std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap()).unwrap()
}

fn load_err(dir: &Path) -> String {
    match LoadedModel::from_dir(dir, 0, Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let o = Command::new("cp").arg("-a").arg(from).arg(to).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_run_directory_is_an_hf_directory_of_verified_checkpoints() {
    let d = tmp("layout");
    let data = data_file(&d);
    let out = d.join("run");
    let o = train(&data, &["--steps", "5", "--ckpt-every", "1", "--keep", "2", "--out", out.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // the newest two checkpoints, `current`, the top-level links, the loss curve; no temporaries
    assert_eq!(
        names(&out),
        ["checkpoint-4", "checkpoint-5", "config.json", "current", MANIFEST_FILE, "loss.svg", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_state.safetensors"]
    );
    assert_eq!(std::fs::read_link(out.join("current")).unwrap(), Path::new("checkpoint-5"));
    assert_eq!(std::fs::read_link(out.join("model.safetensors")).unwrap(), Path::new("current/model.safetensors"));
    let m = manifest(&out.join("checkpoint-5"));
    assert_eq!((m.step, m.format.as_str(), m.files.len()), (5, "kiln-checkpoint", 5));
    for (f, dig) in &m.files {
        assert_eq!(std::fs::metadata(out.join("checkpoint-5").join(f)).unwrap().len(), dig.bytes, "{f}");
        assert_eq!(dig.sha256.len(), 64, "{f}");
    }
    assert_eq!(manifest(&out.join("checkpoint-4")).run_id, m.run_id, "one run");
    let r = run_dir::resolve(&out).unwrap();
    assert_eq!((r.dir, r.manifest.map(|m| m.step)), (out.join("checkpoint-5"), Some(5)));
    // the run directory, the current checkpoint and an older one all load
    let a = LoadedModel::from_dir(&out, 0, Device::Cpu).unwrap();
    let b = LoadedModel::from_dir(out.join("checkpoint-5"), 0, Device::Cpu).unwrap();
    let c = LoadedModel::from_dir(out.join("checkpoint-4"), 0, Device::Cpu).unwrap();
    let w = |l: &LoadedModel| l.store.params().iter().map(|p| p.tensor().to_vec::<f32>().unwrap()).collect::<Vec<_>>();
    assert_eq!(w(&a), w(&b));
    assert_ne!(w(&a), w(&c), "checkpoint-4 holds the weights of step 4");
    // --keep 0 keeps all of a run's checkpoints
    let all = d.join("all");
    let o = train(&data, &["--steps", "3", "--ckpt-every", "1", "--keep", "0", "--out", all.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(["checkpoint-1", "checkpoint-2", "checkpoint-3"].iter().all(|c| all.join(c).is_dir()), "{:?}", names(&all));
    std::fs::remove_dir_all(&d).unwrap();
}

/// A set whose files do not belong together is refused with the file named, by loading and by
/// `--resume`; without its manifest it loads as a plain directory.
#[test]
fn torn_or_foreign_sets_are_refused() {
    let d = tmp("torn");
    let data = data_file(&d);
    let out = d.join("run");
    let o = train(&data, &["--steps", "4", "--ckpt-every", "2", "--keep", "0", "--out", out.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let case = |tag: &str, damage: &dyn Fn(&Path), want: &str| {
        let c = d.join(tag);
        copy_dir(&out, &c);
        damage(&c.join("checkpoint-4"));
        let e = load_err(&c);
        assert!(e.contains(want) && e.contains("torn"), "{tag}: {e}");
        let o = train(&data, &["--steps", "6", "--resume", c.to_str().unwrap()], &[]);
        assert_fails(&o, want);
        let o = kiln(&["generate", "--model", c.to_str().unwrap(), "--prompt", "a", "--max-new-tokens", "2"]);
        assert_fails(&o, want);
    };
    // weights of step 2 beside the training state of step 4 (the torn set of the issue)
    case("mixed", &|c| std::fs::copy(c.parent().unwrap().join("checkpoint-2/model.safetensors"), c.join("model.safetensors")).map(|_| ()).unwrap(), "model.safetensors's SHA-256");
    case("grown", &|c| std::fs::write(c.join("tokenizer.json"), [std::fs::read(c.join("tokenizer.json")).unwrap(), b" ".to_vec()].concat()).unwrap(), "tokenizer.json has");
    case("missing", &|c| std::fs::remove_file(c.join("training_state.safetensors")).unwrap(), "training_state.safetensors is missing");
    case(
        "flipped",
        &|c| {
            let p = c.join("model.safetensors");
            let mut b = std::fs::read(&p).unwrap();
            let n = b.len();
            b[n - 3] ^= 0x40;
            std::fs::write(&p, b).unwrap();
        },
        "SHA-256",
    );
    // another model's config, listed in the manifest with its digest: the config hash differs
    case(
        "foreign-config",
        &|c| {
            let cfg = c.join("config.json");
            let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
            v["layer_norm_epsilon"] = serde_json::json!(1e-3);
            let text = serde_json::to_string_pretty(&v).unwrap();
            std::fs::write(&cfg, &text).unwrap();
            let mut m = manifest(c);
            let before = m.files["config.json"].sha256.clone();
            m.files.get_mut("config.json").unwrap().bytes = text.len() as u64;
            // a digest computed the way the writer does (sha256sum is on every CI machine)
            let o = Command::new("sha256sum").arg(&cfg).output().unwrap();
            m.files.get_mut("config.json").unwrap().sha256 = String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string();
            assert_ne!(before, m.files["config.json"].sha256);
            std::fs::write(c.join(MANIFEST_FILE), serde_json::to_string(&m).unwrap()).unwrap();
        },
        "config.json's hash",
    );
    // a model file the manifest does not list
    case(
        "unlisted",
        &|c| {
            let mut m = manifest(c);
            m.files.remove("tokenizer.json");
            std::fs::write(c.join(MANIFEST_FILE), serde_json::to_string(&m).unwrap()).unwrap();
        },
        "tokenizer.json is not listed",
    );
    // without the manifest, the files load as they are (as a directory transformers wrote)
    let plain = d.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(out.join("checkpoint-2").join(f), plain.join(f)).unwrap();
    }
    LoadedModel::from_dir(&plain, 0, Device::Cpu).unwrap();
    std::fs::remove_dir_all(&d).unwrap();
}

/// `--out` over a run refuses without `--overwrite`; with it, the other run's checkpoints go once
/// the new run's first one is current. Continuing an earlier checkpoint into its run directory
/// would drop the later ones: refused unless `--overwrite`.
#[test]
fn overwrite_and_resume_rules() {
    let d = tmp("rules");
    let data = data_file(&d);
    let out = d.join("run");
    let o = train(&data, &["--steps", "4", "--ckpt-every", "2", "--keep", "0", "--out", out.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = manifest(&out.join("checkpoint-4")).run_id;
    let before = snapshot(&out);
    assert_fails(&train(&data, &["--steps", "2", "--out", out.to_str().unwrap()], &[]), "--overwrite");
    assert!(snapshot(&out) == before, "a refused run changed the directory");
    // an earlier checkpoint into the same run directory
    let r2 = out.join("checkpoint-2");
    assert_fails(&train(&data, &["--steps", "6", "--resume", r2.to_str().unwrap()], &[]), "not the current checkpoint");
    assert!(snapshot(&out) == before);
    // ... elsewhere it continues
    let other = d.join("branch");
    let o = train(&data, &["--steps", "3", "--resume", r2.to_str().unwrap(), "--out", other.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(manifest(&other.join("checkpoint-3")).run_id, first, "a continued run keeps its id");
    assert!(snapshot(&out) == before, "continuing elsewhere changed the source");
    // ... or in place with --overwrite, which drops the later checkpoint-4
    let o = train(&data, &["--steps", "3", "--resume", r2.to_str().unwrap(), "--overwrite", "--keep", "0"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(run_dir::current_name(&out).as_deref(), Some("checkpoint-3"));
    assert!(!out.join("checkpoint-4").exists() && out.join("checkpoint-2").is_dir(), "{:?}", names(&out));
    // a new run with --overwrite: the old run's checkpoints are gone after its first checkpoint
    let o = train(&data, &["--steps", "1", "--seed", "9", "--out", out.to_str().unwrap(), "--overwrite"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: Vec<String> = run_dir::checkpoint_dirs(&out).into_iter().map(|c| c.manifest.unwrap().run_id).collect();
    assert_eq!(ids.len(), 1, "{:?}", names(&out));
    assert_ne!(ids[0], first);
    std::fs::remove_dir_all(&d).unwrap();
}

/// Temporaries of dead processes are removed when a checkpoint is written; a live process's stay.
#[test]
fn stale_temporaries_of_dead_processes_are_cleaned() {
    let d = tmp("stale");
    let data = data_file(&d);
    let out = d.join("run");
    std::fs::create_dir_all(&out).unwrap();
    let dead = {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let live = std::process::id();
    std::fs::create_dir_all(out.join(format!(".tmp-checkpoint-7.{dead}"))).unwrap();
    std::fs::write(out.join(format!(".tmp-checkpoint-7.{dead}/model.safetensors")), b"partial").unwrap();
    std::fs::write(out.join(format!(".loss.svg.tmp.{dead}")), b"partial").unwrap();
    std::fs::create_dir_all(out.join(format!(".old-checkpoint-3.{dead}"))).unwrap();
    std::fs::create_dir_all(out.join(format!(".tmp-checkpoint-7.{live}"))).unwrap();
    let o = train(&data, &["--steps", "1", "--out", out.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let hidden: Vec<String> = names(&out).into_iter().filter(|n| n.starts_with('.')).collect();
    assert_eq!(hidden, [format!(".tmp-checkpoint-7.{live}")], "only the live process's temporary stays");
    std::fs::remove_dir_all(&d).unwrap();
}

/// An absurd learning rate with a checkpoint every step: weights of ~1e30 are finite and get a
/// checkpoint; the next step's error names the current checkpoint and the older one kept beside
/// it (`--keep 2`), so the last good weights are not lost.
#[test]
fn a_diverged_run_names_the_checkpoints_it_keeps() {
    let d = tmp("diverge");
    let data = data_file(&d);
    let out = d.join("run");
    let o = train(&data, &["--steps", "2", "--out", out.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train(&data, &["--steps", "40", "--resume", out.to_str().unwrap(), "--lr", "1e30", "--ckpt-every", "1", "--clip", "0"], &[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("stopping") && e.contains("is checkpoint-") && e.contains("left as it was") && e.contains("checkpoints there:"), "{e}");
    let kept = run_dir::checkpoint_dirs(&out);
    assert!(!kept.is_empty() && kept.len() <= 2, "{:?}", names(&out));
    for k in &kept {
        LoadedModel::from_dir(out.join(&k.name), 0, Device::Cpu).unwrap();
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// A batch source whose update `skip` (0-based) has every label ignored.
struct Masked {
    inner: CausalLmBatcher,
    calls: u64,
    skip: u64,
}

impl BatchSource for Masked {
    fn next_batch(&mut self) -> Result<Batch> {
        let mut b = self.inner.next_batch()?;
        if self.calls == self.skip {
            b.labels = Tensor::from_vec(vec![IGNORE_INDEX; b.labels.elem_count()], b.labels.shape())?;
        }
        self.calls += 1;
        Ok(b)
    }
    fn position(&self) -> DataPosition {
        self.inner.position()
    }
    fn set_position(&mut self, p: &DataPosition) -> Result<()> {
        self.inner.set_position(p)
    }
}

#[derive(Default)]
struct Skips(Vec<(u64, String)>);
impl TrainObserver for Skips {
    fn on_skip(&mut self, step: u64, _micro: usize, why: &str) {
        self.0.push((step, why.to_string()));
    }
}

/// All labels -100: the loss is NaN, as PyTorch's; the trainer skips that update, says so, and
/// leaves the weights as they were (no optimizer step, no weight decay).
#[test]
fn all_ignored_labels_give_nan_and_the_update_is_skipped() {
    let text = "It was the best of times, it was the worst of times. ".repeat(80);
    let tok = tokenize::train_bpe_from_texts(&[&text], 300).unwrap();
    let mut cfg = ModelConfig::preset("gpt2-tiny").unwrap();
    tokenize::sync_config(&mut cfg, &tok);
    let tokens = kiln::model::data::encode_stream(&tok, &text, SpecialIds::of(&tok).eot).unwrap();
    let adamw = AdamWConfig { lr: 1e-3, weight_decay: 0.1, ..Default::default() };
    let mut t = Trainer::new(cfg, ParamStore::new(3, DType::F32, Device::Cpu), Some(&tok), adamw).unwrap();
    let mut data = Masked { inner: CausalLmBatcher::new(tokens.clone(), 2, 16, 1).unwrap(), calls: 0, skip: 1 };
    // the loss of such a batch is NaN
    let mut probe = CausalLmBatcher::new(tokens, 2, 16, 1).unwrap().next_batch().unwrap();
    probe.labels = Tensor::from_vec(vec![IGNORE_INDEX; probe.labels.elem_count()], probe.labels.shape()).unwrap();
    assert!(t.model.loss(&probe, &kiln::model::nn::ForwardCtx::eval()).unwrap().to_scalar().unwrap().is_nan());
    let weights = |t: &Trainer| t.store.params().iter().map(|p| p.tensor().to_vec::<f32>().unwrap()).collect::<Vec<_>>();
    let opts = |steps| TrainOptions {
        steps,
        schedule: LrSchedule::constant(1e-3),
        adamw,
        clip: 1.0,
        accum: 1,
        seed: 1,
        eval_every: 0,
        eval_batches: 1,
        ckpt_every: 0,
        out: None,
        keep: 2,
        overwrite: false,
        compute_dtype: DType::F32,
    };
    let mut skips = Skips::default();
    t.run(&opts(1), &mut data, None, &mut skips).unwrap();
    let after_one = weights(&t);
    t.run(&opts(2), &mut data, None, &mut skips).unwrap();
    assert_eq!(t.step, 2);
    assert!(weights(&t) == after_one, "a skipped update changed the weights");
    assert_eq!(skips.0.len(), 1);
    assert!(skips.0[0].0 == 2 && skips.0[0].1.contains("-100"), "{:?}", skips.0);
    assert_eq!(t.losses.len(), 1, "no loss is logged for the skipped update");
    t.run(&opts(3), &mut data, None, &mut skips).unwrap();
    assert!(weights(&t) != after_one && t.losses.len() == 2);
}

/// Kill points are counted with `KILN_TEST_KILL_AT=list`; the run is then killed (SIGKILL) at
/// each one. Every time the directory holds a complete checkpoint (or, before the first, nothing
/// that loads), and continuing from it ends with the uninterrupted run's weights, bit for bit.
#[test]
fn crash_at_every_checkpoint_file_operation_leaves_a_complete_checkpoint() {
    let d = tmp("crash");
    let data = data_file(&d);
    let args = |out: &Path, steps: &str| vec!["--steps".to_string(), steps.to_string(), "--ckpt-every".into(), "2".into(), "--keep".into(), "1".into(), "--out".into(), out.display().to_string()];
    let run = |out: &Path, extra: &[&str], env: &[(&str, &str)]| {
        let a = args(out, "6");
        let mut all: Vec<&str> = a.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        train(&data, &all, env)
    };
    let full = d.join("full");
    let o = run(&full, &[], &[("KILN_TEST_KILL_AT", "list")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let points = stderr(&o).lines().filter(|l| l.starts_with("kiln fault point")).count();
    assert!(points >= 40, "3 checkpoints should have dozens of file operations, found {points}");
    let want = std::fs::read(full.join("model.safetensors")).unwrap();
    for k in 1..=points {
        let out = d.join(format!("k{k}"));
        let o = run(&out, &[], &[("KILN_TEST_KILL_AT", &k.to_string())]);
        assert_eq!(o.status.code(), None, "kill point {k}: the run was not killed: {}", stderr(&o));
        // a complete checkpoint, or none yet (nothing loads from the directory)
        let resolved = run_dir::resolve(&out).unwrap_or_else(|e| panic!("kill point {k}: {e}"));
        let o = match resolved.manifest {
            Some(m) if m.step == 6 => {
                // killed after the last checkpoint became current (while pruning): nothing to
                // continue; what the dead process left is cleaned as the next writer would
                run_dir::clean_stale(&out).unwrap();
                None
            }
            Some(m) => {
                LoadedModel::from_dir(&out, 0, Device::Cpu).unwrap_or_else(|e| panic!("kill point {k}: {e}"));
                assert!(m.step >= 2 && m.step % 2 == 0, "kill point {k}: step {}", m.step);
                let a = args(&out, "6");
                let mut all = vec!["--resume", out.to_str().unwrap()];
                all.extend(a[..6].iter().map(String::as_str));
                Some(train(&data, &all, &[]))
            }
            None => {
                assert!(LoadedModel::from_dir(&out, 0, Device::Cpu).is_err(), "kill point {k}: no checkpoint, yet the directory loads");
                Some(run(&out, &[], &[]))
            }
        };
        if let Some(o) = o {
            assert!(o.status.success(), "kill point {k}: continuing failed: {}", stderr(&o));
        }
        assert!(std::fs::read(out.join("model.safetensors")).unwrap() == want, "kill point {k}: the continued run's weights differ from the uninterrupted run's");
        let hidden: Vec<String> = names(&out).into_iter().filter(|n| n.starts_with('.')).collect();
        assert!(hidden.is_empty(), "kill point {k}: temporaries left: {hidden:?}");
        std::fs::remove_dir_all(&out).unwrap();
    }
    std::fs::remove_dir_all(&d).unwrap();
}
