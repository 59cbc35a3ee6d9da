//! Fine-tuning from labelled data (behind `kiln finetune`): sequence classification, sentence-pair
//! classification, token classification, extractive QA and multiple choice, from JSONL or CSV files.
//!
//! - Data: JSONL (one object per line) or CSV (a header row), by the file's extension. Fields:
//!   `text` [+ `text_pair`] + `label` for `seq-cls` / `pair-cls`; `tokens` + `tags` (JSON arrays, or
//!   space-separated in CSV) for `token-cls`. Labels are kept as they are written (strings, or
//!   numbers read as their text), ordered numerically when all are numbers and alphabetically
//!   otherwise, and written to the config's `id2label` / `label2id`. A label in the evaluation
//!   file that the training file lacks is an error naming the file and line.
//! - Encoding: the model's tokenizer, truncated to `seq` (pairs: longest first); token
//!   classification labels the first sub-token of each word and ignores (-100) the rest, as
//!   transformers' examples do.
//! - Metrics: accuracy and macro-F1 (classes); token accuracy and token F1 (micro-F1 over the words
//!   whose gold or predicted tag is not the outside tag `O`, or macro-F1 over tags when there is no `O`);
//!   SQuAD's exact match and F1 (question answering).
//! - Question answering (`qa`): `question`, `context`, `answers` (`{"text": [..], "answer_start": [..]}`
//!   in characters, or a list of `{"text", "answer_start"}`); an offset that does not point at its
//!   text is an error. The pair is encoded question first, the context truncated; the first
//!   answer's tokens are the target ((0, 0) when the window cut it off, as transformers does).
//! - Multiple choice (`multiple-choice`): `question`, `choices` (a list; CSV: columns `choice0`,
//!   `choice1`, ...) and `label`: a JSON number is the right choice's 0-based index, a string its
//!   text (else an index written as text). Every example of a file has the same number of choices
//!   (a batch is `[batch, choices, seq]`); another count, a label out of range or a choice that
//!   does not fit `seq` even without the question is an error naming the file and line; a long
//!   question is truncated. Encoders read each (question, choice) pair with their template; GPT
//!   models use GPT-1's transforms ([`crate::finetune::gpt`]). The metric is accuracy.
mod batch;
mod eval;
pub mod gpt;

pub use batch::ExampleBatcher;
pub use eval::{evaluate, last_positions, task_inputs};

use crate::data::IGNORE_INDEX;
use crate::family::Task;
use crate::tokenize::Tokenizer;
use kiln_tensor::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// A fine-tuning task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinetuneTask {
    SeqCls,
    PairCls,
    TokenCls,
    /// Extractive question answering (SQuAD-style).
    Qa,
    /// A question with N choices, one of them right (SWAG / RACE style).
    MultipleChoice,
}

impl std::str::FromStr for FinetuneTask {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "seq-cls" => Ok(FinetuneTask::SeqCls),
            "pair-cls" => Ok(FinetuneTask::PairCls),
            "token-cls" => Ok(FinetuneTask::TokenCls),
            "qa" => Ok(FinetuneTask::Qa),
            "multiple-choice" => Ok(FinetuneTask::MultipleChoice),
            _ => Err(Error::msg(format!("unknown --task '{s}' (seq-cls, pair-cls, token-cls, qa, multiple-choice)"))),
        }
    }
}

impl FinetuneTask {
    /// The HF head this task trains.
    pub fn head(self) -> Task {
        match self {
            FinetuneTask::SeqCls | FinetuneTask::PairCls => Task::SequenceClassification,
            FinetuneTask::TokenCls => Task::TokenClassification,
            FinetuneTask::Qa => Task::QuestionAnswering,
            FinetuneTask::MultipleChoice => Task::MultipleChoice,
        }
    }
    /// Whether the task has classes read from the data (kept as `id2label`): not QA, not
    /// multiple choice (whose label is an index into each example's choices).
    pub fn has_classes(self) -> bool {
        !matches!(self, FinetuneTask::Qa | FinetuneTask::MultipleChoice)
    }
    /// The name of the metric that picks the best checkpoint.
    pub fn metric(self) -> &'static str {
        match self {
            FinetuneTask::TokenCls => "token_f1",
            FinetuneTask::Qa => "exact_match",
            _ => "accuracy",
        }
    }
}

/// One labelled example and the line it came from (1-based; CSV: the record's line).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Example {
    pub line: usize,
    pub text: String,
    pub pair: Option<String>,
    pub label: String,
    pub tokens: Vec<String>,
    pub tags: Vec<String>,
    /// QA: the answers as (character offset in `text`, the context; answer text).
    pub answers: Vec<(usize, String)>,
    /// Multiple choice: the choices (`text` is the question; `label` the right choice's index).
    pub choices: Vec<String>,
}

pub(crate) fn at(path: &Path, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::msg(format!("{}:{line}: {msg}", path.display()))
}

/// A label as written: a JSON string as is, a number as its text.
fn label_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads the examples of `task` from a JSONL or CSV file (by extension: `.csv`, else JSONL).
pub fn read_examples(path: &Path, task: FinetuneTask) -> Result<Vec<Example>> {
    let text = crate::io::read_input_text(path)?;
    let is_csv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let rows: Vec<(usize, BTreeMap<String, serde_json::Value>)> = if is_csv { csv_rows(path, &text)? } else { jsonl_rows(path, &text)? };
    if rows.is_empty() {
        return Err(Error::msg(format!("{}: no examples", path.display())));
    }
    let examples: Vec<Example> = rows.into_iter().map(|(line, r)| example(path, line, r, task, is_csv)).collect::<Result<_>>()?;
    // multiple choice: one number of choices per file (a batch is [batch, choices, seq])
    if let Some(first) = examples.first().filter(|_| task == FinetuneTask::MultipleChoice) {
        if let Some(e) = examples.iter().find(|e| e.choices.len() != first.choices.len()) {
            return Err(at(path, e.line, format!("{} choices, but the first example (line {}) has {}: every example of a file needs the same number of choices", e.choices.len(), first.line, first.choices.len())));
        }
    }
    Ok(examples)
}

fn jsonl_rows(path: &Path, text: &str) -> Result<Vec<(usize, BTreeMap<String, serde_json::Value>)>> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let v: BTreeMap<String, serde_json::Value> = serde_json::from_str(l).map_err(|e| at(path, i + 1, format!("not a JSON object: {e}")))?;
        out.push((i + 1, v));
    }
    Ok(out)
}

fn csv_rows(path: &Path, text: &str) -> Result<Vec<(usize, BTreeMap<String, serde_json::Value>)>> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = r.headers().map_err(|e| at(path, 1, format!("CSV header: {e}")))?.iter().map(|h| h.trim().to_string()).collect();
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| at(path, e.position().map_or(0, |p| p.line() as usize), format!("CSV: {e}")))?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        let row = header.iter().cloned().zip(rec.iter().map(|f| serde_json::Value::String(f.to_string()))).collect();
        out.push((line, row));
    }
    Ok(out)
}

fn example(path: &Path, line: usize, mut r: BTreeMap<String, serde_json::Value>, task: FinetuneTask, is_csv: bool) -> Result<Example> {
    let mut field = |name: &str| r.remove(name).ok_or_else(|| at(path, line, format!("no '{name}' field")));
    let string = |v: serde_json::Value, name: &str| v.as_str().map(str::to_string).ok_or_else(|| at(path, line, format!("'{name}' must be a string")));
    let list = |v: serde_json::Value, name: &str| -> Result<Vec<String>> {
        match v {
            serde_json::Value::String(s) if is_csv => Ok(s.split_whitespace().map(str::to_string).collect()),
            serde_json::Value::Array(a) => a.iter().map(|x| label_text(x).ok_or_else(|| at(path, line, format!("'{name}' must list strings or numbers")))).collect(),
            _ => Err(at(path, line, format!("'{name}' must be a list"))),
        }
    };
    let mut ex = Example { line, ..Default::default() };
    match task {
        FinetuneTask::SeqCls | FinetuneTask::PairCls => {
            ex.text = string(field("text")?, "text")?;
            if task == FinetuneTask::PairCls {
                ex.pair = Some(string(field("text_pair")?, "text_pair")?);
            }
            let l = field("label")?;
            ex.label = label_text(&l).filter(|s| !s.is_empty()).ok_or_else(|| at(path, line, "'label' must be a string or a number"))?;
        }
        FinetuneTask::Qa => {
            ex.pair = Some(string(field("question")?, "question")?);
            ex.text = string(field("context")?, "context")?;
            ex.answers = answers(path, line, field("answers")?, &ex.text)?;
        }
        FinetuneTask::MultipleChoice => {
            ex.text = string(field("question")?, "question")?;
            ex.choices = if is_csv {
                // CSV: columns choice0, choice1, ... (consecutive)
                (0..).map_while(|i| r.remove(&format!("choice{i}"))).map(|v| string(v, "choiceN")).collect::<Result<_>>()?
            } else {
                list(r.remove("choices").ok_or_else(|| at(path, line, "no 'choices' field"))?, "choices")?
            };
            if ex.choices.len() < 2 {
                return Err(at(path, line, format!("{} choices: multiple choice needs two or more ({})", ex.choices.len(), if is_csv { "CSV columns choice0, choice1, ..." } else { "a 'choices' list" })));
            }
            let l = r.remove("label").ok_or_else(|| at(path, line, "no 'label' field"))?;
            ex.label = choice_index(&l, &ex.choices).ok_or_else(|| at(path, line, format!("label {l} is neither one of the {} choices nor an index in 0..{}", ex.choices.len(), ex.choices.len())))?.to_string();
        }
        FinetuneTask::TokenCls => {
            ex.tokens = list(field("tokens")?, "tokens")?;
            ex.tags = list(field("tags")?, "tags")?;
            if ex.tokens.is_empty() || ex.tokens.len() != ex.tags.len() {
                return Err(at(path, line, format!("{} tokens but {} tags (one tag per token, at least one)", ex.tokens.len(), ex.tags.len())));
            }
        }
    }
    Ok(ex)
}

/// A multiple-choice label as written: a JSON number is a 0-based index; a string is the text of
/// one of the choices (the first that matches), or else a 0-based index written as text (CSV).
fn choice_index(v: &serde_json::Value, choices: &[String]) -> Option<usize> {
    let index = |i: u64| (i < choices.len() as u64).then_some(i as usize);
    match v {
        serde_json::Value::Number(n) => n.as_u64().and_then(index),
        serde_json::Value::String(s) => choices.iter().position(|c| c == s).or_else(|| s.trim().parse::<u64>().ok().and_then(index)),
        _ => None,
    }
}

/// SQuAD's answers, `{"text": [..], "answer_start": [..]}` (as HF datasets write them) or a list
/// of `{"text", "answer_start"}`: each offset (in characters) must point at its text in `context`.
fn answers(path: &Path, line: usize, v: serde_json::Value, context: &str) -> Result<Vec<(usize, String)>> {
    let bad = || at(path, line, "'answers' must be {\"text\": [..], \"answer_start\": [..]} or a list of {\"text\", \"answer_start\"}");
    let pairs: Vec<(serde_json::Value, serde_json::Value)> = match v {
        serde_json::Value::Object(mut m) => match (m.remove("text"), m.remove("answer_start")) {
            (Some(serde_json::Value::Array(t)), Some(serde_json::Value::Array(s))) if t.len() == s.len() => t.into_iter().zip(s).collect(),
            _ => return Err(bad()),
        },
        serde_json::Value::Array(a) => a.into_iter().map(|mut x| (x["text"].take(), x["answer_start"].take())).collect(),
        _ => return Err(bad()),
    };
    let chars: Vec<char> = context.chars().collect();
    let mut out = Vec::new();
    for (t, s) in pairs {
        let (Some(t), Some(s)) = (t.as_str(), s.as_u64()) else { return Err(bad()) };
        let s = s as usize;
        let n = t.chars().count();
        let found: String = chars.iter().skip(s).take(n).collect();
        if t.is_empty() || s + n > chars.len() || found != t {
            return Err(at(path, line, format!("answer '{t}' is not at character {s} of the context (found '{found}')")));
        }
        out.push((s, t.to_string()));
    }
    if out.is_empty() {
        return Err(at(path, line, "no answer"));
    }
    Ok(out)
}

/// The label set of a run, in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels(pub Vec<String>);

impl Labels {
    /// The labels of the training examples (classes, or tags).
    pub fn of(examples: &[Example], task: FinetuneTask) -> Labels {
        let mut v: Vec<String> = match task {
            FinetuneTask::TokenCls => examples.iter().flat_map(|e| e.tags.iter().cloned()).collect(),
            FinetuneTask::Qa | FinetuneTask::MultipleChoice => Vec::new(),
            _ => examples.iter().map(|e| e.label.clone()).collect(),
        };
        v.sort();
        v.dedup();
        let nums: Option<Vec<f64>> = v.iter().map(|s| s.parse::<f64>().ok()).collect();
        if let Some(n) = nums {
            let mut pairs: Vec<(f64, String)> = n.into_iter().zip(v).collect();
            pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
            v = pairs.into_iter().map(|p| p.1).collect();
        }
        Labels(v)
    }

    /// From a config's `id2label` (a model fine-tuned before).
    pub fn from_config(cfg: &crate::config::ModelConfig) -> Option<Labels> {
        let mut v: Vec<(usize, String)> = cfg.id2label()?.iter().filter_map(|(k, l)| k.parse().ok().map(|i| (i, l.clone()))).collect();
        v.sort();
        Some(Labels(v.into_iter().map(|p| p.1).collect()))
    }

    /// Writes `id2label` / `label2id` (and so `num_labels`) into `cfg`.
    pub fn write_to(&self, cfg: &mut crate::config::ModelConfig) {
        cfg.set_labels(&self.0);
    }

    pub(crate) fn id(&self, label: &str, path: &Path, line: usize) -> Result<i64> {
        self.0.iter().position(|l| l == label).map(|i| i as i64).ok_or_else(|| at(path, line, format!("label '{label}' is not among the training data's labels ({})", self.0.join(", "))))
    }
}

/// One encoded example: ids, segment ids and labels (one, or one per position).
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub types: Vec<i64>,
    pub labels: Vec<i64>,
    /// QA: what evaluation needs to read a span back.
    pub qa: Option<QaSpans>,
    /// Multiple choice (and GPT's similarity pairs): one row of (ids, segment ids) per choice; `ids`
    /// and `types` are then empty.
    pub choices: Vec<(Vec<i64>, Vec<i64>)>,
}

/// QA evaluation data of one encoded example.
#[derive(Debug, Clone)]
pub struct QaSpans {
    /// Per token: its characters in the context, or None outside the context.
    pub offsets: Vec<Option<(usize, usize)>>,
    pub context: Vec<char>,
    pub answers: Vec<String>,
}

/// Encodes `examples` with `tok` truncated to `seq` tokens; labels by `labels` (an unknown one is
/// an error naming `path` and the line).
pub fn encode(tok: &Tokenizer, examples: &[Example], labels: &Labels, task: FinetuneTask, seq: usize, path: &Path) -> Result<Vec<Encoded>> {
    if task == FinetuneTask::MultipleChoice {
        return encode_choices(tok, examples, seq, path);
    }
    let mut tok = tok.clone();
    let strategy = if task == FinetuneTask::Qa { tokenizers::TruncationStrategy::OnlySecond } else { tokenizers::TruncationStrategy::LongestFirst };
    let trunc = tokenizers::TruncationParams { max_length: seq, strategy, ..Default::default() };
    tok.with_truncation(Some(trunc)).map_err(|e| Error::msg(format!("tokenizer: {e}")))?;
    tok.with_padding(None);
    let tk = |e: tokenizers::Error| Error::msg(format!("tokenizer: {e}"));
    examples
        .iter()
        .map(|ex| {
            let enc = match (task, &ex.pair) {
                (FinetuneTask::TokenCls, _) => tok.encode(ex.tokens.iter().map(String::as_str).collect::<Vec<&str>>(), true).map_err(tk)?,
                // question first, context second and truncated (offsets in characters)
                (FinetuneTask::Qa, Some(q)) => tok.encode_char_offsets((q.as_str(), ex.text.as_str()), true).map_err(tk)?,
                (_, Some(p)) => tok.encode((ex.text.as_str(), p.as_str()), true).map_err(tk)?,
                (_, None) => tok.encode(ex.text.as_str(), true).map_err(tk)?,
            };
            let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
            let types: Vec<i64> = enc.get_type_ids().iter().map(|&i| i as i64).collect();
            let labels = match task {
                FinetuneTask::TokenCls => {
                    let mut prev = None;
                    let mut out = Vec::with_capacity(ids.len());
                    for w in enc.get_word_ids() {
                        out.push(match w {
                            Some(w) if Some(*w) != prev => labels.id(&ex.tags[*w as usize], path, ex.line)?,
                            _ => IGNORE_INDEX,
                        });
                        prev = *w;
                    }
                    out
                }
                FinetuneTask::Qa => {
                    // the first answer's tokens; (0, 0), the first token, when the window cut it off
                    let offsets: Vec<Option<(usize, usize)>> = enc.get_sequence_ids().iter().zip(enc.get_offsets()).map(|(s, &o)| (*s == Some(1)).then_some(o)).collect();
                    let (s0, t0) = &ex.answers[0];
                    let e0 = s0 + t0.chars().count();
                    let start = offsets.iter().position(|o| o.is_some_and(|(a, b)| a <= *s0 && *s0 < b));
                    let end = offsets.iter().rposition(|o| o.is_some_and(|(a, b)| a < e0 && e0 <= b));
                    let span = match (start, end) {
                        (Some(s), Some(e)) if s <= e => vec![s as i64, e as i64],
                        _ => vec![0, 0],
                    };
                    let qa = QaSpans { offsets, context: ex.text.chars().collect(), answers: ex.answers.iter().map(|a| a.1.clone()).collect() };
                    return Ok(Encoded { ids, types, labels: span, qa: Some(qa), choices: Vec::new() });
                }
                _ => vec![labels.id(&ex.label, path, ex.line)?],
            };
            Ok(Encoded { ids, types, labels, qa: None, choices: Vec::new() })
        })
        .collect()
}

/// Multiple choice on an encoder: one (question, choice) pair per choice with the tokenizer's
/// template; a question too long for `seq` is truncated, a choice that does not fit even with an
/// empty question is an error naming `path` and the line.
fn encode_choices(tok: &Tokenizer, examples: &[Example], seq: usize, path: &Path) -> Result<Vec<Encoded>> {
    let tk = |e: tokenizers::Error| Error::msg(format!("tokenizer: {e}"));
    let mut tok = tok.clone();
    tok.with_truncation(None).map_err(tk)?;
    tok.with_padding(None);
    let specials = tok.get_post_processor().map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, true));
    let mut cut = tok.clone();
    cut.with_truncation(Some(tokenizers::TruncationParams { max_length: seq, strategy: tokenizers::TruncationStrategy::OnlyFirst, ..Default::default() })).map_err(tk)?;
    examples
        .iter()
        .map(|ex| {
            let mut choices = Vec::with_capacity(ex.choices.len());
            for (i, c) in ex.choices.iter().enumerate() {
                let alone = tok.encode(c.as_str(), false).map_err(tk)?.len();
                if alone + specials > seq {
                    return Err(at(path, ex.line, format!("choice {i} has {alone} tokens: with the {specials} special tokens it does not fit --seq {seq} even without the question")));
                }
                let enc = cut.encode((ex.text.as_str(), c.as_str()), true).map_err(tk)?;
                choices.push((enc.get_ids().iter().map(|&i| i as i64).collect(), enc.get_type_ids().iter().map(|&i| i as i64).collect()));
            }
            let label = ex.label.parse::<i64>().map_err(|_| at(path, ex.line, format!("label '{}' is not a choice index", ex.label)))?;
            Ok(Encoded { ids: Vec::new(), types: Vec::new(), labels: vec![label], qa: None, choices })
        })
        .collect()
}

/// Sets every segment id of `items` to 0: for a model with one token type (RoBERTa's
/// `type_vocab_size` 1), whatever its tokenizer's pair template says (transformers' RoBERTa
/// tokenizer gives zeros).
pub fn single_segment(items: &mut [Encoded]) {
    for e in items {
        e.types.fill(0);
        for (_, t) in &mut e.choices {
            t.fill(0);
        }
    }
}
