//! Loading and saving a [`ParamStore`] as `model.safetensors` with Hugging Face tensor names.
//!
//! kiln's parameter names *are* the HF names of the task model (`bert.encoder.layer.0...`,
//! `cls.predictions.bias`, `transformer.h.0.attn.c_attn.weight`). [`HfNameMap`] describes the
//! quirks of real checkpoints that a loader must absorb:
//!
//! - the base-model prefix (`bert.` / `transformer.`) present or absent in the file
//!   (a `BertModel` or the hub `gpt2` file has none);
//! - buffers that are not parameters: `embeddings.position_ids` (int64),
//!   `embeddings.token_type_ids`, GPT-2's `attn.bias` / `attn.masked_bias`;
//! - legacy LayerNorm names `gamma` / `beta`;
//! - tied weights (`lm_head.weight`, `cls.predictions.decoder.weight`/`.bias`) absent from the file,
//!   or present under the alias only;
//! - optionally, 2-d weights stored transposed (GPT-2 Conv1D keeps `[in, out]`; a model that stores
//!   them `[out, in]` lists them in [`HfNameMap::transposed`]).
//!
//! Any float dtype in the file (f32 / f16 / bf16 / f64) is converted to each parameter's dtype.
//! A load that does not fit produces a [`LoadReport`] naming missing and unexpected tensors and
//! shape mismatches with both shapes; [`LoadOptions::strict`] turns a non-clean report into an
//! error before anything is modified.
use crate::params::ParamStore;
use crate::st_io::{write_safetensors, StFile};
use kiln_tensor::{DType, Error, Result, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// How HF names in a file relate to the parameter names of a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HfNameMap {
    /// Base-model prefixes (with the trailing dot) that may be present in the file but not in the
    /// model, or the other way round (`"bert."`, `"transformer."`).
    pub prefixes: Vec<String>,
    /// File names ending with one of these are buffers and silently ignored.
    pub ignore_suffixes: Vec<String>,
    /// `(alias, target)`: the alias shares the target's storage. The alias is not saved; when a
    /// file has it, it is ignored, or loaded into the target if the target itself is absent.
    pub tied: Vec<(String, String)>,
    /// Accept `*.gamma` / `*.beta` for `*.weight` / `*.bias`.
    pub legacy_layer_norm: bool,
    /// Parameter-name suffixes of 2-d weights stored transposed in the file.
    pub transposed: Vec<String>,
}

impl HfNameMap {
    /// No quirks: names must match exactly.
    pub fn exact() -> HfNameMap {
        HfNameMap::default()
    }
    /// Declares that parameters ending with these suffixes are stored transposed in the file.
    pub fn with_transposed(mut self, suffixes: &[&str]) -> HfNameMap {
        self.transposed.extend(suffixes.iter().map(|s| s.to_string()));
        self
    }

    /// Whether a file tensor is a buffer to ignore.
    pub fn is_ignored(&self, file_name: &str) -> bool {
        self.ignore_suffixes.iter().any(|s| file_name.ends_with(s.as_str()) && !s.is_empty())
    }
    fn is_transposed(&self, name: &str) -> bool {
        self.transposed.iter().any(|s| name.ends_with(s.as_str()))
    }
    fn legacy(&self, name: &str) -> Option<String> {
        if !self.legacy_layer_norm {
            return None;
        }
        if let Some(b) = name.strip_suffix(".gamma") {
            return Some(format!("{b}.weight"));
        }
        name.strip_suffix(".beta").map(|b| format!("{b}.bias"))
    }
    /// Parameter names a file name may stand for, most specific first.
    pub fn candidates(&self, file_name: &str) -> Vec<String> {
        let mut bases = vec![file_name.to_string()];
        bases.extend(self.legacy(file_name));
        let mut out = Vec::new();
        for b in &bases {
            out.push(b.clone());
            for p in &self.prefixes {
                match b.strip_prefix(p.as_str()) {
                    Some(s) => out.push(s.to_string()),
                    None => out.push(format!("{p}{b}")),
                }
            }
        }
        out
    }
}

/// A shape that differs between the model and the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The parameter name.
    pub name: String,
    /// The file's tensor name.
    pub file_name: String,
    /// The model's shape.
    pub expected: Vec<usize>,
    /// The file's shape (after un-transposing).
    pub got: Vec<usize>,
}

/// What a load did and what did not fit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// `(parameter, file tensor)` pairs that were loaded (or would be, for a failed strict load).
    pub loaded: Vec<(String, String)>,
    /// Parameters with no tensor in the file.
    pub missing: Vec<String>,
    /// File tensors that match no parameter.
    pub unexpected: Vec<String>,
    /// Shape mismatches (never loaded).
    pub shape_mismatches: Vec<ShapeMismatch>,
    /// File tensors skipped on purpose (buffers, tied aliases).
    pub ignored: Vec<String>,
}

impl LoadReport {
    /// True when nothing is missing, unexpected or mismatched.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape_mismatches.is_empty()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "loaded {} tensors", self.loaded.len())?;
        if !self.missing.is_empty() {
            write!(f, "; missing from the file ({}): {}", self.missing.len(), self.missing.join(", "))?;
        }
        if !self.unexpected.is_empty() {
            write!(f, "; unexpected in the file ({}): {}", self.unexpected.len(), self.unexpected.join(", "))?;
        }
        if !self.shape_mismatches.is_empty() {
            let v: Vec<String> = self
                .shape_mismatches
                .iter()
                .map(|m| format!("{} (model {:?}, file {:?} as '{}')", m.name, m.expected, m.got, m.file_name))
                .collect();
            write!(f, "; shape mismatches ({}): {}", v.len(), v.join(", "))?;
        }
        if !self.ignored.is_empty() {
            write!(f, "; ignored {} buffers/tied aliases", self.ignored.len())?;
        }
        Ok(())
    }
}

/// Options of [`load_params`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Error (and load nothing) unless the report is clean.
    pub strict: bool,
}

impl LoadOptions {
    /// Strict loading.
    pub fn strict() -> LoadOptions {
        LoadOptions { strict: true }
    }
}

/// Works out which file tensor goes to which parameter, without loading anything.
pub fn plan_load(file: &StFile, store: &ParamStore, map: &HfNameMap) -> LoadReport {
    let expected: BTreeMap<String, Vec<usize>> = store.params().iter().map(|p| (p.name().to_string(), p.shape())).collect();
    let mut rep = LoadReport::default();
    let mut claimed: BTreeMap<String, String> = BTreeMap::new();
    let names = file.names();
    let mut pending = Vec::new();
    // Pass 1: exact names win; pass 2: renamed candidates.
    for f in &names {
        if map.is_ignored(f) && !expected.contains_key(f) {
            rep.ignored.push(f.clone());
        } else if expected.contains_key(f) {
            claimed.insert(f.clone(), f.clone());
        } else {
            pending.push(f.clone());
        }
    }
    let mut aliases: HashMap<String, String> = HashMap::new();
    for f in pending {
        let hit = map.candidates(&f).into_iter().find(|c| expected.contains_key(c) && !claimed.contains_key(c));
        match hit {
            Some(c) => {
                claimed.insert(c, f);
            }
            None => match map.candidates(&f).iter().find_map(|c| map.tied.iter().find(|(a, _)| a == c)) {
                Some((_, target)) => {
                    aliases.insert(target.clone(), f.clone());
                }
                None => rep.unexpected.push(f),
            },
        }
    }
    for (target, alias) in aliases {
        if expected.contains_key(&target) && !claimed.contains_key(&target) {
            claimed.insert(target, alias);
        } else {
            rep.ignored.push(alias);
        }
    }
    for (name, shape) in &expected {
        let Some(f) = claimed.get(name) else {
            rep.missing.push(name.clone());
            continue;
        };
        let mut got = file.info(f).map(|i| i.shape).unwrap_or_default();
        if map.is_transposed(name) && got.len() == 2 {
            got.reverse();
        }
        if &got != shape {
            rep.shape_mismatches.push(ShapeMismatch { name: name.clone(), file_name: f.clone(), expected: shape.clone(), got });
        } else {
            rep.loaded.push((name.clone(), f.clone()));
        }
    }
    rep.ignored.sort();
    rep.unexpected.sort();
    rep
}

/// Loads `path` into `store` following `map`. Returns the report; with `opts.strict`, a report
/// that is not clean is an error listing every problem, and no parameter is modified.
pub fn load_params(path: impl AsRef<Path>, store: &ParamStore, map: &HfNameMap, opts: &LoadOptions) -> Result<LoadReport> {
    let file = StFile::open(path.as_ref())?;
    load_params_from(&file, store, map, opts)
}

/// [`load_params`] from an already opened file.
pub fn load_params_from(file: &StFile, store: &ParamStore, map: &HfNameMap, opts: &LoadOptions) -> Result<LoadReport> {
    let rep = plan_load(file, store, map);
    if opts.strict && !rep.is_clean() {
        return Err(Error::msg(format!("{}: checkpoint does not fit the model: {rep}", file.path())));
    }
    for (name, f) in &rep.loaded {
        let mut t = file.tensor(f)?;
        if !t.dtype().is_float() {
            return Err(Error::msg(format!("{}: tensor '{f}' has integer dtype {}, parameter '{name}' needs a float", file.path(), t.dtype())));
        }
        if map.is_transposed(name) && t.rank() == 2 {
            t = t.t()?.contiguous()?;
        }
        let p = store.get(name).expect("planned from the store");
        p.assign(&t).map_err(|e| Error::msg(format!("{}: loading '{f}' into '{name}': {e}", file.path())))?;
        if let Some(bad) = crate::params::first_non_finite(std::slice::from_ref(&p))? {
            return Err(Error::msg(format!("{}: tensor '{f}' (parameter '{bad}') holds NaN or infinite values", file.path())));
        }
    }
    Ok(rep)
}

/// The tensors [`save_params`] writes: every parameter under its HF name, transposed where `map`
/// says so. A tied alias is not a parameter (the head uses its target's), so it is absent, as in
/// HF files; a parameter that bears an alias's name is an untied head (GPT-2 with
/// `tie_word_embeddings: false`) and is written.
pub fn hf_tensors(store: &ParamStore, map: &HfNameMap) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for p in store.params() {
        let mut t = p.tensor().detach();
        if map.is_transposed(p.name()) && t.rank() == 2 {
            t = t.t()?.contiguous()?;
        }
        out.push((p.name().to_string(), t));
    }
    Ok(out)
}

/// Writes `store` to `path` (atomically) as HF-named safetensors with `{"format": "pt"}` metadata,
/// converting floats to `dtype` when given (e.g. `Some(DType::BF16)` halves the file).
pub fn save_params(path: impl AsRef<Path>, store: &ParamStore, map: &HfNameMap, dtype: Option<DType>) -> Result<()> {
    let tensors = hf_tensors(store, map)?;
    write_safetensors(path, &tensors, dtype, None)
}
