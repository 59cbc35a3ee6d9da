//! A student made from its teacher, as DistilBERT made its own: the config ([`student_config`]:
//! the teacher's, in the student's family, with fewer layers) and the weights
//! ([`init_from_teacher`]: the embeddings, the MLM head and every other layer).
use super::{mlm_parts, supported};
use crate::config::{EncoderConfig, ModelConfig};
use crate::encoder::EncoderLayer;
use crate::family::{Family, Task};
use crate::model::Model;
use crate::nn::{LayerNorm, Linear, QkvProj};
use crate::params::Param;
use kiln_tensor::{Error, Result};

/// A student config made from the teacher's: the `family` masked LM (the teacher's family, or
/// DistilBERT from a BERT teacher) with `layers` layers and everything else the teacher's (width,
/// heads, feed-forward, activation, vocabulary, positions, dropouts, initializer).
pub fn student_config(teacher: &ModelConfig, family: Family, layers: usize) -> Result<ModelConfig> {
    let ModelConfig::Encoder(t) = teacher else {
        return Err(Error::msg(format!("distill: the teacher must be an encoder (BERT, RoBERTa, DistilBERT), got {}", teacher.model_type())));
    };
    supported(t.family, "teacher")?;
    supported(family, "student")?;
    pairing(t.family, family)?;
    if layers == 0 {
        return Err(Error::msg("distill: the student needs at least 1 layer (--student-layers)"));
    }
    let mut s = if family == t.family { t.clone() } else { EncoderConfig::defaults(family) };
    if family != t.family {
        // DistilBERT from BERT: the sizes carried over; DistilBERT has no token types and a fixed eps
        if t.layer_norm_eps != s.layer_norm_eps {
            return Err(Error::msg(format!("distill: DistilBERT's LayerNorm eps is fixed at {}, the teacher's is {}: use a BERT student", s.layer_norm_eps, t.layer_norm_eps)));
        }
        (s.vocab_size, s.hidden_size, s.num_attention_heads, s.intermediate_size) = (t.vocab_size, t.hidden_size, t.num_attention_heads, t.intermediate_size);
        (s.hidden_act, s.hidden_dropout_prob, s.attention_probs_dropout_prob) = (t.hidden_act.clone(), t.hidden_dropout_prob, t.attention_probs_dropout_prob);
        (s.max_position_embeddings, s.initializer_range, s.pad_token_id) = (t.max_position_embeddings, t.initializer_range, t.pad_token_id);
    }
    s.num_hidden_layers = layers;
    s.family = family;
    let arch = family.arch_for(Task::MaskedLm).ok_or_else(|| Error::msg(format!("{} has no masked-LM head", family.model_type())))?;
    s.extra.insert("architectures".into(), serde_json::json!([arch.name]));
    Ok(ModelConfig::Encoder(s))
}

/// Which teacher → student families [`init_from_teacher`] can copy between: the same family, or
/// BERT → DistilBERT (the same layers under other names; DistilBERT drops the token types).
/// RoBERTa → DistilBERT is not (RoBERTa's positions start after the padding index): distilroberta
/// is a 6-layer RoBERTa, `--student roberta`.
fn pairing(teacher: Family, student: Family) -> Result<()> {
    if teacher == student || (teacher == Family::Bert && student == Family::DistilBert) {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "distill: a {} student cannot be made from a {} teacher (supported: the teacher's own family, or DistilBERT from BERT)",
            student.model_type(),
            teacher.model_type()
        )))
    }
}

/// Copies `src` into `dst`; shapes must agree.
fn copy(dst: &Param, src: &Param) -> Result<()> {
    if dst.shape() != src.shape() {
        return Err(Error::msg(format!("distill: cannot initialise the student's {} {:?} from the teacher's {} {:?}", dst.name(), dst.shape(), src.name(), src.shape())));
    }
    dst.assign(&src.tensor())
}

fn copy_linear(dst: &Linear, src: &Linear) -> Result<()> {
    copy(&dst.weight, &src.weight)?;
    match (&dst.bias, &src.bias) {
        (Some(d), Some(s)) => copy(d, s),
        (None, None) => Ok(()),
        _ => Err(Error::msg(format!("distill: {} and {} differ in having a bias", dst.weight.name(), src.weight.name()))),
    }
}

fn copy_ln(dst: &LayerNorm, src: &LayerNorm) -> Result<()> {
    copy(&dst.weight, &src.weight)?;
    copy(&dst.bias, &src.bias)
}

fn copy_layer(dst: &EncoderLayer, src: &EncoderLayer) -> Result<()> {
    match (&dst.attn.qkv, &src.attn.qkv) {
        (QkvProj::Separate { q, k, v }, QkvProj::Separate { q: sq, k: sk, v: sv }) => {
            copy_linear(q, sq)?;
            copy_linear(k, sk)?;
            copy_linear(v, sv)?;
        }
        _ => return Err(Error::msg("distill: only separate q, k, v projections can be copied")),
    }
    copy_linear(&dst.attn.out, &src.attn.out)?;
    copy_ln(&dst.attn_ln, &src.attn_ln)?;
    copy_linear(&dst.ffn.up, &src.ffn.up)?;
    copy_linear(&dst.ffn.down, &src.ffn.down)?;
    copy_ln(&dst.out_ln, &src.out_ln)
}

/// The teacher layer student layer `i` of `n` starts from, of `l` teacher layers: `⌊i·l/n⌋`.
pub fn teacher_layer(i: usize, n: usize, l: usize) -> usize {
    i * l / n.max(1)
}

/// Initialises `student` from `teacher` as DistilBERT did: the word and position embeddings (and
/// the token types where both have them) with their LayerNorm, layer `i` from teacher layer
/// [`teacher_layer`] (`2i` for half the depth), and the MLM head's transform and bias (its decoder
/// is tied to the word embeddings). Both must be of one family, or BERT → DistilBERT, of the
/// same width, heads, feed-forward and vocabulary, and the student no deeper than the teacher.
/// Returns the (student, teacher) layer pairs.
pub fn init_from_teacher(student: &Model, teacher: &Model) -> Result<Vec<(usize, usize)>> {
    let (se, sh) = mlm_parts(student, "student", false)?;
    let (te, th) = mlm_parts(teacher, "teacher", true)?;
    pairing(te.cfg.family, se.cfg.family)?;
    let (s, t) = (&se.cfg, &te.cfg);
    for (what, a, b) in [("hidden_size", s.hidden_size, t.hidden_size), ("num_attention_heads", s.num_attention_heads, t.num_attention_heads), ("intermediate_size", s.intermediate_size, t.intermediate_size), ("vocab_size", s.vocab_size, t.vocab_size), ("max_position_embeddings", s.max_position_embeddings, t.max_position_embeddings)] {
        if a != b {
            return Err(Error::msg(format!("distill: the student's {what} is {a}, the teacher's {b}: a student initialised from the teacher needs the teacher's sizes")));
        }
    }
    if s.hidden_act != t.hidden_act {
        return Err(Error::msg(format!("distill: the student's activation is {}, the teacher's {}", s.hidden_act, t.hidden_act)));
    }
    let (n, l) = (se.plan().len(), te.plan().len());
    if n > l || se.layers.len() != n || te.layers.len() != l {
        return Err(Error::msg(format!("distill: a student of {n} layers cannot be initialised from a teacher of {l} (it must be no deeper, without shared layers)")));
    }
    copy(&se.word.weight, &te.word.weight)?;
    copy(&se.position.weight, &te.position.weight)?;
    if let (Some(d), Some(s)) = (&se.token_type, &te.token_type) {
        copy(&d.weight, &s.weight)?;
    }
    copy_ln(&se.emb_ln, &te.emb_ln)?;
    let pairs: Vec<(usize, usize)> = (0..n).map(|i| (i, teacher_layer(i, n, l))).collect();
    for &(i, j) in &pairs {
        copy_layer(&se.layers[i], &te.layers[j])?;
    }
    copy_linear(&sh.dense, &th.dense)?;
    copy_ln(&sh.ln, &th.ln)?;
    copy(&sh.bias, &th.bias)?;
    Ok(pairs)
}
