//! `kiln distill`: DistilBERT's distillation of a teacher masked LM into a student
//! ([`kiln::model::distill`]), on `kiln train`'s MLM batches, with `kiln train`'s run flags
//! ([`RunArgs`]: progress, evaluation, atomic checkpoints, exact `--resume`).
use super::run::{finish, plan, same_path, split_held_out, Plan, RunArgs};
use clap::Args;
use kiln::model::config::ModelConfig;
use kiln::model::distill::{init_from_teacher, mlm_loss, mlm_parts, student_config, Distill, DistillOptions};
use kiln::model::family::{Family, Task};
use kiln::model::io::entry_exists;
use kiln::model::model::LoadedModel;
use kiln::model::objective::ObjectiveKind;
use kiln::model::params::ParamStore;
use kiln::model::train_state::{load_train_state, MODEL_FILE, TOKENIZER_FILE, TRAIN_STATE_FILE};
use kiln::model::trainer::{Dist, Trainer};
use kiln::model::{limits, run_dir, tokenize, LoadOptions};
use kiln::{DType, Error, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::rc::Rc;

#[derive(Args, Debug)]
pub struct DistillArgs {
    /// The teacher: an HF or kiln run directory of a BERT, RoBERTa or DistilBERT masked LM
    /// (…ForMaskedLM or BertForPreTraining) with its weights and tokenizer.json. With --resume:
    /// by default the teacher the run was started with (its weights must be unchanged).
    #[arg(long, required_unless_present = "resume")]
    pub teacher: Option<PathBuf>,
    /// The student: `distilbert`, `bert` or `roberta` (the teacher's config in that family with
    /// --student-layers layers, initialised from the teacher), a preset (bert-tiny, roberta-tiny,
    /// ...), or an HF directory (its weights if it has them). A student of the teacher's sizes
    /// without weights starts from the teacher's embeddings, MLM head and every other layer.
    #[arg(long, default_value = "distilbert")]
    pub student: String,
    /// Layers of a student made from the teacher or a preset (default: half the teacher's,
    /// rounded up; a preset's own).
    #[arg(long)]
    pub student_layers: Option<usize>,
    /// Start the student from random weights, not from the teacher's layers.
    #[arg(long)]
    pub random_init: bool,
    /// Softmax temperature of the soft targets [default: 2; with --resume the run's].
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Weight of the soft-target term, T²·KL [default: 5; with --resume the run's].
    #[arg(long)]
    pub alpha_ce: Option<f64>,
    /// Weight of the student's MLM loss on the hard labels [default: 2; with --resume the run's].
    #[arg(long)]
    pub alpha_mlm: Option<f64>,
    /// Weight of the cosine loss between the last hidden states [default: 1; with --resume the run's].
    #[arg(long)]
    pub alpha_cos: Option<f64>,
    /// Weight of TinyBERT's hidden-state MSE (every student layer against teacher layer m·L/N,
    /// through a learned projection; 0 = off) [default: 0; with --resume the run's].
    #[arg(long)]
    pub alpha_hidden: Option<f64>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// The student names made from the teacher's config, by family.
const FROM_TEACHER: [(&str, Family); 3] = [("distilbert", Family::DistilBert), ("bert", Family::Bert), ("roberta", Family::Roberta)];

/// What a resumed run recorded: the teacher and the loss's hyper-parameters.
struct Recorded {
    teacher: PathBuf,
    sha256: String,
    opts: DistillOptions,
}

fn recorded(dir: &Path) -> Result<Recorded> {
    let st = load_train_state(dir.join(TRAIN_STATE_FILE))?;
    let d = st.extra.get("caller").and_then(|c| c.get("distill")).ok_or_else(|| Error::msg(format!("distill: {} is not a kiln distill run (its training state names no teacher)", dir.display())))?;
    let f = |k: &str| d.get(k).and_then(Value::as_f64).ok_or_else(|| Error::msg(format!("distill: {}: the training state has no '{k}'", dir.display())));
    let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(|| Error::msg(format!("distill: {}: the training state has no '{k}'", dir.display())));
    Ok(Recorded {
        teacher: PathBuf::from(s("teacher")?),
        sha256: s("teacher_sha256")?,
        opts: DistillOptions {
            temperature: f("temperature")?,
            alpha_ce: f("alpha_ce")?,
            alpha_mlm: f("alpha_mlm")?,
            alpha_cos: f("alpha_cos")?,
            alpha_hidden: d.get("alpha_hidden").and_then(Value::as_f64).unwrap_or(0.0),
        },
    })
}

/// The loss's options: the flags, else the resumed run's (a flag that differs from them is an
/// error: the run would not continue as it began), else DistilBERT's defaults.
fn options(a: &DistillArgs, rec: Option<&Recorded>) -> Result<DistillOptions> {
    let base = rec.map(|r| r.opts).unwrap_or_default();
    let pick = |flag: Option<f64>, was: f64, name: &str| -> Result<f64> {
        match (flag, rec) {
            (Some(v), Some(_)) if v != was => Err(Error::msg(format!("distill: {name} {v} differs from the resumed run's {was}"))),
            (Some(v), _) => Ok(v),
            (None, _) => Ok(was),
        }
    };
    let o = DistillOptions {
        temperature: pick(a.temperature, base.temperature, "--temperature")?,
        alpha_ce: pick(a.alpha_ce, base.alpha_ce, "--alpha-ce")?,
        alpha_mlm: pick(a.alpha_mlm, base.alpha_mlm, "--alpha-mlm")?,
        alpha_cos: pick(a.alpha_cos, base.alpha_cos, "--alpha-cos")?,
        alpha_hidden: pick(a.alpha_hidden, base.alpha_hidden, "--alpha-hidden")?,
    };
    o.check()?;
    Ok(o)
}

/// The teacher's directory (a run's current checkpoint), checked to hold weights and a tokenizer.
fn teacher_dir(t: &Path) -> Result<PathBuf> {
    if !t.is_dir() {
        return Err(Error::msg(format!("distill: the teacher directory {} does not exist", t.display())));
    }
    let dir = run_dir::resolve(t)?.dir;
    for (f, why) in [(MODEL_FILE, "a teacher needs trained weights"), (TOKENIZER_FILE, "the student reads the teacher's tokenizer")] {
        if !entry_exists(&dir.join(f)) {
            return Err(Error::msg(format!("distill: the teacher {} has no {f} ({why})", dir.display())));
        }
    }
    Ok(dir)
}

pub fn run(a: DistillArgs) -> Result<()> {
    if kiln::model::dist::world()?.size() > 1 {
        return Err(Error::msg("distill: runs as one process (not under mpirun)"));
    }
    let checked = a.run.check("distill")?;
    let device = checked.device;
    let Plan { from, preset, out } = plan(&a.run, &a.student, "distill")?;
    let resumed = a.run.resume.is_some();
    let rec = match (&from, resumed) {
        (Some(d), true) => Some(recorded(d)?),
        _ => None,
    };
    let opts = options(&a, rec.as_ref())?;
    let teacher_arg = a.teacher.clone().or_else(|| rec.as_ref().map(|r| r.teacher.clone())).ok_or_else(|| Error::msg("distill: --teacher is required"))?;
    let tdir = teacher_dir(&teacher_arg)?;
    if same_path(&out, &teacher_arg) || same_path(&out, &tdir) {
        return Err(Error::msg(format!("distill: --out {} is the teacher's directory; write the student elsewhere", out.display())));
    }
    let sha256 = run_dir::digest_file(&tdir.join(MODEL_FILE))?.sha256;
    if let Some(r) = rec.as_ref().filter(|r| r.sha256 != sha256) {
        return Err(Error::msg(format!("distill: the teacher {} is not the one the run was distilled from ({}: its weights differ)", tdir.display(), r.teacher.display())));
    }
    let teacher = LoadedModel::from_dir(&tdir, a.run.seed, device).map_err(|e| Error::msg(format!("distill: teacher {}: {e}", tdir.display())))?;
    mlm_parts(&teacher.model, "teacher", true).map_err(|e| Error::msg(format!("{e} ({})", tdir.display())))?;
    let tok = teacher.tokenizer.clone().ok_or_else(|| Error::msg(format!("distill: the teacher {} has no tokenizer.json", tdir.display())))?;
    let vocab = teacher.cfg.vocab_size();
    if tok.get_vocab_size(true) > vocab {
        return Err(Error::msg(format!("distill: the teacher's tokenizer has {} tokens but its vocab_size is {vocab}", tok.get_vocab_size(true))));
    }
    // the student's config: a directory's (or the resumed run's), made from the teacher's, or a preset
    let derived = FROM_TEACHER.iter().find(|(n, _)| *n == preset).map(|&(_, f)| f);
    let cfg = match (&from, derived) {
        (Some(d), _) => {
            if a.student_layers.is_some() {
                return Err(Error::msg("distill: --student-layers applies to a student made from the teacher or a preset, not to a directory"));
            }
            let cfg = ModelConfig::load(d.join("config.json"))?;
            if cfg.vocab_size() != vocab {
                return Err(Error::msg(format!("distill: the student {} has a vocabulary of {} tokens, the teacher's has {vocab}: the student must use the teacher's tokenizer", d.display(), cfg.vocab_size())));
            }
            if let Some(st) = tokenize::find_tokenizer(None, Some(d.as_path()))? {
                if st.get_vocab(true) != tok.get_vocab(true) {
                    return Err(Error::msg(format!("distill: the student's tokenizer ({}) differs from the teacher's ({}): the soft targets need one vocabulary", d.join(TOKENIZER_FILE).display(), tdir.join(TOKENIZER_FILE).display())));
                }
            }
            cfg
        }
        (None, Some(family)) => student_config(&teacher.cfg, family, a.student_layers.unwrap_or(teacher.cfg.num_layers().div_ceil(2)))?,
        (None, None) => {
            let names: Vec<&str> = FROM_TEACHER.iter().map(|(n, _)| *n).collect();
            let mut cfg = ModelConfig::preset(&preset).map_err(|e| Error::msg(format!("distill: --student '{preset}' is neither a directory, one of {}, nor a preset: {e}", names.join(", "))))?;
            let arch = cfg.family().arch_for(Task::MaskedLm).ok_or_else(|| Error::msg(format!("distill: a {} student is not supported (BERT, RoBERTa and DistilBERT masked LMs are)", cfg.model_type())))?;
            cfg.set_architecture(arch.name);
            if let (Some(l), ModelConfig::Encoder(c)) = (a.student_layers, &mut cfg) {
                c.num_hidden_layers = l;
            }
            tokenize::sync_config(&mut cfg, &tok);
            cfg.set_vocab_size(vocab);
            cfg
        }
    };
    cfg.validate()?;
    let job = limits::Job::Train { batch: limits::Size::new("--batch", a.run.batch), seq: limits::Size::new("--seq", a.run.seq) };
    limits::check_positions(&cfg, limits::Size::new("--seq", a.run.seq)).map_err(|e| Error::msg(format!("distill: student: {e}")))?;
    limits::check_positions(&teacher.cfg, limits::Size::new("--seq", a.run.seq)).map_err(|e| Error::msg(format!("distill: teacher: {e}")))?;
    limits::check(&cfg, &job, limits::Memory::of(device).as_ref()).map_err(|e| Error::msg(format!("distill: {e}")))?;
    let store = ParamStore::new(a.run.seed, DType::F32, device);
    let mut trainer = Trainer::new(cfg.clone(), store.clone(), Some(&tok), checked.adamw)?;
    trainer.model.set_recompute(a.run.recompute);
    // the student's weights: the checkpoint or directory's, else the teacher's layers, else random
    let weights = from.as_ref().map(|d| d.join(MODEL_FILE)).filter(|w| entry_exists(w));
    let init = match (&weights, a.random_init) {
        (Some(w), _) => {
            kiln::model::load_params(w, &store, &cfg.family().name_map(), &LoadOptions::strict())?;
            json!(if resumed { "checkpoint" } else { "student directory" })
        }
        (None, true) => json!("random"),
        (None, false) => match init_from_teacher(&trainer.model, &teacher.model) {
            Ok(pairs) => json!(pairs.iter().map(|&(_, t)| t).collect::<Vec<_>>()),
            // a student made from the teacher must take its layers; another may not fit them
            Err(e) if derived.is_some() => return Err(e),
            Err(e) => {
                if !a.run.json {
                    println!("note: the student starts from random weights ({e})");
                }
                json!("random")
            }
        },
    };
    let teacher_params = teacher.store.num_params();
    let teacher_layers = teacher.cfg.num_layers();
    let distill = Rc::new(Distill::new(teacher.model, teacher.store, &trainer.model, opts)?);
    trainer.objective = Box::new(distill.clone());
    let text = a.run.text()?;
    let (train_text, eval_text) = split_held_out(&text);
    let (b, s, seed) = (a.run.batch, a.run.seq, a.run.seed);
    let batcher = |text: &str, seed: u64| ObjectiveKind::Mlm.batcher(&tok, text, vocab, b, s, seed);
    let mut data = batcher(train_text, seed)?;
    let mut eval = batcher(eval_text, seed ^ 1)?;
    if let (true, Some(r)) = (resumed, &from) {
        trainer.restore_dir(r, data.as_mut())?;
        if trainer.step >= a.run.steps {
            return Err(Error::msg(format!("distill: the checkpoint is already at step {} (>= --steps {})", trainer.step, a.run.steps)));
        }
    }
    let teacher_path = std::fs::canonicalize(&teacher_arg).unwrap_or(teacher_arg.clone());
    trainer.extra.insert(
        "distill".into(),
        json!({"teacher": teacher_path.display().to_string(), "teacher_sha256": sha256, "temperature": opts.temperature,
            "alpha_ce": opts.alpha_ce, "alpha_mlm": opts.alpha_mlm, "alpha_cos": opts.alpha_cos, "alpha_hidden": opts.alpha_hidden}),
    );
    std::fs::create_dir_all(&out).map_err(|e| Error::Io { path: out.display().to_string(), source: e })?;
    let train_opts = a.run.options(&checked, a.run.schedule(checked.decay), Some(out.clone()));
    if a.run.json {
        println!(
            "{}",
            json!({"teacher": tdir.display().to_string(), "teacher_params": teacher_params, "teacher_layers": teacher_layers, "student": cfg.architecture(),
                "params": store.num_params(), "layers": cfg.num_layers(), "init": init, "vocab_size": vocab, "batch": b, "seq": s, "steps": a.run.steps,
                "objective": "distill", "temperature": opts.temperature, "alpha_ce": opts.alpha_ce, "alpha_mlm": opts.alpha_mlm, "alpha_cos": opts.alpha_cos, "alpha_hidden": opts.alpha_hidden,
                "device": device.to_string(), "dtype": checked.compute_dtype.as_str(), "config": cfg.to_json_value()?})
        );
    } else {
        println!(
            "kiln distill: teacher {} ({teacher_params} params, {teacher_layers} layers) -> student {} ({} params, {} layers, init {init}); T {} alpha ce/mlm/cos/hidden {}/{}/{}/{}; {} steps, out {}",
            tdir.display(),
            cfg.architecture().unwrap_or("?"),
            store.num_params(),
            cfg.num_layers(),
            opts.temperature,
            opts.alpha_ce,
            opts.alpha_mlm,
            opts.alpha_cos,
            opts.alpha_hidden,
            a.run.steps,
            out.display()
        );
    }
    let mut progress = a.run.progress(trainer.step, true);
    let t0 = std::time::Instant::now();
    trainer.run_dist(&train_opts, Dist::local(), data.as_mut(), Some(eval.as_mut()), &mut progress)?;
    // what distillation is for: the student's own held-out MLM loss, beside the teacher's
    let n = a.run.eval_batches;
    let student_mlm = mlm_loss(&trainer.model, batcher(eval_text, seed ^ 1)?.as_mut(), n)?;
    let teacher_mlm = mlm_loss(&distill.teacher, batcher(eval_text, seed ^ 1)?.as_mut(), n)?;
    if a.run.json {
        println!("{}", json!({"step": trainer.step, "eval_mlm_loss": student_mlm, "teacher_eval_mlm_loss": teacher_mlm}));
    } else {
        println!("held-out MLM loss: student {student_mlm:.4}, teacher {teacher_mlm:.4}");
    }
    finish(&a.run, &progress, &out, &trainer, t0, device)
}
