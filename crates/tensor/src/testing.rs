//! Test helpers shared by unit and integration tests: f64 central-difference gradchecks and
//! comparisons against reference implementations.
use crate::{DType, Device, Error, Result, Tensor};

/// Seeded random f64 tensor, values in N(0, 1), marked as a trainable leaf.
pub fn rand_var(seed: u64, shape: &[usize]) -> Tensor {
    Tensor::randn(seed, shape, 0.0, 1.0, DType::F64, Device::Cpu).expect("randn").var()
}

/// Checks analytic gradients of `f` against central differences in f64.
///
/// `f` maps the inputs to any tensor; the scalar checked is `sum(f(x) * w)` with a fixed random `w`,
/// so every output element contributes with a distinct weight. Inputs must be f64 leaves.
/// Fails with the worst element's details when `|analytic - numeric| > atol + rtol * |numeric|`.
pub fn gradcheck<F>(name: &str, inputs: &[Tensor], f: F) -> Result<()>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    gradcheck_tol(name, inputs, f, 1e-6, 1e-6, 1e-5)
}

/// [`gradcheck`] with explicit step `eps` and tolerances.
pub fn gradcheck_tol<F>(name: &str, inputs: &[Tensor], f: F, eps: f64, atol: f64, rtol: f64) -> Result<()>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    for t in inputs {
        if t.dtype() != DType::F64 {
            return Err(Error::msg(format!("gradcheck {name}: inputs must be f64")));
        }
    }
    let out = f(inputs)?;
    let w = Tensor::randn(0xC0FFEE, out.shape(), 0.0, 1.0, DType::F64, Device::Cpu)?;
    let scalar = |xs: &[Tensor]| -> Result<f64> { crate::no_grad(|| f(xs)?.mul(&w)?.sum_all()?.to_scalar()) };
    for t in inputs {
        t.zero_grad();
    }
    out.mul(&w)?.sum_all()?.backward()?;
    for (k, t) in inputs.iter().enumerate() {
        if !t.requires_grad() {
            continue;
        }
        let analytic = match t.grad() {
            Some(g) => g.to_vec_f64()?,
            None => vec![0.0; t.elem_count()],
        };
        let base = t.to_vec_f64()?;
        for i in 0..base.len() {
            let mut xs: Vec<Tensor> = inputs.iter().map(|x| x.detach()).collect();
            let mut plus = base.clone();
            plus[i] += eps;
            xs[k] = Tensor::from_vec(plus, t.shape())?;
            let fp = scalar(&xs)?;
            let mut minus = base.clone();
            minus[i] -= eps;
            xs[k] = Tensor::from_vec(minus, t.shape())?;
            let fm = scalar(&xs)?;
            let numeric = (fp - fm) / (2.0 * eps);
            let a = analytic[i];
            if !((a - numeric).abs() <= atol + rtol * numeric.abs()) {
                return Err(Error::msg(format!(
                    "gradcheck {name}: input {k} {:?} element {i}: analytic {a:.9e} vs numeric {numeric:.9e}",
                    t.shape()
                )));
            }
        }
    }
    Ok(())
}

/// Max |a - b| / max(1, |b|) over all elements; errors on a shape mismatch.
pub fn max_rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.shape() != b.shape() {
        return Err(Error::ShapeMismatch { op: "max_rel_err", lhs: a.shape().to_vec(), rhs: b.shape().to_vec() });
    }
    let (x, y) = (a.to_vec_f64()?, b.to_vec_f64()?);
    Ok(x.iter().zip(&y).map(|(p, q)| if p.is_nan() || q.is_nan() { f64::INFINITY } else { (p - q).abs() / q.abs().max(1.0) }).fold(0.0, f64::max))
}

/// Asserts `max_rel_err(a, b) <= tol`, with a message naming `what`.
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let e = max_rel_err(a, b).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(e <= tol, "{what}: max relative error {e:.3e} > {tol:.1e}");
}
