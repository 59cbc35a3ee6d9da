//! Activation recomputation ("gradient checkpointing"): [`checkpoint`] runs a function of some
//! tensors without recording its graph, records one node in its place that keeps only the inputs,
//! and in the backward runs the function again with grad mode on and back-propagates through that
//! fresh sub-graph. Memory: the activations inside the function live only while its backward
//! runs; cost: one more forward of the function.
//!
//! **Parameters and other captured tensors.** The function may use tensors that it does not take
//! as inputs (a layer's weights, captured by the closure). While the first (no-grad) run is in
//! progress, every op that reads a tensor requiring grad notes it ([`note`]; all ops record their
//! history through `Tensor::with_history` or a view, which call it); those tensors become inputs
//! of the checkpoint node too. In the backward the recomputed sub-graph stops at them: their
//! gradients are not written into `.grad()` by the inner backward but returned as the node's
//! input gradients, so the outer backward sums and accumulates them exactly as it would without
//! the checkpoint (a weight used inside and outside, or by several checkpointed blocks, is summed
//! once per use, in the same order; nothing is counted twice).
//!
//! **Same function twice.** The recompute must compute what the first run computed: the function
//! must be deterministic given its inputs and captures. kiln's random ops are counter-based (the
//! dropout mask depends only on its seed and the element index: [`crate::ops::dropout`]), so a
//! function that draws the same seeds draws the same masks; kiln-model's `ForwardCtx::checkpoint`
//! replays the context's seed stream for this. The function's ops must run on the calling thread
//! (kernels may use rayon inside; the graph is recorded by the caller).
use crate::autograd::{grad_mode_guard, is_grad_enabled, node, BackwardOp};
use crate::{Error, Result, Tensor, TensorId};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The function a checkpoint runs (and runs again in the backward).
pub type CheckpointFn = dyn Fn(&[Tensor]) -> Result<Tensor> + Send + Sync;

/// Outer tensors requiring grad read by the function during its no-grad run.
#[derive(Default)]
struct Capture {
    seen: HashSet<TensorId>,
    tensors: Vec<Tensor>,
}

thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static CAPTURE: RefCell<Option<Capture>> = const { RefCell::new(None) };
}

/// Called by every op on its inputs when it records no history because grad mode is off: inside
/// a checkpoint's first run, the inputs that require grad are tensors from outside the function
/// (what it computes itself requires no grad there), and are noted. One thread-local read
/// otherwise.
#[inline]
pub(crate) fn note(inputs: &[&Tensor]) {
    if CAPTURING.with(|c| c.get()) {
        note_slow(inputs);
    }
}

#[cold]
fn note_slow(inputs: &[&Tensor]) {
    CAPTURE.with(|c| {
        if let Some(cap) = c.borrow_mut().as_mut() {
            for t in inputs.iter().filter(|t| t.requires_grad()) {
                if cap.seen.insert(t.id()) {
                    cap.tensors.push((*t).clone());
                }
            }
        }
    });
}

/// A capture in progress on this thread; dropping it (also on an error or a panic) restores the
/// capture it interrupted.
struct CaptureScope {
    prev: Option<Capture>,
    prev_on: bool,
}

impl CaptureScope {
    fn begin() -> CaptureScope {
        let prev = CAPTURE.with(|c| c.borrow_mut().replace(Capture::default()));
        let prev_on = CAPTURING.with(|c| c.replace(true));
        CaptureScope { prev, prev_on }
    }
    fn take(&self) -> Vec<Tensor> {
        CAPTURE.with(|c| c.borrow_mut().take().map(|c| c.tensors).unwrap_or_default())
    }
}

impl Drop for CaptureScope {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = self.prev.take());
        CAPTURING.with(|c| c.set(self.prev_on));
    }
}

/// Runs `f(inputs)` keeping only the inputs for the backward, which runs `f` again (see the
/// module docs). Returns `f`'s output; in grad mode it records one node whose backward returns
/// the gradients of `inputs` and of every tensor requiring grad that `f` reads from its captures
/// (parameters), as if `f`'s ops had been recorded one by one.
///
/// Without grad mode (inference, or inside another checkpoint's first run) it is `f(inputs)`.
/// `f` must compute the same values each time it is called with the same inputs; its output's
/// shape is checked in the backward.
///
/// ```
/// use kiln_tensor::{checkpoint, DType, Device, Tensor};
/// let w = Tensor::randn(1, &[4, 4], 0.0, 1.0, DType::F32, Device::Cpu)?.var();
/// let x = Tensor::randn(2, &[3, 4], 0.0, 1.0, DType::F32, Device::Cpu)?.var();
/// let w2 = w.clone();
/// let y = checkpoint(&[x.clone()], move |xs| xs[0].matmul(&w2)?.gelu())?;
/// y.sum_all()?.backward()?;
/// assert_eq!((x.grad().unwrap().shape(), w.grad().unwrap().shape()), (&[3, 4][..], &[4, 4][..]));
/// # Ok::<(), kiln_tensor::Error>(())
/// ```
pub fn checkpoint<F>(inputs: &[Tensor], f: F) -> Result<Tensor>
where
    F: Fn(&[Tensor]) -> Result<Tensor> + Send + Sync + 'static,
{
    if !is_grad_enabled() {
        return f(inputs);
    }
    let detached: Vec<Tensor> = inputs.iter().map(Tensor::detach).collect();
    let (y, captured) = {
        let _no_grad = grad_mode_guard(false);
        let _r = crate::nvtx::range("checkpoint");
        let scope = CaptureScope::begin();
        let y = f(&detached)?;
        // an output that is itself a captured tensor (passed through) was read by no op
        note(&[&y]);
        (y, scope.take())
    };
    if !inputs.iter().any(Tensor::requires_grad) && captured.is_empty() {
        return Ok(y);
    }
    let out_shape = y.shape().to_vec();
    let all: Vec<Tensor> = inputs.iter().chain(&captured).cloned().collect();
    let refs: Vec<&Tensor> = all.iter().collect();
    Ok(y.detach().with_history(&refs, || node(CheckpointBackward { inputs: inputs.to_vec(), captured, f: Arc::new(f), out_shape })))
}

/// The checkpoint's node: its inputs, the captured tensors and the function.
struct CheckpointBackward {
    inputs: Vec<Tensor>,
    captured: Vec<Tensor>,
    f: Arc<CheckpointFn>,
    out_shape: Vec<usize>,
}

impl BackwardOp for CheckpointBackward {
    crate::autograd::backward_io!(|s| "checkpoint", inputs = s.inputs.iter().chain(&s.captured).cloned().collect());
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        // fresh leaves on the inputs' data: the recomputed graph ends at them
        let xs: Vec<Tensor> = self.inputs.iter().map(|x| x.requires_grad_(x.requires_grad())).collect();
        let y = {
            let _grad = grad_mode_guard(true);
            let _r = crate::nvtx::range("checkpoint.recompute");
            (self.f)(&xs)?
        };
        if y.shape() != self.out_shape.as_slice() {
            return Err(Error::Backward(format!(
                "checkpoint: the recomputed output has shape {:?}, the first run's {:?} (the function must compute the same thing each time)",
                y.shape(),
                self.out_shape
            )));
        }
        let n = self.inputs.len() + self.captured.len();
        if !y.requires_grad() {
            return Ok(vec![None; n]);
        }
        let stop: HashSet<TensorId> = xs.iter().filter(|x| x.requires_grad()).chain(&self.captured).map(Tensor::id).collect();
        let mut got: HashMap<TensorId, Tensor> = y.backward_until(g.clone(), &stop)?;
        Ok(xs.iter().chain(&self.captured).map(|t| got.remove(&t.id())).collect())
    }
}
