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

// ----- GPU tests -----------------------------------------------------------------------------------

/// The CUDA device GPU tests run on, or `None` after printing `SKIPPED (no CUDA device): <test>`
/// to stderr. With a device it also turns on NaN-poisoning of every new op output buffer, so an
/// element a kernel forgets to write fails the comparison.
///
/// Set `KILN_REQUIRE_GPU=1` (the GPU-machine runner does) to make a missing device a test
/// failure instead of a skip.
pub fn gpu_device(test: &str) -> Option<Device> {
    if crate::cuda::is_available() {
        #[cfg(feature = "cuda")]
        crate::cuda::storage::set_poison(true);
        return Some(Device::Cuda(0));
    }
    if std::env::var("KILN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("{test}: KILN_REQUIRE_GPU=1 but no CUDA device was found (libcuda.so.1 not loadable or no GPU)");
    }
    eprintln!("SKIPPED (no CUDA device): {test}");
    None
}

/// Tolerance of a GPU result against the CPU reference, as the largest `|gpu - cpu|` over the
/// largest `|cpu|` (scale-relative, so sums over many elements do not need special cases).
/// One row per dtype: f32 (strict FP32 GEMM, f32 kernels), bf16 (8 bits of mantissa), f16.
pub fn gpu_tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 2e-5,
        DType::BF16 => 2e-2,
        DType::F16 => 4e-3,
        DType::F64 => 1e-12,
        DType::I64 => 0.0,
    }
}

/// `max|a - b| / max|b|` over all elements (0 when both are all zero); NaN anywhere gives NaN.
pub fn scaled_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.shape() != b.shape() {
        return Err(Error::ShapeMismatch { op: "scaled_err", lhs: a.shape().to_vec(), rhs: b.shape().to_vec() });
    }
    let (va, vb) = (a.to_vec_f64()?, b.to_vec_f64()?);
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (x, y) in va.iter().zip(&vb) {
        let d = (x - y).abs();
        if d.is_nan() {
            return Ok(f64::NAN);
        }
        num = num.max(d);
        den = den.max(y.abs());
    }
    Ok(if num == 0.0 { 0.0 } else { num / den.max(1e-30) })
}
