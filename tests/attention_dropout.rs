//! Attention-probability dropout inside the fused attention op (`AttentionOpts::dropout`), on the
//! CPU: the fused op against a composed reference that builds the keep mask itself with the public
//! keep function (values and gradients of q, k, v, every SIMD level, f32 and f64, odd sizes,
//! causal and key padding), an f64 gradcheck with the mask fixed by its seed, the keep fraction and
//! the mask positions over a large attention, seeds, p = 0 against no dropout bit for bit, half
//! types, and bad `p`.
//!
//! Tolerances (max |a - b| / max(1, |b|)): f64 1e-10 (values) and 1e-9 (gradients); f32 1e-4.
use kiln::tensor::cpu::simd;
use kiln::tensor::ops::attention::{AttentionOpts, AttnDropout};
use kiln::tensor::ops::dropout::{keep, threshold};
use kiln::tensor::testing::{assert_close, gradcheck, max_rel_err, rand_var};
use kiln::{DType, Device, Result, Tensor};

/// One problem; `pad` drops every third key except key 0 (so no row is fully masked, which the
/// composed softmax would turn into NaN).
#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    h: usize,
    tq: usize,
    tk: usize,
    d: usize,
    dv: usize,
    causal: bool,
    pad: bool,
    p: f64,
    seed: u64,
}

impl Case {
    fn new(b: usize, h: usize, tq: usize, tk: usize, d: usize, dv: usize) -> Self {
        Case { b, h, tq, tk, d, dv, causal: false, pad: false, p: 0.1, seed: 42 }
    }
    fn with(self, causal: bool, pad: bool, p: f64) -> Self {
        Case { causal, pad, p, ..self }
    }
    fn kept(&self, b: usize, j: usize) -> bool {
        !self.pad || j == 0 || (j + b) % 3 != 2
    }
    fn opts(&self) -> AttentionOpts {
        let mask = self.pad.then(|| Tensor::from_vec((0..self.b * self.tk).map(|x| self.kept(x / self.tk, x % self.tk) as i64).collect(), &[self.b, self.tk]).unwrap());
        AttentionOpts { causal: self.causal, key_padding_mask: mask, scale: None, dropout: Some(AttnDropout { p: self.p, seed: self.seed }) }
    }
    /// q, k, v in `dtype` as [B, H, T, d] views of [B, T, H, d] leaves (the layout models produce).
    fn inputs(&self, dtype: DType) -> [Tensor; 3] {
        let mk = |s: u64, t: usize, d: usize| Tensor::randn(s, &[self.b, t, self.h, d], 0.0, 1.0, dtype, Device::Cpu).unwrap().var();
        [mk(1, self.tq, self.d), mk(2, self.tk, self.d), mk(3, self.tk, self.dv)]
    }
    /// The keep mask over [B, H, Tq, Tk] as factors 1/(1-p) or 0, built element by element with the
    /// dropout op's public keep function and the counter ((b·H + h)·Tq + i)·Tk + j.
    fn keep_factors(&self, dtype: DType) -> Tensor {
        let (thr, scale) = (threshold(self.p), 1.0 / (1.0 - self.p));
        let n = self.b * self.h * self.tq * self.tk;
        let f: Vec<f64> = (0..n as u64).map(|idx| if keep(self.seed, idx, thr) { scale } else { 0.0 }).collect();
        Tensor::from_vec(f, &[self.b, self.h, self.tq, self.tk]).unwrap().to_dtype(dtype).unwrap()
    }
}

/// Explicit `softmax(q·kᵀ·scale + masks) ∘ M/(1-p) · v` on q, k, v `[B, H, T, d]`.
fn composed(c: &Case, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let mut s = q.matmul(&k.t()?)?.mul_scalar(1.0 / (c.d as f64).sqrt())?;
    if c.causal {
        let hide: Vec<f64> = (0..c.tq * c.tk).map(|x| (x % c.tk > x / c.tk) as u8 as f64).collect();
        s = s.masked_fill(&Tensor::from_vec(hide, &[c.tq, c.tk])?.to_dtype(s.dtype())?, f64::NEG_INFINITY)?;
    }
    if c.pad {
        let hide: Vec<f64> = (0..c.b * c.tk).map(|x| !c.kept(x / c.tk, x % c.tk) as u8 as f64).collect();
        s = s.masked_fill(&Tensor::from_vec(hide, &[c.b, 1, 1, c.tk])?.to_dtype(s.dtype())?, f64::NEG_INFINITY)?;
    }
    s.softmax_last_dim()?.mul(&c.keep_factors(s.dtype()))?.matmul(v)
}

/// (out, dq, dk, dv) of `sum(f(q, k, v) * w)` for the [B, H, T, d] views of `xs`.
fn run(xs: &[Tensor; 3], w: &Tensor, f: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>) -> [Tensor; 4] {
    for x in xs {
        x.zero_grad();
    }
    let view = |x: &Tensor| x.transpose(1, 2).unwrap();
    let out = f(&view(&xs[0]), &view(&xs[1]), &view(&xs[2])).unwrap();
    out.mul(w).unwrap().sum_all().unwrap().backward().unwrap();
    let g = |x: &Tensor| x.grad().expect("a gradient");
    [out.detach(), g(&xs[0]), g(&xs[1]), g(&xs[2])]
}

fn check_against_composed(c: &Case, dtype: DType, level: simd::Level) {
    let xs = c.inputs(dtype);
    let w = Tensor::randn(9, &[c.b, c.h, c.tq, c.dv], 0.0, 1.0, dtype, Device::Cpu).unwrap();
    let opts = c.opts();
    let fused = simd::with_level(level, || run(&xs, &w, |q, k, v| q.attention(k, v, &opts)));
    let want = run(&xs, &w, |q, k, v| composed(c, q, k, v));
    let (tf, tb) = if dtype == DType::F64 { (1e-10, 1e-9) } else { (1e-4, 1e-4) };
    for (n, (a, b)) in fused.iter().zip(&want).enumerate() {
        let what = ["out", "dq", "dk", "dv"][n];
        assert_close(&format!("{what} {c:?} {dtype} {level:?}"), a, b, if n == 0 { tf } else { tb });
    }
}

#[test]
fn fused_dropout_matches_composed_reference_at_every_simd_level() {
    // odd sizes; one case with several forward (64 x 128) and backward (64 x 64) tiles and key
    // chunks, and one with dv != d
    let shapes = [Case::new(2, 3, 37, 53, 24, 24), Case::new(1, 2, 130, 200, 16, 16), Case::new(2, 1, 9, 70, 8, 5)];
    for base in shapes {
        for (causal, pad) in [(false, false), (true, false), (false, true), (true, true)] {
            let c = base.with(causal, pad, if pad { 0.5 } else { 0.1 });
            for level in simd::available_levels() {
                for dtype in [DType::F32, DType::F64] {
                    check_against_composed(&c, dtype, level);
                }
            }
        }
    }
}

#[test]
fn gradcheck_with_dropout_f64() {
    // The mask is fixed by the seed, so the function is deterministic and smooth where it is kept.
    let small = Case::new(2, 2, 5, 6, 3, 4);
    let tiles = Case::new(1, 1, 70, 67, 2, 1);
    for c in [small.with(false, false, 0.3), small.with(true, true, 0.3), tiles.with(true, true, 0.2)] {
        let leaf = |s: u64, t: usize, d: usize| rand_var(s, &[c.b, t, c.h, d]);
        let xs = [leaf(5, c.tq, c.d), leaf(6, c.tk, c.d), leaf(7, c.tk, c.dv)];
        let opts = c.opts();
        gradcheck(&format!("attention dropout {c:?}"), &xs, |x| x[0].transpose(1, 2)?.attention(&x[1].transpose(1, 2)?, &x[2].transpose(1, 2)?, &opts)).unwrap();
    }
}

/// With q = 0 every probability is 1/Tk and v = I reads P ∘ M/(1-p) out directly: out[.., i, j]
/// is 1/(Tk (1-p)) where (i, j) is kept and 0 where it is dropped.
fn probabilities_read_out(c: &Case) -> Vec<f64> {
    let q = Tensor::zeros(&[c.b, c.h, c.tq, c.d], DType::F64, Device::Cpu).unwrap();
    let k = Tensor::randn(4, &[c.b, c.h, c.tk, c.d], 0.0, 1.0, DType::F64, Device::Cpu).unwrap();
    let eye: Vec<f64> = (0..c.tk * c.tk).map(|x| (x / c.tk == x % c.tk) as u8 as f64).collect();
    let v = Tensor::from_vec(eye, &[1, 1, c.tk, c.tk]).unwrap().broadcast_as(&[c.b, c.h, c.tk, c.tk]).unwrap();
    q.attention(&k, &v, &c.opts()).unwrap().to_vec_f64().unwrap()
}

#[test]
fn keep_fraction_mask_positions_and_seeds() {
    for p in [0.1, 0.5] {
        let c = Case::new(2, 4, 256, 256, 8, 256).with(false, false, p);
        let out = probabilities_read_out(&c);
        let d = AttnDropout { p, seed: c.seed };
        let want = 1.0 / (c.tk as f64 * (1.0 - p));
        let mut kept = 0usize;
        for (idx, &x) in out.iter().enumerate() {
            // every element is exactly where the public keep function puts it
            let (bh, i, j) = (idx / (c.tq * c.tk), idx / c.tk % c.tq, idx % c.tk);
            let k = d.keeps(AttnDropout::index(c.h, c.tq, c.tk, bh / c.h, bh % c.h, i, j));
            assert!(if k { (x - want).abs() < 1e-12 } else { x == 0.0 }, "p {p}: element {idx} = {x}, kept {k}");
            kept += k as usize;
        }
        let n = out.len() as f64;
        let (frac, se) = (kept as f64 / n, (p * (1.0 - p) / n).sqrt());
        assert!((frac - (1.0 - p)).abs() < 4.0 * se, "p {p}: kept fraction {frac} vs {} ± {se:.2e}", 1.0 - p);
    }
    // same seed: the same bits (B·H = 2 splits the backward over key chunks); another seed: another output
    let c = Case::new(1, 2, 100, 300, 16, 16).with(true, true, 0.2);
    let xs = c.inputs(DType::F32);
    let w = Tensor::randn(9, &[c.b, c.h, c.tq, c.dv], 0.0, 1.0, DType::F32, Device::Cpu).unwrap();
    let bits = |seed: u64| -> Vec<u32> {
        let opts = AttentionOpts { dropout: Some(AttnDropout { p: c.p, seed }), ..c.opts() };
        run(&xs, &w, |q, k, v| q.attention(k, v, &opts)).iter().flat_map(|t| t.to_vec::<f32>().unwrap()).map(f32::to_bits).collect()
    };
    // (the SIMD level held: tests that force other levels run in between otherwise)
    let (a, a2, b) = simd::with_level(simd::detected(), || (bits(7), bits(7), bits(8)));
    assert!(a == a2, "same seed: the output or gradients differ");
    // (keys past Tq = 100 and padding keys get no gradient under either seed)
    let nonzero = a.iter().filter(|&&x| x != 0).count();
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert!(differ > nonzero * 9 / 10, "another seed changed only {differ} of the {nonzero} nonzero values");
}

#[test]
fn p_zero_is_no_dropout_bit_for_bit() {
    let c = Case::new(2, 3, 37, 53, 24, 24).with(true, true, 0.0);
    for level in simd::available_levels() {
        let xs = c.inputs(DType::F32);
        let w = Tensor::randn(9, &[c.b, c.h, c.tq, c.dv], 0.0, 1.0, DType::F32, Device::Cpu).unwrap();
        let bits = |opts: AttentionOpts| -> Vec<u32> {
            simd::with_level(level, || run(&xs, &w, |q, k, v| q.attention(k, v, &opts))).iter().flat_map(|t| t.to_vec::<f32>().unwrap()).map(f32::to_bits).collect()
        };
        assert_eq!(bits(c.opts()), bits(AttentionOpts { dropout: None, ..c.opts() }), "{level:?}");
    }
}

#[test]
fn half_types_apply_the_same_mask() {
    // bf16 / f16 compute in f32: against the f32 op on the same rounded inputs
    let c = Case::new(1, 2, 40, 70, 16, 16).with(true, true, 0.3);
    for dt in [DType::BF16, DType::F16] {
        let [q, k, v] = c.inputs(dt).map(|x| x.transpose(1, 2).unwrap());
        let want = {
            let f = |x: &Tensor| x.to_dtype(DType::F32).unwrap();
            f(&q).attention(&f(&k), &f(&v), &c.opts()).unwrap()
        };
        let out = q.attention(&k, &v, &c.opts()).unwrap();
        assert_eq!(out.dtype(), dt);
        let e = max_rel_err(&out.to_dtype(DType::F32).unwrap(), &want).unwrap();
        assert!(e < 2e-2, "{dt}: {e}");
    }
}

#[test]
fn bad_p_is_an_error_naming_the_field() {
    let c = Case::new(1, 1, 3, 4, 2, 2);
    let [q, k, v] = c.inputs(DType::F32).map(|x| x.transpose(1, 2).unwrap());
    for p in [1.0, 1.5, -0.1, f64::NAN] {
        let opts = AttentionOpts { dropout: Some(AttnDropout { p, seed: 0 }), ..Default::default() };
        let e = q.attention(&k, &v, &opts).unwrap_err().to_string();
        assert!(e.contains("attention") && e.contains("dropout.p"), "p {p}: {e}");
    }
}
