//! Reverse-mode autograd: each differentiable op records a [`BackwardOp`] node; `backward()` sorts the
//! graph topologically from a scalar loss, runs each node once, accumulates gradients on leaves and
//! frees the graph.
use crate::{DType, Error, Result, Tensor, TensorId};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The backward rule of one recorded op.
pub trait BackwardOp: Send + Sync {
    /// The op's name (used in error messages).
    fn name(&self) -> &'static str;
    /// The inputs gradients flow to, in the order `backward` returns them.
    fn inputs(&self) -> Vec<Tensor>;
    /// Given dL/d(output), returns dL/d(input) for each input (None where no gradient flows).
    /// Runs with grad mode off; gradients have the input's shape.
    fn backward(&self, grad_out: &Tensor) -> Result<Vec<Option<Tensor>>>;
    /// For a single-input op whose gradient covers only part of its input (narrow): add the gradient
    /// for `grad_out` into `acc`, the input's gradient summed so far, in place, and return true; or
    /// return false (the default), leaving `acc` as it was, to have `backward` + add do it.
    fn accumulate(&self, _grad_out: &Tensor, _acc: &mut Option<Tensor>) -> Result<bool> {
        Ok(false)
    }
}

/// The `name()` and `inputs()` of a [`BackwardOp`] impl, written once:
/// `backward_io!(|s| OP, [s.x, s.w])` names the op and lists the input tensors (fields or any
/// expressions over `s`, the node), cloned in that order; `opt [s.w, s.b]` appends `Option<Tensor>`
/// inputs that are present; `inputs = expr` gives the `Vec<Tensor>` itself.
macro_rules! backward_io {
    (|$s:ident| $name:expr, [$($i:expr),*] $(, opt [$($o:expr),*])?) => {
        $crate::autograd::backward_io!(|$s| $name, inputs = {
            #[allow(unused_mut)]
            let mut v = vec![$($i.clone()),*];
            $($(v.extend($o.clone());)*)?
            v
        });
    };
    (|$s:ident| $name:expr, inputs = $inputs:expr) => {
        fn name(&self) -> &'static str {
            #[allow(unused_variables)]
            let $s: &Self = self;
            $name
        }
        fn inputs(&self) -> Vec<$crate::Tensor> {
            let $s: &Self = self;
            $inputs
        }
    };
}
pub(crate) use backward_io;

pub use crate::checkpoint::checkpoint;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops record the graph on this thread.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Restores the previous grad mode when dropped.
pub struct GradModeGuard(bool);
impl Drop for GradModeGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.0));
    }
}

/// Turns graph recording off until the guard is dropped.
pub fn no_grad_guard() -> GradModeGuard {
    grad_mode_guard(false)
}

/// Sets grad mode to `on` until the guard is dropped (a checkpoint's recompute turns it on inside
/// a backward).
pub(crate) fn grad_mode_guard(on: bool) -> GradModeGuard {
    let prev = GRAD_ENABLED.with(|g| g.replace(on));
    GradModeGuard(prev)
}

/// Runs `f` without recording the graph (inference, optimizer updates).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = no_grad_guard();
    f()
}

impl Tensor {
    /// Back-propagates from this scalar: every leaf that requires grad gets dL/dleaf added to `.grad()`.
    /// The graph is freed afterwards; a second call on the same graph is an error.
    pub fn backward(&self) -> Result<()> {
        if self.elem_count() != 1 {
            return Err(Error::Backward(format!("backward needs a scalar (one element), got shape {:?}", self.shape())));
        }
        if !self.requires_grad() {
            return Err(Error::Backward("the tensor does not require grad (no input of its graph is a trainable leaf)".into()));
        }
        let seed = Tensor::ones(self.shape(), self.dtype(), self.device())?;
        self.backward_with(seed)
    }

    /// Back-propagates with an explicit dL/d(self) of the same shape.
    pub fn backward_with(&self, grad: Tensor) -> Result<()> {
        self.backward_until(grad, &HashSet::new()).map(|_| ())
    }

    /// [`Tensor::backward_with`] over the part of the graph above `stop`: the tensors in `stop` are
    /// treated as the graph's inputs, and their gradients (summed over their uses) are returned
    /// instead of being accumulated into `.grad()` or propagated further (their nodes, if any, are
    /// left alone). With `stop` empty this is `backward_with`. Used by [`crate::checkpoint`].
    pub(crate) fn backward_until(&self, grad: Tensor, stop: &HashSet<TensorId>) -> Result<HashMap<TensorId, Tensor>> {
        if grad.shape() != self.shape() {
            return Err(Error::ShapeMismatch { op: "backward", lhs: self.shape().to_vec(), rhs: grad.shape().to_vec() });
        }
        let _g = no_grad_guard();
        let _range = crate::nvtx::range("backward");
        let mut order = topo_order(self, stop);
        let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
        let mut reached = HashMap::new();
        grads.insert(self.id(), grad);
        // popped, so each tensor (and its buffer) is let go once its node has run
        while let Some(t) = order.pop() {
            let Some(g) = grads.remove(&t.id()) else { continue };
            if stop.contains(&t.id()) {
                reached.insert(t.id(), g);
                continue;
            }
            let node = t.0.node.lock().unwrap().take();
            match node {
                None => {
                    if !t.requires_grad() {
                        continue;
                    }
                    if t.0.freed.load(std::sync::atomic::Ordering::Relaxed) {
                        return Err(Error::Backward("the graph was already freed by an earlier backward()".into()));
                    }
                    let mut slot = t.0.grad.lock().unwrap();
                    let g = if g.dtype() != t.dtype() { g.to_dtype(t.dtype())? } else { g };
                    *slot = Some(match slot.take() {
                        Some(prev) => prev.add(&g)?,
                        None => g.contiguous()?,
                    });
                }
                Some(op) => {
                    let _range = crate::nvtx::range_with(|| format!("{}.backward", op.name()));
                    t.0.freed.store(true, std::sync::atomic::Ordering::Relaxed);
                    let inputs = op.inputs();
                    if let [inp] = inputs.as_slice() {
                        if inp.requires_grad() {
                            let mut acc = grads.remove(&inp.id());
                            let done = op.accumulate(&g, &mut acc)?;
                            if let Some(a) = acc {
                                grads.insert(inp.id(), a);
                            }
                            if done {
                                continue;
                            }
                        }
                    }
                    let in_grads = op.backward(&g)?;
                    if in_grads.len() != inputs.len() {
                        return Err(Error::Backward(format!("{}: returned {} gradients for {} inputs", op.name(), in_grads.len(), inputs.len())));
                    }
                    for (inp, ig) in inputs.iter().zip(in_grads) {
                        let Some(ig) = ig else { continue };
                        if !inp.requires_grad() {
                            continue;
                        }
                        if ig.shape() != inp.shape() {
                            return Err(Error::Backward(format!(
                                "{}: gradient shape {:?} does not match input shape {:?}",
                                op.name(),
                                ig.shape(),
                                inp.shape()
                            )));
                        }
                        let acc = match grads.remove(&inp.id()) {
                            Some(prev) => prev.add(&ig)?,
                            None => ig,
                        };
                        grads.insert(inp.id(), acc);
                    }
                }
            }
        }
        Ok(reached)
    }
}

/// Tensors reachable from `root` through recorded nodes, not looking past the tensors in `stop`,
/// in topological order (inputs first).
fn topo_order(root: &Tensor, stop: &HashSet<TensorId>) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut visited: HashSet<TensorId> = HashSet::new();
    // Iterative DFS: (tensor, children_pushed)
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !visited.insert(t.id()) {
            continue;
        }
        let inputs = match stop.contains(&t.id()) {
            true => Vec::new(),
            false => t.0.node.lock().unwrap().as_ref().map(|n| n.inputs()).unwrap_or_default(),
        };
        stack.push((t, true));
        for i in inputs {
            if i.requires_grad() && !visited.contains(&i.id()) {
                stack.push((i, false));
            }
        }
    }
    order
}

/// Backward of `contiguous()` and other copies: the gradient passes through.
pub(crate) struct Identity {
    pub input: Tensor,
}
impl BackwardOp for Identity {
    backward_io!(|s| "contiguous", [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.clone())])
    }
}

/// Backward of a device transfer: move the gradient back.
pub(crate) struct ToDevice {
    pub input: Tensor,
}
impl BackwardOp for ToDevice {
    backward_io!(|s| "to_device", [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.to_device(self.input.device())?)])
    }
}

/// Backward of a dtype cast: cast the gradient back.
pub(crate) struct Cast {
    pub input: Tensor,
    pub from: DType,
}
impl BackwardOp for Cast {
    backward_io!(|s| "to_dtype", [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.to_dtype(self.from)?)])
    }
}

/// Reduces a broadcast gradient back to `shape` by summing over broadcast dims.
pub fn sum_to_shape(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let extra = g.rank() - shape.len();
    let mut dims = Vec::new();
    for (i, &d) in g.shape().iter().enumerate() {
        if i < extra || (shape[i - extra] == 1 && d != 1) {
            dims.push(i);
        }
    }
    let s = g.sum_dims(&dims, true)?;
    s.reshape(shape)
}

/// A node that ties any `Arc<dyn BackwardOp>` constructor type together (helper for op modules).
pub fn node<T: BackwardOp + 'static>(op: T) -> Arc<dyn BackwardOp> {
    Arc::new(op)
}
