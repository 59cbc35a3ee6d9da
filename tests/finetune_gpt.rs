//! Multiple choice and GPT-1-style fine-tuning (issue 22, items 2 and 3): the auxiliary LM term's
//! gradient against the two losses computed apart; the embedding grown by exactly the three
//! transform tokens with its pretrained rows kept; GPT-2 classifiers (sequence, similarity pairs,
//! multiple choice) and an encoder's multiple-choice head on generated tasks, against chance; bad
//! multiple-choice data as errors naming the file and line.
mod common;

use common::finetune::*;
use kiln::model::checkpoint::{load_params, LoadOptions};
use kiln::model::config::ModelConfig;
use kiln::model::data::Batch;
use kiln::model::finetune::gpt::{lm_labels, GptFinetune, GptTokens};
use kiln::model::model::{Inputs, LoadedModel, Model};
use kiln::model::nn::ForwardCtx;
use kiln::model::objective::Objective;
use kiln::model::params::ParamStore;
use kiln::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

fn grads(store: &ParamStore) -> BTreeMap<String, Vec<f32>> {
    store.params().iter().map(|p| (p.name().to_string(), p.grad().map_or_else(|| vec![0.0; p.elem_count()], |g| g.to_vec::<f32>().unwrap()))).collect()
}

/// A batch of `shape` (`[B, T]` or `[B, C, T]`) of random ids with right padding (pad id 0),
/// labels below `classes`.
fn batch(shape: &[usize], classes: usize, g: &mut Gen) -> Batch {
    let t = *shape.last().unwrap();
    let rows: usize = shape[..shape.len() - 1].iter().product();
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for _ in 0..rows {
        let n = t - g.below(t / 2);
        ids.extend((0..t).map(|i| if i < n { 1 + g.below(49) as i64 } else { 0 }));
        mask.extend((0..t).map(|i| (i < n) as i64));
    }
    Batch {
        input_ids: Tensor::from_vec(ids, shape).unwrap(),
        labels: Tensor::from_vec((0..shape[0]).map(|_| g.below(classes) as i64).collect(), &[shape[0]]).unwrap(),
        attention_mask: Tensor::from_vec(mask, shape).unwrap(),
        token_type_ids: Tensor::zeros(shape, DType::I64, Device::Cpu).unwrap(),
        next_sentence_label: None,
    }
}

/// With λ, the gradient of `task + λ·LM` is the task loss's gradient plus λ times the gradient of
/// the LM loss that a `GPT2LMHeadModel` on the same weights computes apart (HF's shifted loss, the
/// padding ignored), for every parameter: the sequence classifier, its similarity form (two orders
/// per example) and the double-heads model (multiple choice).
#[test]
fn the_auxiliary_lm_term_adds_lambda_times_the_lm_gradient() {
    let lambda = 0.5;
    let mut g = Gen(0x1234_5678_9ABC_DEF1);
    for (arch, shape, classes) in [("GPT2ForSequenceClassification", vec![4, 12], 3), ("GPT2ForSequenceClassification", vec![3, 2, 10], 3), ("GPT2DoubleHeadsModel", vec![3, 4, 10], 4)] {
        let mut cfg = ModelConfig::preset("gpt2-tiny").unwrap();
        cfg.set_vocab_size(50);
        if let ModelConfig::Decoder(c) = &mut cfg {
            c.pad_token_id = Some(0);
        }
        cfg.set_architecture(arch);
        cfg.set_num_labels(classes);
        let store = ParamStore::new(11, DType::F32, Device::Cpu);
        let model = Model::build(&cfg, &store).unwrap();
        let b = batch(&shape, classes, &mut g);
        let ctx = ForwardCtx::eval();
        let run = |loss: kiln::Tensor| {
            loss.backward().unwrap();
            let out = grads(&store);
            store.zero_grad();
            out
        };
        let total = run(GptFinetune { lm_coef: lambda }.loss(&model, &b, &ctx).unwrap());
        let task = run(GptFinetune { lm_coef: 0.0 }.loss(&model, &b, &ctx).unwrap());
        // the LM loss apart: the LM head model on the same parameters, one row per sequence
        let mut lm_cfg = cfg.clone();
        lm_cfg.set_architecture("GPT2LMHeadModel");
        let lm = Model::build(&lm_cfg, &store).unwrap();
        let t = *shape.last().unwrap();
        let rows = b.input_ids.elem_count() / t;
        let flat = |x: &Tensor| x.reshape(&[rows, t]).unwrap();
        let inputs = Inputs { input_ids: Some(flat(&b.input_ids)), attention_mask: Some(flat(&b.attention_mask)), labels: Some(flat(&lm_labels(&b).unwrap())), ..Default::default() };
        let lm_grads = run(lm.forward(&inputs, &ctx).unwrap().loss.unwrap());
        let (mut worst, mut scale, mut lm_scale) = (0f32, 0f32, 0f32);
        for (name, gt) in &total {
            let (gc, gl) = (&task[name], &lm_grads[name]);
            for i in 0..gt.len() {
                worst = worst.max((gt[i] - (gc[i] + lambda as f32 * gl[i])).abs());
                scale = scale.max(gt[i].abs());
                lm_scale = lm_scale.max(lambda as f32 * gl[i].abs());
            }
        }
        eprintln!("{arch} {shape:?}: max |g_total - (g_task + λ g_lm)| / max |g_total| = {:.2e}", worst / scale);
        assert!(lm_scale > 1e-2 * scale, "{arch} {shape:?}: the LM term is too small to test ({lm_scale} vs {scale})");
        assert!(worst <= 2e-6 * scale, "{arch} {shape:?}: max |g_total - (g_task + λ g_lm)| = {worst}, max |g_total| = {scale}");
    }
}

/// The transform tokens take ids V, V+1, V+2 of a V-token GPT-2; the embedding grows by exactly
/// those three rows, the pretrained rows copied bit for bit and the new ones drawn small and
/// seeded; installing twice changes nothing.
#[test]
fn the_embedding_grows_by_the_three_tokens_and_keeps_its_rows() {
    let d = tmp("grow");
    let body = body_of(&d, "gpt2-tiny");
    let dir = kiln::model::run_dir::resolve(Path::new(&body)).unwrap().dir;
    let mut cfg = ModelConfig::load(dir.join("config.json")).unwrap();
    let mut tok = kiln::model::tokenize::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let v = cfg.vocab_size();
    assert_eq!(tok.get_vocab_size(true), v);
    let t = GptTokens::install(&mut tok, &mut cfg).unwrap();
    assert_eq!((t.start, t.delimiter, t.extract, t.old_vocab, t.vocab), (v as u32, v as u32 + 1, v as u32 + 2, v, v + 3));
    assert_eq!((cfg.vocab_size(), tok.get_vocab_size(true)), (v + 3, v + 3));
    let again = GptTokens::install(&mut tok, &mut cfg).unwrap();
    assert_eq!((again.start, again.delimiter, again.extract, again.vocab, cfg.vocab_size()), (t.start, t.delimiter, t.extract, v + 3, v + 3), "a second install changed the vocabulary");
    cfg.set_architecture("GPT2ForSequenceClassification");
    let grown = |seed: u64| -> Vec<f32> {
        let store = ParamStore::new(seed, DType::F32, Device::Cpu);
        Model::build(&cfg, &store).unwrap();
        let w = dir.join("model.safetensors");
        let mut rep = load_params(&w, &store, &cfg.family().name_map(), &LoadOptions::default()).unwrap();
        assert_eq!(rep.shape_mismatches.len(), 1, "{rep}");
        t.fill_embedding(&w, &store, &mut rep).unwrap();
        assert!(rep.shape_mismatches.is_empty() && rep.missing == ["score.weight"], "{rep}");
        let wte = store.get("transformer.wte.weight").unwrap();
        assert_eq!(wte.shape(), [v + 3, 128]);
        wte.tensor().to_vec::<f32>().unwrap()
    };
    let a = grown(5);
    let file = kiln::model::st_io::StFile::open(dir.join("model.safetensors")).unwrap().tensor("transformer.wte.weight").unwrap().to_vec::<f32>().unwrap();
    assert_eq!(file.len(), v * 128);
    assert!(a[..v * 128] == file[..], "the pretrained rows changed");
    let new = &a[v * 128..];
    let std = (new.iter().map(|x| x * x).sum::<f32>() / new.len() as f32).sqrt();
    assert!(new.iter().all(|x| x.is_finite()) && (0.01..0.04).contains(&std), "new rows' std {std} (init 0.02)");
    assert!(new[..128] != new[128..256], "the new rows are equal");
    assert_eq!(grown(5), a, "the new rows are not seeded");
    assert!(grown(6)[v * 128..] != *new, "the seed does not reach the new rows");
    std::fs::remove_dir_all(&d).unwrap();
}

/// A GPT-2 body fine-tuned as GPT-1 was on the generated cue-word task ("good" → pos, "bad" →
/// neg): accuracy ≥ 0.8 where chance is 0.5; the output is a GPT2ForSequenceClassification with
/// the grown vocabulary, a pad id and the tokenizer that knows the transform tokens, and it loads;
/// a resumed run is exact.
#[test]
fn a_gpt2_classifier_with_the_lm_loss_beats_chance() {
    let d = tmp("gpt-seq");
    let model = body_of(&d, "gpt2-tiny");
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    let (train, dev) = (d.join("train.jsonl"), d.join("dev.jsonl"));
    std::fs::write(&train, seq_jsonl(&mut g, 320)).unwrap();
    std::fs::write(&dev, seq_jsonl(&mut g, 100)).unwrap();
    let out = d.join("out");
    let o = finetune(&model, "seq-cls", &train, &dev, &out, &["--epochs", "3", "--lm-coef", "0.5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let acc = metric(&o, "accuracy");
    eprintln!("GPT-2 seq-cls: best accuracy {acc}");
    assert!(acc >= 0.8, "best accuracy {acc} (chance 0.5): {}", String::from_utf8_lossy(&o.stdout));
    let best = LoadedModel::from_dir(out.join("best"), 0, Device::Cpu).unwrap();
    assert_eq!(best.cfg.architecture(), Some("GPT2ForSequenceClassification"));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("best/config.json")).unwrap()).unwrap();
    assert_eq!((cfg["vocab_size"].as_u64(), cfg["pad_token_id"].as_u64()), (Some(403), Some(400)));
    assert_eq!(best.tokenizer.unwrap().token_to_id("_classify_"), Some(402));
    // a resumed GPT run (its vocabulary already grown) ends on the uninterrupted run's weights
    let (full, part) = (d.join("full"), d.join("part"));
    let common = ["--schedule", "constant", "--eval-every", "2"];
    for (dir, steps) in [(&full, "4"), (&part, "2")] {
        let o = finetune(&model, "seq-cls", &train, &dev, dir, &[&common[..], &["--steps", steps]].concat());
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let mut a = vec!["finetune", "--resume", part.to_str().unwrap(), "--task", "seq-cls", "--data", train.to_str().unwrap(), "--eval", dev.to_str().unwrap(), "--json", "--seq", "24", "--lr", "2e-3", "--batch", "16", "--steps", "4"];
    a.extend_from_slice(&common);
    let o = kiln(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let w = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert!(w(&full) == w(&part), "the resumed GPT run's weights differ from the uninterrupted run's");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Four choices of which one holds the cue word "good" (the others "bad"), after a question of
/// filler words: training data in JSONL with index labels, evaluation data in CSV with the right
/// choice's text as the label.
fn choices_data(g: &mut Gen, n: usize) -> (String, String) {
    let mut jsonl = String::new();
    let mut csv = String::from("question,choice0,choice1,choice2,choice3,label\n");
    for _ in 0..n {
        let k = g.below(4);
        let q: Vec<&str> = (0..3 + g.below(4)).map(|_| g.pick(&FILLER)).collect();
        let choices: Vec<String> = (0..4)
            .map(|i| {
                let mut w: Vec<&str> = (0..2 + g.below(3)).map(|_| g.pick(&FILLER)).collect();
                let at = g.below(w.len() + 1);
                w.insert(at, if i == k { "good" } else { "bad" });
                format!("{} {i}", w.join(" "))
            })
            .collect();
        jsonl += &(serde_json::json!({"question": q.join(" "), "choices": choices, "label": k}).to_string() + "\n");
        csv += &format!("{},{},{}\n", q.join(" "), choices.join(","), choices[k]);
    }
    (jsonl, csv)
}

/// An encoder's multiple-choice head (BertForMultipleChoice: pooler → dropout → classifier H → 1)
/// reaches accuracy ≥ 0.8 where chance is 0.25, and the output loads as that architecture; a
/// RoBERTa masked LM fine-tunes as RobertaForMultipleChoice.
#[test]
fn encoder_multiple_choice_reaches_080_accuracy() {
    let d = tmp("mc");
    let model = body_of(&d, "bert-tiny");
    let mut g = Gen(0x2545_F491_4F6C_DD1D);
    let (train, dev) = (d.join("train.jsonl"), d.join("dev.csv"));
    std::fs::write(&train, choices_data(&mut g, 320).0).unwrap();
    std::fs::write(&dev, choices_data(&mut g, 100).1).unwrap();
    let out = d.join("out");
    let o = finetune(&model, "multiple-choice", &train, &dev, &out, &["--epochs", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let acc = metric(&o, "accuracy");
    eprintln!("BERT multiple choice: best accuracy {acc}");
    assert!(acc >= 0.8, "best accuracy {acc} (chance 0.25): {}", String::from_utf8_lossy(&o.stdout));
    let best = LoadedModel::from_dir(out.join("best"), 0, Device::Cpu).unwrap();
    assert_eq!(best.cfg.architecture(), Some("BertForMultipleChoice"));
    assert!(best.store.get("classifier.weight").unwrap().shape() == [1, 128]);
    // RoBERTa: its masked LM has no pooler (RobertaForMultipleChoice's starts fresh, as in
    // transformers) and one token type (the pair template's segment ids become 0)
    let roberta = body_of(&d, "roberta-tiny");
    let o = finetune(&roberta, "multiple-choice", &train, &dev, &d.join("roberta"), &["--steps", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let best = LoadedModel::from_dir(d.join("roberta/best"), 0, Device::Cpu).unwrap();
    assert_eq!(best.cfg.architecture(), Some("RobertaForMultipleChoice"));
    assert!(best.store.get("roberta.pooler.dense.weight").is_some());
    std::fs::remove_dir_all(&d).unwrap();
}

/// GPT-2 on multiple choice (one `start question delim choice extract` sequence per choice, the
/// double-heads model's `multiple_choice_head` at the extract token) and on similarity pairs
/// (both orders summed): accuracy ≥ 0.8 on each (chance 0.25 and 0.5).
#[test]
fn gpt2_multiple_choice_and_similarity_pairs_beat_chance() {
    let d = tmp("gpt-mc");
    let model = body_of(&d, "gpt2-tiny");
    let mut g = Gen(0xD1B5_4A32_D192_ED03);
    let (train, dev) = (d.join("train.jsonl"), d.join("dev.jsonl"));
    std::fs::write(&train, choices_data(&mut g, 320).0).unwrap();
    std::fs::write(&dev, choices_data(&mut g, 100).0).unwrap();
    let out = d.join("out");
    let o = finetune(&model, "multiple-choice", &train, &dev, &out, &["--epochs", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let acc = metric(&o, "accuracy");
    eprintln!("GPT-2 multiple choice: best accuracy {acc}");
    assert!(acc >= 0.8, "multiple choice: best accuracy {acc} (chance 0.25): {}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(LoadedModel::from_dir(out.join("best"), 0, Device::Cpu).unwrap().cfg.architecture(), Some("GPT2DoubleHeadsModel"));
    // similarity: is the cue word "good" in either text (symmetric in the two texts)
    let mut pairs = |n: usize| -> String {
        (0..n)
            .map(|_| {
                let yes = g.below(2) == 0;
                let mut a: Vec<&str> = (0..4).map(|_| g.pick(&FILLER)).collect();
                let mut b: Vec<&str> = (0..4).map(|_| g.pick(&FILLER)).collect();
                let (side, at) = (g.below(2), g.below(4));
                if side == 0 { &mut a } else { &mut b }.insert(at, if yes { "good" } else { "bad" });
                serde_json::json!({"text": a.join(" "), "text_pair": b.join(" "), "label": yes as u8}).to_string() + "\n"
            })
            .collect()
    };
    std::fs::write(&train, pairs(320)).unwrap();
    std::fs::write(&dev, pairs(100)).unwrap();
    let o = finetune(&model, "pair-cls", &train, &dev, &d.join("sim"), &["--epochs", "3", "--pair-mode", "similarity"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let acc = metric(&o, "accuracy");
    eprintln!("GPT-2 similarity pairs: best accuracy {acc}");
    assert!(acc >= 0.8, "similarity: best accuracy {acc} (chance 0.5): {}", String::from_utf8_lossy(&o.stdout));
    std::fs::remove_dir_all(&d).unwrap();
}

/// Bad multiple-choice data and flags: errors naming the file and line, exit code 1, nothing written.
#[test]
fn bad_multiple_choice_data_is_a_clear_error() {
    let d = tmp("mc-bad");
    let (bert, gpt) = (body_of(&d, "bert-tiny"), body_of(&d, "gpt2-tiny"));
    let train = d.join("train.jsonl");
    std::fs::write(&train, "{\"question\": \"which\", \"choices\": [\"a good\", \"a bad\", \"the bad\"], \"label\": 0}\n").unwrap();
    let out = d.join("out");
    let long = vec!["good"; 40].join(" ");
    let cases = [
        ("count.jsonl", "{\"question\": \"q\", \"choices\": [\"a\", \"b\", \"c\"], \"label\": 1}\n\n{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"label\": 1}\n", ":3: 2 choices, but the first example (line 1) has 3"),
        ("range.jsonl", "{\"question\": \"q\", \"choices\": [\"a\", \"b\", \"c\"], \"label\": 3}\n", ":1: label 3 is neither one of the 3 choices nor an index in 0..3"),
        ("text.csv", "question,choice0,choice1,choice2,label\nq,a,b,c,d\n", ":2: label \"d\" is neither one of the 3 choices"),
        ("one.jsonl", "{\"question\": \"q\", \"choices\": [\"a\"], \"label\": 0}\n", ":1: 1 choices: multiple choice needs two or more"),
    ];
    for model in [&bert, &gpt] {
        for (name, text, want) in &cases {
            let dev = d.join(name);
            std::fs::write(&dev, text).unwrap();
            let o = finetune(model, "multiple-choice", &train, &dev, &out, &["--steps", "1"]);
            let e = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{name}: {e}");
            assert!(e.contains(&format!("{}{want}", dev.display())) && !e.contains("panicked"), "{name}: {e}");
            assert!(!out.exists(), "{name}: --out was written");
        }
        // a choice longer than --seq even without the question
        let dev = d.join("long.jsonl");
        std::fs::write(&dev, format!("{{\"question\": \"q\", \"choices\": [\"a\", \"{long}\", \"c\"], \"label\": 0}}\n")).unwrap();
        let o = finetune(model, "multiple-choice", &train, &dev, &out, &["--steps", "1"]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.contains(&format!("{}:1: choice 1 has", dev.display())) && e.contains("does not fit --seq 24"), "{e}");
    }
    // a long question is cut to fit: not an error
    let dev = d.join("longq.jsonl");
    std::fs::write(&dev, format!("{{\"question\": \"{long}\", \"choices\": [\"a\", \"b\", \"c\"], \"label\": \"b\"}}\n")).unwrap();
    let o = finetune(&bert, "multiple-choice", &train, &dev, &d.join("ok"), &["--steps", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // GPT-only flags on an encoder; similarity outside pair-cls
    let o = finetune(&bert, "multiple-choice", &train, &train, &out, &["--steps", "1", "--lm-coef", "0.5"]);
    assert!(o.status.code() == Some(1) && stderr(&o).contains("--lm-coef and --pair-mode apply to GPT models"), "{}", stderr(&o));
    let o = finetune(&gpt, "multiple-choice", &train, &train, &out, &["--steps", "1", "--pair-mode", "similarity"]);
    assert!(o.status.code() == Some(1) && stderr(&o).contains("--pair-mode similarity is for --task pair-cls"), "{}", stderr(&o));
    std::fs::remove_dir_all(&d).unwrap();
}
