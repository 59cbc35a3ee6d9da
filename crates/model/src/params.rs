//! Named parameters: [`ParamStore`] (a registry keyed by HF-style names) and [`Param`] (a handle
//! layers keep).
//!
//! A layer asks the store for its weights with [`ParamStore::get_or_init`] (or a [`ParamPath`]) and
//! keeps the returned [`Param`]; in `forward` it calls [`Param::tensor`] to get the current tensor.
//! Going through the handle is what lets [`ParamStore::freeze`] take effect after the model was
//! built: a frozen parameter's tensor does not require grad, so no gradient is computed for it and
//! optimizers skip it. Loading a checkpoint writes into the same storage, so handles stay valid.
//!
//! Random initialisation is deterministic per name: the seed of a parameter is derived from the
//! store's seed and the parameter's name, so creation order does not matter.
//!
//! ```
//! use kiln_model::params::{Init, ParamStore};
//! use kiln_tensor::{DType, Device};
//! let store = ParamStore::new(0, DType::F32, Device::Cpu);
//! let w = store.get_or_init("dense.weight", &[4, 3], Init::Normal { std: 0.02 })?;
//! let b = store.get_or_init("dense.bias", &[4], Init::Zeros)?;
//! assert!(b.no_decay() && !w.no_decay());       // rank-1 tensors get no weight decay
//! store.freeze("dense");                         // name or dotted prefix
//! assert!(!w.tensor().requires_grad());
//! assert_eq!(store.num_params(), 16);
//! # Ok::<(), kiln_tensor::Error>(())
//! ```
use kiln_tensor::{DType, Device, Error, Result, Tensor};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// How a new parameter is filled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// N(0, std²).
    Normal { std: f64 },
    /// Uniform in [lo, hi).
    Uniform { lo: f64, hi: f64 },
    /// All zeros (biases).
    Zeros,
    /// All ones (LayerNorm weights).
    Ones,
    /// A constant.
    Const(f64),
}

struct ParamInner {
    name: String,
    tensor: RwLock<Tensor>,
    frozen: AtomicBool,
    no_decay: AtomicBool,
}

/// A handle on one named parameter. Cheap to clone; all clones see freezes and loads.
#[derive(Clone)]
pub struct Param(Arc<ParamInner>);

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Param({}, {:?}{}{})", self.name(), self.shape(), if self.is_frozen() { ", frozen" } else { "" }, if self.no_decay() { ", no_decay" } else { "" })
    }
}

impl Param {
    fn new(name: &str, t: Tensor, frozen: bool, no_decay: bool) -> Param {
        let t = t.requires_grad_(!frozen);
        Param(Arc::new(ParamInner {
            name: name.to_string(),
            tensor: RwLock::new(t),
            frozen: AtomicBool::new(frozen),
            no_decay: AtomicBool::new(no_decay),
        }))
    }
    /// The parameter's full name (HF layout, e.g. `bert.encoder.layer.0.attention.self.query.weight`).
    pub fn name(&self) -> &str {
        &self.0.name
    }
    /// The current tensor: a leaf that requires grad unless the parameter is frozen. Call this in
    /// `forward` (rather than caching the tensor) so that freezing takes effect.
    pub fn tensor(&self) -> Tensor {
        self.0.tensor.read().unwrap().clone()
    }
    pub fn shape(&self) -> Vec<usize> {
        self.tensor().shape().to_vec()
    }
    pub fn dtype(&self) -> DType {
        self.tensor().dtype()
    }
    pub fn device(&self) -> Device {
        self.tensor().device()
    }
    pub fn elem_count(&self) -> usize {
        self.tensor().elem_count()
    }
    /// The gradient accumulated by the last `backward()` (None if frozen or not reached).
    pub fn grad(&self) -> Option<Tensor> {
        self.tensor().grad()
    }
    /// Replaces the gradient (e.g. after clipping or accumulation scaling).
    pub fn set_grad(&self, g: Option<Tensor>) {
        self.tensor().set_grad(g)
    }
    /// Drops the gradient.
    pub fn zero_grad(&self) {
        self.tensor().zero_grad()
    }
    /// Frozen parameters get no gradient and are skipped by optimizers.
    pub fn is_frozen(&self) -> bool {
        self.0.frozen.load(Ordering::Relaxed)
    }
    /// Whether decoupled weight decay is skipped for this parameter (biases, LayerNorm).
    pub fn no_decay(&self) -> bool {
        self.0.no_decay.load(Ordering::Relaxed)
    }
    /// Marks the parameter as exempt from (or subject to) weight decay.
    pub fn set_no_decay(&self, on: bool) {
        self.0.no_decay.store(on, Ordering::Relaxed)
    }
    /// Freezes or unfreezes. The tensor handle is replaced by one sharing the same data with
    /// `requires_grad` off (or on); the gradient is dropped when freezing.
    pub fn set_frozen(&self, frozen: bool) {
        let mut g = self.0.tensor.write().unwrap();
        if self.0.frozen.swap(frozen, Ordering::Relaxed) == frozen {
            return;
        }
        g.zero_grad();
        *g = g.requires_grad_(!frozen);
    }
    /// Overwrites the data in place with `src` (same shape; converted to this parameter's dtype and
    /// device). Handles and views taken by the model stay valid.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        let t = self.tensor();
        let src = src.to_dtype(t.dtype())?.to_device(t.device())?;
        kiln_tensor::no_grad(|| t.assign(&src))
    }
}

struct StoreInner {
    params: BTreeMap<String, Param>,
    frozen_patterns: Vec<String>,
    /// Inside [`ParamStore::build_for_load`]: new parameters are zeros, not drawn.
    placeholder: bool,
}

/// A registry of named parameters with a default dtype, device and init seed. Cheap to clone
/// (shared).
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<StoreInner>>,
    seed: u64,
    dtype: DType,
    device: Device,
}

/// Whether `name` is `pattern` or lies under it (`pattern` is a dotted prefix: `"bert.embeddings"`
/// matches `"bert.embeddings.word_embeddings.weight"` but not `"bert.embeddings_x"`). A pattern
/// ending in `.` or `*` matches any name starting with the text before the `*`.
pub fn name_matches(name: &str, pattern: &str) -> bool {
    if let Some(p) = pattern.strip_suffix('*') {
        return name.starts_with(p);
    }
    if pattern.ends_with('.') {
        return name.starts_with(pattern);
    }
    name == pattern || (name.starts_with(pattern) && name.as_bytes().get(pattern.len()) == Some(&b'.'))
}

/// The default no-decay rule: rank-0/1 tensors (biases, LayerNorm weights and biases).
pub fn default_no_decay(shape: &[usize]) -> bool {
    shape.len() < 2
}

impl ParamStore {
    /// An empty store whose new parameters are `dtype` on `device`, initialised from `seed`.
    pub fn new(seed: u64, dtype: DType, device: Device) -> ParamStore {
        ParamStore {
            inner: Arc::new(Mutex::new(StoreInner { params: BTreeMap::new(), frozen_patterns: Vec::new(), placeholder: false })),
            seed,
            dtype,
            device,
        }
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The init seed of `name`: FNV-1a of the name mixed with the store seed.
    pub fn seed_for(&self, name: &str) -> u64 {
        crate::io::fnv1a(name.as_bytes()) ^ self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// Returns the parameter `name`, creating it with `init` if absent. An existing parameter of a
    /// different shape is an error naming both shapes. New parameters are frozen if a pattern given
    /// to [`ParamStore::freeze`] matches, and marked no-decay by [`default_no_decay`].
    pub fn get_or_init(&self, name: &str, shape: &[usize], init: Init) -> Result<Param> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(p) = inner.params.get(name) {
            if p.shape() != shape {
                return Err(Error::msg(format!(
                    "param store: '{name}' exists with shape {:?}, requested {shape:?}",
                    p.shape()
                )));
            }
            return Ok(p.clone());
        }
        if name.is_empty() {
            return Err(Error::msg("param store: empty parameter name"));
        }
        let t = if inner.placeholder { Tensor::zeros(shape, self.dtype, self.device)? } else { self.init_tensor(name, shape, init)? };
        let frozen = inner.frozen_patterns.iter().any(|pat| name_matches(name, pat));
        let p = Param::new(name, t, frozen, default_no_decay(shape));
        inner.params.insert(name.to_string(), p.clone());
        Ok(p)
    }

    /// Runs `build` (a model constructor) with the parameters it creates starting as zeros instead
    /// of their random init: for a store whose every parameter is loaded from a checkpoint next
    /// (drawing GPT-2 124M's weights took a third of its loading time). Parameters created after
    /// `build` returns are initialised as usual.
    pub fn build_for_load<R>(&self, build: impl FnOnce(&ParamStore) -> Result<R>) -> Result<R> {
        self.inner.lock().unwrap().placeholder = true;
        let out = build(self);
        self.inner.lock().unwrap().placeholder = false;
        out
    }

    fn init_tensor(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let (dt, dev) = (self.dtype, self.device);
        match init {
            Init::Normal { std } => Tensor::randn(self.seed_for(name), shape, 0.0, std, dt, dev),
            Init::Uniform { lo, hi } => Tensor::rand_uniform(self.seed_for(name), shape, lo, hi, dt, dev),
            Init::Zeros => Tensor::zeros(shape, dt, dev),
            Init::Ones => Tensor::ones(shape, dt, dev),
            Init::Const(v) => Tensor::full(v, shape, dt, dev),
        }
    }

    /// Adds (or replaces) `name` with the data of `t` (converted to a trainable leaf).
    pub fn insert(&self, name: &str, t: &Tensor) -> Param {
        let mut inner = self.inner.lock().unwrap();
        let frozen = inner.frozen_patterns.iter().any(|pat| name_matches(name, pat));
        let p = Param::new(name, t.detach(), frozen, default_no_decay(t.shape()));
        inner.params.insert(name.to_string(), p.clone());
        p
    }

    /// The parameter `name`, if registered.
    pub fn get(&self, name: &str) -> Option<Param> {
        self.inner.lock().unwrap().params.get(name).cloned()
    }
    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.lock().unwrap().params.contains_key(name)
    }
    /// Removes `name` (returns it).
    pub fn remove(&self, name: &str) -> Option<Param> {
        self.inner.lock().unwrap().params.remove(name)
    }
    /// All parameters, sorted by name.
    pub fn params(&self) -> Vec<Param> {
        self.inner.lock().unwrap().params.values().cloned().collect()
    }
    /// Parameter names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.inner.lock().unwrap().params.keys().cloned().collect()
    }
    /// `(name, tensor)` pairs sorted by name.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.params().into_iter().map(|p| (p.name().to_string(), p.tensor())).collect()
    }
    /// The parameters an optimizer should update (not frozen), sorted by name.
    pub fn trainable(&self) -> Vec<Param> {
        self.params().into_iter().filter(|p| !p.is_frozen()).collect()
    }
    /// Parameters whose name matches `pattern` (see [`name_matches`]).
    pub fn matching(&self, pattern: &str) -> Vec<Param> {
        self.params().into_iter().filter(|p| name_matches(p.name(), pattern)).collect()
    }
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().params.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Freezes every parameter matching `pattern` (a full name or dotted prefix), now and for
    /// parameters created later. Returns how many existing parameters matched.
    pub fn freeze(&self, pattern: &str) -> usize {
        let mut inner = self.inner.lock().unwrap();
        if !inner.frozen_patterns.iter().any(|p| p == pattern) {
            inner.frozen_patterns.push(pattern.to_string());
        }
        let ps: Vec<Param> = inner.params.values().filter(|p| name_matches(p.name(), pattern)).cloned().collect();
        drop(inner);
        ps.iter().for_each(|p| p.set_frozen(true));
        ps.len()
    }

    /// Unfreezes every parameter matching `pattern` and forgets frozen patterns it covers.
    /// Returns how many existing parameters matched.
    pub fn unfreeze(&self, pattern: &str) -> usize {
        let mut inner = self.inner.lock().unwrap();
        inner.frozen_patterns.retain(|p| !name_matches(p.trim_end_matches(['.', '*']), pattern) && p != pattern);
        let ps: Vec<Param> = inner.params.values().filter(|p| name_matches(p.name(), pattern)).cloned().collect();
        drop(inner);
        ps.iter().for_each(|p| p.set_frozen(false));
        ps.len()
    }

    /// Sets the no-decay flag of every parameter matching `pattern`; returns how many matched.
    pub fn set_no_decay(&self, pattern: &str, on: bool) -> usize {
        let ps = self.matching(pattern);
        ps.iter().for_each(|p| p.set_no_decay(on));
        ps.len()
    }

    /// Drops every parameter's gradient.
    pub fn zero_grad(&self) {
        self.params().iter().for_each(|p| p.zero_grad());
    }
    /// Total number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.elem_count()).sum()
    }
    /// Number of scalar parameters that are not frozen.
    pub fn num_trainable(&self) -> usize {
        self.trainable().iter().map(|p| p.elem_count()).sum()
    }

    /// A path helper rooted at `prefix` (VarBuilder style).
    pub fn path(&self, prefix: &str) -> ParamPath {
        ParamPath { store: self.clone(), prefix: prefix.trim_end_matches('.').to_string() }
    }
}

/// A [`ParamStore`] plus a dotted name prefix: `store.path("bert").pp("encoder").pp(0)` creates
/// names `bert.encoder.0.*`.
#[derive(Clone)]
pub struct ParamPath {
    store: ParamStore,
    prefix: String,
}

impl ParamPath {
    /// A child path `prefix.part`.
    pub fn pp(&self, part: impl std::fmt::Display) -> ParamPath {
        let part = part.to_string();
        let prefix = if self.prefix.is_empty() { part } else if part.is_empty() { self.prefix.clone() } else { format!("{}.{}", self.prefix, part) };
        ParamPath { store: self.store.clone(), prefix }
    }
    /// The full name of `leaf` under this path.
    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{}", self.prefix, leaf)
        }
    }
    /// [`ParamStore::get_or_init`] on `prefix.leaf`.
    pub fn get_or_init(&self, leaf: &str, shape: &[usize], init: Init) -> Result<Param> {
        self.store.get_or_init(&self.name(leaf), shape, init)
    }
    /// The store behind this path.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }
    /// The dotted prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// The name of the first parameter holding a NaN or an infinity, if any.
pub fn first_non_finite(params: &[Param]) -> Result<Option<String>> {
    for p in params {
        let t = p.tensor();
        let bad = match (t.dtype(), t.device()) {
            (kiln_tensor::DType::F32, kiln_tensor::Device::Cpu) => t.with_slice::<f32, _>(|s| s.iter().any(|x| !x.is_finite()))?,
            _ => t.to_vec_f64()?.iter().any(|x| !x.is_finite()),
        };
        if bad {
            return Ok(Some(p.name().to_string()));
        }
    }
    Ok(None)
}
