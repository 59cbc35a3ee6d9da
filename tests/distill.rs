//! DistilBERT's distillation ([`kiln::model::distill`], `kiln distill`) on real text
//! (`../shared/data/tinyshakespeare.txt`, read in place): a 4-layer BERT teacher trained here with
//! `kiln train`'s MLM objective; a 2-layer DistilBERT student made from it (its layers are the
//! teacher's 0 and 2, bit for bit) ends with a lower held-out MLM loss when trained with the
//! teacher than the same student trained as long on the MLM loss alone; the teacher is neither
//! changed nor given a gradient; the soft-target and cosine terms match hand computations and
//! central differences; bad teachers and students are refused before anything is written; and
//! `kiln distill --resume` continues a run bit for bit.
mod common;
use common::{shakespeare, snapshot, split};
use kiln::model::config::ModelConfig;
use kiln::model::data::{encode_documents, BertBatcher};
use kiln::model::distill::{cosine_loss, hidden_mse, init_from_teacher, mlm_loss, soft_target_loss, student_config, teacher_layer, Distill, DistillOptions};
use kiln::model::family::Family;
use kiln::model::model::{LoadedModel, Model};
use kiln::model::nn::{ForwardCtx, Linear};
use kiln::model::objective::ObjectiveKind;
use kiln::model::sched::{Decay, LrSchedule};
use kiln::model::tokenize::{self, SpecialIds, Tokenizer};
use kiln::model::train_state::save_checkpoint;
use kiln::model::trainer::{BatchSource, TrainOptions, Trainer};
use kiln::model::{AdamWConfig, ParamStore};
use kiln::tensor::testing::{gradcheck, rand_var};
use kiln::{DType, Device};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::rc::Rc;
use std::sync::OnceLock;

/// Teacher: 4 layers, width 64, trained this many MLM updates of 32 × 32 tokens.
const TEACHER_STEPS: u64 = 150;
/// Student updates in the comparison (with and without the teacher).
const STUDENT_STEPS: u64 = 60;
const BATCH: usize = 32;
const SEQ: usize = 32;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-distill-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(steps: u64, lr: f64, warmup: u64) -> TrainOptions {
    let schedule = LrSchedule { peak_lr: lr, min_lr: lr * 0.1, warmup_steps: warmup, total_steps: steps, decay: Decay::Cosine };
    let adamw = AdamWConfig { lr, weight_decay: 0.01, ..Default::default() };
    TrainOptions { steps, schedule, adamw, clip: 1.0, accum: 1, seed: 5, eval_every: 0, eval_batches: 4, ckpt_every: 0, out: None, keep: 0, overwrite: false, compute_dtype: DType::F32 }
}

/// The trained teacher, written once per test process as an HF directory (config, weights,
/// tokenizer) under `CARGO_TARGET_TMPDIR`, with the texts it was trained and is judged on.
struct Teacher {
    dir: PathBuf,
    tok: Tokenizer,
    cfg: ModelConfig,
    text: String,
}

static TEACHER: OnceLock<Teacher> = OnceLock::new();

/// A 4-layer `BertForMaskedLM` (width 64, 2 heads, feed-forward 256, no dropout, WordPiece vocabulary of 512)
/// trained with the `mlm` objective's batches (single segments; 40% masked, so that a short run
/// learns more than the unigram distribution).
fn teacher() -> &'static Teacher {
    TEACHER.get_or_init(|| {
        let text = shakespeare();
        let (train, _) = split(&text);
        let tok = tokenize::train_wordpiece_from_texts(&[train], 512).unwrap();
        let mut cfg = ModelConfig::preset("bert-tiny").unwrap();
        cfg.set_architecture("BertForMaskedLM");
        if let ModelConfig::Encoder(c) = &mut cfg {
            (c.num_hidden_layers, c.hidden_size, c.intermediate_size) = (4, 64, 256);
            (c.hidden_dropout_prob, c.attention_probs_dropout_prob) = (0.0, 0.0);
        }
        tokenize::sync_config(&mut cfg, &tok);
        let o = opts(TEACHER_STEPS, 3e-3, 15);
        let store = ParamStore::new(3, DType::F32, Device::Cpu);
        let mut t = Trainer::new(cfg.clone(), store.clone(), Some(&tok), o.adamw).unwrap();
        let sp = SpecialIds::of(&tok);
        let mut data = BertBatcher::new(encode_documents(&tok, train).unwrap(), &sp, cfg.vocab_size(), BATCH, SEQ, 1, false).unwrap();
        data.set_mask_prob(0.4).unwrap();
        let t0 = std::time::Instant::now();
        t.run(&o, &mut data, None, &mut ()).unwrap();
        println!("teacher: {TEACHER_STEPS} MLM updates, loss {:.3} -> {:.3}, {:.1} s", t.losses[0].1, t.losses.last().unwrap().1, t0.elapsed().as_secs_f64());
        // in the target's scratch directory (replaced by each run), not left in /tmp per process
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("distill-teacher");
        let _ = std::fs::remove_dir_all(&dir);
        save_checkpoint(&dir, &cfg, &store, Some(&tok), None).unwrap();
        Teacher { dir, tok, cfg, text }
    })
}

fn load_teacher() -> LoadedModel {
    LoadedModel::from_dir(&teacher().dir, 0, Device::Cpu).unwrap()
}

/// Held-out MLM batches (15% masked, as BERT), the same ones on every call.
fn held_out() -> Box<dyn BatchSource> {
    let t = teacher();
    ObjectiveKind::Mlm.batcher(&t.tok, split(&t.text).1, t.cfg.vocab_size(), BATCH, SEQ, 99).unwrap()
}

/// A 2-layer DistilBERT student made from the teacher (layers 0 and 2), trained `steps` updates
/// on the MLM batches, with the teacher (DistilBERT's triple loss) or on its MLM loss alone.
fn train_student(with_teacher: bool, steps: u64) -> (Trainer<'static>, Option<Rc<Distill>>) {
    let t = teacher();
    let cfg = student_config(&t.cfg, Family::DistilBert, 2).unwrap();
    let o = opts(steps, 2e-3, 5);
    let mut tr = Trainer::new(cfg, ParamStore::new(7, DType::F32, Device::Cpu), Some(&t.tok), o.adamw).unwrap();
    let teacher = load_teacher();
    assert_eq!(init_from_teacher(&tr.model, &teacher.model).unwrap(), [(0, 0), (1, 2)]);
    let d = with_teacher.then(|| Rc::new(Distill::new(teacher.model, teacher.store, &tr.model, DistillOptions::default()).unwrap()));
    if let Some(d) = &d {
        tr.objective = Box::new(d.clone());
    }
    let mut data = ObjectiveKind::Mlm.batcher(&t.tok, split(&t.text).0, t.cfg.vocab_size(), BATCH, SEQ, 11).unwrap();
    tr.run(&o, data.as_mut(), None, &mut ()).unwrap();
    (tr, d)
}

/// The test: after the same updates on the same batches from the same start, the
/// student distilled from the teacher has a lower held-out MLM loss than the one trained without it.
#[test]
fn a_distilled_student_beats_the_same_student_trained_without_the_teacher() {
    let t0 = std::time::Instant::now();
    let teacher_loss = mlm_loss(&load_teacher().model, held_out().as_mut(), 16).unwrap();
    let start = {
        let cfg = student_config(&teacher().cfg, Family::DistilBert, 2).unwrap();
        let m = Model::build(&cfg, &ParamStore::new(7, DType::F32, Device::Cpu)).unwrap();
        init_from_teacher(&m, &load_teacher().model).unwrap();
        mlm_loss(&m, held_out().as_mut(), 16).unwrap()
    };
    let (with, _) = train_student(true, STUDENT_STEPS);
    let (without, _) = train_student(false, STUDENT_STEPS);
    let l_with = mlm_loss(&with.model, held_out().as_mut(), 16).unwrap();
    let l_without = mlm_loss(&without.model, held_out().as_mut(), 16).unwrap();
    println!(
        "held-out MLM loss after {STUDENT_STEPS} updates: distilled student {l_with:.4}, MLM-only student {l_without:.4} (student at start {start:.4}, teacher {teacher_loss:.4}); {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(l_with < l_without, "the distilled student's held-out MLM loss {l_with:.4} is not below the MLM-only student's {l_without:.4}");
    assert!(l_with < start, "distillation did not lower the student's held-out MLM loss: {start:.4} -> {l_with:.4}");
}

/// DistilBERT's initialisation: student layer i is teacher layer 2i, the embeddings and the MLM
/// head are the teacher's, bit for bit, before any training.
#[test]
fn student_layers_start_as_every_other_teacher_layer() {
    let teacher = load_teacher();
    let cfg = student_config(&teacher.cfg, Family::DistilBert, 2).unwrap();
    assert_eq!(cfg.architecture(), Some("DistilBertForMaskedLM"));
    let store = ParamStore::new(1, DType::F32, Device::Cpu);
    let student = Model::build(&cfg, &store).unwrap();
    init_from_teacher(&student, &teacher.model).unwrap();
    let bits = |s: &ParamStore, name: &str| s.get(name).unwrap_or_else(|| panic!("no {name}")).tensor().to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let mut pairs: Vec<(String, String)> = vec![
        ("distilbert.embeddings.word_embeddings.weight".into(), "bert.embeddings.word_embeddings.weight".into()),
        ("distilbert.embeddings.position_embeddings.weight".into(), "bert.embeddings.position_embeddings.weight".into()),
        ("distilbert.embeddings.LayerNorm.weight".into(), "bert.embeddings.LayerNorm.weight".into()),
        ("vocab_transform.weight".into(), "cls.predictions.transform.dense.weight".into()),
        ("vocab_layer_norm.bias".into(), "cls.predictions.transform.LayerNorm.bias".into()),
        ("distilbert.embeddings.LayerNorm.bias".into(), "bert.embeddings.LayerNorm.bias".into()),
        ("vocab_transform.bias".into(), "cls.predictions.transform.dense.bias".into()),
        ("vocab_layer_norm.weight".into(), "cls.predictions.transform.LayerNorm.weight".into()),
        ("vocab_projector.bias".into(), "cls.predictions.bias".into()),
    ];
    let names = [
        ("attention.q_lin", "attention.self.query"),
        ("attention.k_lin", "attention.self.key"),
        ("attention.v_lin", "attention.self.value"),
        ("attention.out_lin", "attention.output.dense"),
        ("sa_layer_norm", "attention.output.LayerNorm"),
        ("ffn.lin1", "intermediate.dense"),
        ("ffn.lin2", "output.dense"),
        ("output_layer_norm", "output.LayerNorm"),
    ];
    for i in 0..2 {
        for (s, t) in names {
            for w in ["weight", "bias"] {
                pairs.push((format!("distilbert.transformer.layer.{i}.{s}.{w}"), format!("bert.encoder.layer.{}.{t}.{w}", 2 * i)));
            }
        }
    }
    for (s, t) in &pairs {
        assert!(bits(&store, s) == bits(&teacher.store, t), "student {s} is not teacher {t}");
    }
    // and not the odd layers (the copy is of the right layers, not of any)
    assert!(bits(&store, "distilbert.transformer.layer.1.ffn.lin1.weight") != bits(&teacher.store, "bert.encoder.layer.1.intermediate.dense.weight"));
    assert_eq!(store.len(), pairs.len(), "student parameters not covered: {:?}", store.names());
}

/// The teacher runs without a graph, its parameters are frozen, get no gradient, and are bit for
/// bit what they were after the student was trained with it.
#[test]
fn the_teacher_is_frozen_and_unchanged() {
    let (tr, d) = train_student(true, 6);
    let d = d.unwrap();
    let file = kiln::model::st_io::read_safetensors(teacher().dir.join("model.safetensors")).unwrap();
    let saved: std::collections::HashMap<String, Vec<f32>> = file.into_iter().map(|(n, t)| (n, t.to_vec::<f32>().unwrap())).collect();
    let params = d.teacher_store.params();
    assert!(!params.is_empty());
    for p in &params {
        assert!(p.is_frozen() && !p.tensor().requires_grad(), "teacher {} is trainable", p.name());
        assert!(p.grad().is_none(), "teacher {} has a gradient", p.name());
        if let Some(want) = saved.get(p.name()) {
            assert!(p.tensor().to_vec::<f32>().unwrap() == *want, "teacher {} changed", p.name());
        }
    }
    // the trainer updates the student's parameters only
    let trained = tr.trainable();
    assert_eq!(trained.len(), tr.store.len());
    assert!(trained.iter().all(|p| d.teacher_store.get(p.name()).is_none()), "the trainer trains a teacher parameter");
    let b = held_out().next_batch().unwrap();
    let (h, logits) = d.teacher_outputs(&b, &ForwardCtx::train(1)).unwrap();
    assert!(!h.requires_grad() && !logits.requires_grad(), "the teacher's outputs carry a graph");
    // its outputs are eval-mode (deterministic whatever the student's context)
    let (_, again) = d.teacher_outputs(&b, &ForwardCtx::train(2)).unwrap();
    assert!(logits.to_vec::<f32>().unwrap() == again.to_vec::<f32>().unwrap());
}

/// The soft-target term is T²·KL(softmax(t/T) ‖ softmax(s/T)) averaged over rows (a hand
/// computation in f64), zero for equal logits, with the gradient of central differences; the
/// cosine term likewise.
#[test]
fn soft_target_and_cosine_terms_match_hand_computations_and_gradchecks() {
    let (n, v, temp) = (3, 5, 2.0);
    let s = rand_var(11, &[n, v]);
    let t = rand_var(12, &[n, v]).mul_scalar(3.0).unwrap().detach();
    let got = soft_target_loss(&s, &t, temp).unwrap().to_scalar().unwrap();
    let (sv, tv) = (s.to_vec_f64().unwrap(), t.to_vec_f64().unwrap());
    let softmax = |row: &[f64]| {
        let e: Vec<f64> = row.iter().map(|x| (x / temp).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|x| x / z).collect::<Vec<_>>()
    };
    let mut want = 0.0;
    for r in 0..n {
        let (p, q) = (softmax(&tv[r * v..(r + 1) * v]), softmax(&sv[r * v..(r + 1) * v]));
        want += p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum::<f64>();
    }
    want *= temp * temp / n as f64;
    println!("soft-target term {got:.12} vs hand computation {want:.12}");
    assert!(want > 0.0 && (got - want).abs() < 1e-12 * want.max(1.0), "soft-target loss {got} vs hand computation {want}");
    assert!(soft_target_loss(&t, &t, temp).unwrap().to_scalar().unwrap().abs() < 1e-12);
    gradcheck("soft_target_loss", &[s.clone()], |x| soft_target_loss(&x[0], &t, temp)).unwrap();
    gradcheck("soft_target_loss T=1", &[s], |x| soft_target_loss(&x[0], &t, 1.0)).unwrap();

    let (x, y) = (rand_var(21, &[4, 6]), rand_var(22, &[4, 6]).detach());
    let got = cosine_loss(&x, &y).unwrap().to_scalar().unwrap();
    let (xv, yv) = (x.to_vec_f64().unwrap(), y.to_vec_f64().unwrap());
    let mut want = 0.0;
    for r in 0..4 {
        let (a, b) = (&xv[r * 6..(r + 1) * 6], &yv[r * 6..(r + 1) * 6]);
        let dot: f64 = a.iter().zip(b).map(|(p, q)| p * q).sum();
        let (na, nb): (f64, f64) = (a.iter().map(|p| p * p).sum(), b.iter().map(|p| p * p).sum());
        want += 1.0 - dot / ((na + 1e-12) * (nb + 1e-12)).sqrt();
    }
    assert!((got - want / 4.0).abs() < 1e-12, "cosine loss {got} vs {}", want / 4.0);
    gradcheck("cosine_loss", &[x], |a| cosine_loss(&a[0], &y)).unwrap();
    assert!(DistillOptions { temperature: 0.0, ..Default::default() }.check().is_err());
    assert!(DistillOptions { alpha_ce: 0.0, alpha_mlm: 0.0, alpha_cos: 0.0, ..Default::default() }.check().is_err());
    assert_eq!((0..6).map(|i| teacher_layer(i, 6, 12)).collect::<Vec<_>>(), [0, 2, 4, 6, 8, 10]);
    assert_eq!((0..3).map(|i| teacher_layer(i, 3, 3)).collect::<Vec<_>>(), [0, 1, 2]);
}

/// TinyBERT's hidden-state term: Σ_m MSE(W·s_m + b, t_{m·L/N}) over the embeddings' output and
/// each layer's, at the chosen positions only, against a hand computation; the projection gets a
/// gradient, the teacher's states none.
#[test]
fn hidden_state_term_matches_a_hand_computation() {
    let store = ParamStore::new(3, DType::F32, Device::Cpu);
    let proj = Linear::new(&store, "fit_dense", 4, 6, true, 0.5).unwrap();
    store.get("fit_dense.bias").unwrap().assign(&kiln::Tensor::randn(9, &[6], 0.0, 1.0, DType::F32, Device::Cpu).unwrap()).unwrap();
    let r = |seed, c: usize| kiln::Tensor::randn(seed, &[2, 3, c], 0.0, 1.0, DType::F32, Device::Cpu).unwrap();
    let s: Vec<_> = (0..3).map(|i| r(10 + i, 4).var()).collect(); // N = 2 layers
    let t: Vec<_> = (0..5).map(|i| r(20 + i, 6)).collect(); // L = 4 layers
    let rows = [0i64, 2, 3, 5];
    let got = hidden_mse(&s, &t, &rows, &proj).unwrap();
    let (w, b) = (store.get("fit_dense.weight").unwrap().tensor().to_vec::<f32>().unwrap(), store.get("fit_dense.bias").unwrap().tensor().to_vec::<f32>().unwrap());
    let mut want = 0.0f64;
    for (m, g) in [(0, 0), (1, 2), (2, 4)] {
        let (sv, tv) = (s[m].to_vec::<f32>().unwrap(), t[g].to_vec::<f32>().unwrap());
        let mut sum = 0.0f64;
        for &row in &rows {
            let row = row as usize;
            for o in 0..6 {
                let x: f64 = b[o] as f64 + (0..4).map(|i| w[o * 4 + i] as f64 * sv[row * 4 + i] as f64).sum::<f64>();
                sum += (x - tv[row * 6 + o] as f64).powi(2);
            }
        }
        want += sum / (rows.len() * 6) as f64;
    }
    let g = got.to_scalar().unwrap();
    assert!((g - want).abs() < 1e-5 * want, "hidden-state MSE {g} vs hand computation {want}");
    got.backward().unwrap();
    assert!(store.get("fit_dense.weight").unwrap().grad().is_some(), "the projection got no gradient");
    assert!(s[1].grad().is_some() && t.iter().all(|x| x.grad().is_none()));
    // a position outside `rows` does not count: changing it leaves the term as it was
    let mut moved = s[2].to_vec::<f32>().unwrap();
    moved[4..8].iter_mut().for_each(|x| *x += 5.0); // position 1
    let s2 = vec![s[0].clone(), s[1].clone(), kiln::Tensor::from_vec(moved, &[2, 3, 4]).unwrap()];
    assert_eq!(hidden_mse(&s2, &t, &rows, &proj).unwrap().to_scalar().unwrap(), g);
}

// ------------------------------------------------------------------------------ the CLI ----

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("run kiln")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The first 120 kB of the training text (each CLI run tokenizes its --data).
fn small_data(d: &Path) -> PathBuf {
    let text = &teacher().text;
    let cut = text.char_indices().map(|(i, _)| i).find(|&i| i >= 120_000).unwrap();
    let p = d.join("data.txt");
    std::fs::write(&p, &text[..cut]).unwrap();
    p
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn loss_lines(o: &Output) -> Vec<(u64, String)> {
    json_lines(o).into_iter().filter(|v| v.get("loss").is_some()).map(|v| (v["step"].as_u64().unwrap(), format!("{}", v["loss"]))).collect()
}

/// Bad teachers and students: a clear error, a non-zero exit, and the `--out` run directory
/// (given with --overwrite) exactly as it was.
#[test]
fn bad_teachers_and_students_are_refused_before_anything_is_written() {
    let d = tmp("bad");
    let t = teacher();
    let data = small_data(&d);
    // an earlier run in --out, which a failed command must leave alone
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("config.json"), "{\"model_type\": \"bert\"}").unwrap();
    std::fs::write(out.join("model.safetensors"), b"earlier weights").unwrap();
    let before = snapshot(&out);
    // a teacher without an MLM head (a sequence classifier over the same body and tokenizer)
    let cls = d.join("classifier");
    let mut cfg = t.cfg.clone();
    cfg.set_architecture("BertForSequenceClassification");
    let store = ParamStore::new(1, DType::F32, Device::Cpu);
    Model::build(&cfg, &store).unwrap();
    save_checkpoint(&cls, &cfg, &store, Some(&t.tok), None).unwrap();
    // a student whose vocabulary is not the teacher's
    let wide = d.join("wide");
    std::fs::create_dir_all(&wide).unwrap();
    let mut scfg = student_config(&t.cfg, Family::DistilBert, 2).unwrap();
    scfg.set_vocab_size(t.cfg.vocab_size() + 7);
    scfg.save(wide.join("config.json")).unwrap();
    // a teacher without weights (config only)
    let bare = d.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    t.cfg.save(bare.join("config.json")).unwrap();
    std::fs::copy(t.dir.join("tokenizer.json"), bare.join("tokenizer.json")).unwrap();
    let (teacher_dir, missing) = (t.dir.to_str().unwrap(), d.join("no-such-teacher"));
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("missing teacher", vec!["--teacher", missing.to_str().unwrap()], "does not exist"),
        ("teacher without an MLM head", vec!["--teacher", cls.to_str().unwrap()], "MLM head"),
        ("teacher without weights", vec!["--teacher", bare.to_str().unwrap()], "no model.safetensors"),
        ("vocabulary mismatch", vec!["--teacher", teacher_dir, "--student", wide.to_str().unwrap()], "vocabulary"),
        ("GPT-2 student", vec!["--teacher", teacher_dir, "--student", "gpt2-tiny"], "not supported"),
        ("unknown student", vec!["--teacher", teacher_dir, "--student", "no-such-preset"], "neither a directory"),
        ("zero temperature", vec!["--teacher", teacher_dir, "--temperature", "0"], "temperature"),
        ("student deeper than the teacher", vec!["--teacher", teacher_dir, "--student", "bert", "--student-layers", "9"], "no deeper"),
    ];
    for (name, args, expect) in cases {
        let mut all = vec!["distill", "--data", data.to_str().unwrap(), "--steps", "2", "--batch", "4", "--seq", "16", "--out", out.to_str().unwrap(), "--overwrite"];
        all.extend(args);
        let o = kiln(&all);
        let err = stderr(&o);
        println!("{name}: {}", err.trim());
        assert!(!o.status.success(), "{name}: succeeded");
        assert!(err.contains(expect), "{name}: expected '{expect}' in: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(snapshot(&out) == before, "{name}: --out changed");
    }
    // --out may not be the teacher
    let o = kiln(&["distill", "--teacher", teacher_dir, "--data", data.to_str().unwrap(), "--steps", "2", "--out", teacher_dir, "--overwrite"]);
    assert!(!o.status.success() && stderr(&o).contains("teacher's directory"), "{}", stderr(&o));
    std::fs::remove_dir_all(d).unwrap();
}

/// `kiln distill` (with TinyBERT's hidden-state term on) for 6 updates equals 3 updates and
/// `--resume` for 3 more (the teacher and the loss weights read from the run), loss for loss and
/// weight for weight, the projection's included; the teacher's directory
/// is untouched; the run reports its student's and teacher's held-out MLM losses.
#[test]
fn a_resumed_distill_run_is_exact() {
    let d = tmp("resume");
    let t = teacher();
    let data = small_data(&d);
    let teacher_before = snapshot(&t.dir);
    let common = ["--data", data.to_str().unwrap(), "--batch", "8", "--seq", "32", "--eval-every", "0", "--json", "--schedule", "constant", "--warmup", "0", "--lr", "1e-3", "--alpha-cos", "0.5", "--alpha-hidden", "0.5"];
    let full = d.join("full");
    let run = |extra: &[&str]| {
        let o = kiln(&[&["distill"][..], &common, extra].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let o = run(&["--teacher", t.dir.to_str().unwrap(), "--steps", "6", "--out", full.to_str().unwrap()]);
    let want = loss_lines(&o);
    assert_eq!(want.len(), 6);
    let lines = json_lines(&o);
    assert_eq!(lines[0]["init"], serde_json::json!([0, 2]), "{}", lines[0]);
    assert_eq!(lines[0]["student"], "DistilBertForMaskedLM");
    let report = lines.iter().find(|v| v.get("eval_mlm_loss").is_some()).expect("a held-out MLM loss line");
    println!("kiln distill: {report}");
    assert!(report["eval_mlm_loss"].as_f64().unwrap().is_finite() && report["teacher_eval_mlm_loss"].as_f64().unwrap().is_finite());
    let part = d.join("part");
    let o = run(&["--teacher", t.dir.to_str().unwrap(), "--steps", "3", "--out", part.to_str().unwrap()]);
    assert_eq!(loss_lines(&o)[..], want[..3]);
    // --resume alone: the teacher and weights come from the run's training state
    let o = run(&["--steps", "6", "--resume", part.to_str().unwrap()]);
    assert_eq!(loss_lines(&o)[..], want[3..], "the resumed losses differ from the uninterrupted run");
    let w = |p: &Path, f: &str| std::fs::read(p.join("current").join(f)).unwrap();
    assert!(w(&full, "model.safetensors") == w(&part, "model.safetensors"), "the resumed run's weights differ from the uninterrupted run's");
    // TinyBERT's projection (--alpha-hidden) is checkpointed with the student and resumed with it
    assert!(w(&full, "distill_projection.safetensors") == w(&part, "distill_projection.safetensors"), "the resumed projection differs");
    // a resumed run with other loss weights would not be the same run
    let o = kiln(&[&["distill"][..], &common, &["--steps", "8", "--resume", part.to_str().unwrap(), "--alpha-ce", "1"]].concat());
    assert!(!o.status.success() && stderr(&o).contains("differs from the resumed run"), "{}", stderr(&o));
    assert!(snapshot(&t.dir) == teacher_before, "the teacher's directory changed");
    std::fs::remove_dir_all(d).unwrap();
}
