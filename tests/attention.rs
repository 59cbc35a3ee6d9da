//! Fused attention (`Tensor::attention`) against a naive f64 reference, gradchecks on strided
//! inputs, determinism, every SIMD level, and bad-input errors.
//!
//! Tolerances (max |a - b| / max(1, |b|) over all elements): f64 1e-10 (forward) and 1e-9
//! (gradients); f32 2e-5 (forward) and 1e-4 (gradients), both against the f64 reference; SIMD
//! levels against scalar 2e-5 / 1e-4; bf16 against f32 3e-2.
use kiln::tensor::cpu::simd;
use kiln::tensor::ops::attention::{attention_with_lse, AttentionOpts};
use kiln::tensor::testing::{assert_close, gradcheck, max_rel_err};
use kiln::{DType, Device, Tensor};

/// One problem: sizes, options, and the padding mask as a [B, Tk] list of keep flags.
#[derive(Clone, Debug)]
struct Case {
    b: usize,
    h: usize,
    tq: usize,
    tk: usize,
    d: usize,
    dv: usize,
    causal: bool,
    keep: Option<Vec<bool>>,
    scale: Option<f64>,
}

impl Case {
    fn new(b: usize, h: usize, tq: usize, tk: usize, d: usize) -> Self {
        Case { b, h, tq, tk, d, dv: d, causal: false, keep: None, scale: None }
    }
    fn causal(mut self) -> Self {
        self.causal = true;
        self
    }
    /// Drops keys by a fixed pattern; batch row 1 (if any) keeps none at all.
    fn padded(mut self) -> Self {
        let (b, tk) = (self.b, self.tk);
        self.keep = Some((0..b * tk).map(|i| if b > 1 && i / tk == 1 { false } else { i % tk % 3 != 1 }).collect());
        self
    }
    fn mask_tensor(&self, dtype: DType) -> Option<Tensor> {
        self.keep.as_ref().map(|k| {
            let v: Vec<f64> = k.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect();
            Tensor::from_vec(v, &[self.b, self.tk]).unwrap().to_dtype(dtype).unwrap()
        })
    }
    fn opts(&self) -> AttentionOpts {
        AttentionOpts { causal: self.causal, key_padding_mask: self.mask_tensor(DType::I64), scale: self.scale, dropout: None }
    }
    /// q, k, v as f64 [B, H, T, d] views of [B, T, H, d] tensors (the layout models produce).
    fn inputs(&self, seed: u64) -> [Tensor; 3] {
        let mk = |s: u64, t: usize, d: usize| Tensor::randn(s, &[self.b, t, self.h, d], 0.0, 1.0, DType::F64, Device::Cpu).unwrap().transpose(1, 2).unwrap();
        [mk(seed, self.tq, self.d), mk(seed + 1, self.tk, self.d), mk(seed + 2, self.tk, self.dv)]
    }
    fn allowed(&self, b: usize, i: usize, j: usize) -> bool {
        !(self.causal && j > i) && self.keep.as_ref().is_none_or(|k| k[b * self.tk + j])
    }
}

/// Naive reference over contiguous f64 buffers with the full Tq×Tk probability matrix: returns
/// (out, lse, dq, dk, dv) for upstream gradient `g`. Fully masked rows give 0 and lse -inf.
fn reference(c: &Case, q: &[f64], k: &[f64], v: &[f64], g: &[f64]) -> [Vec<f64>; 5] {
    let (tq, tk, d, dv) = (c.tq, c.tk, c.d, c.dv);
    let scale = c.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let bh = c.b * c.h;
    let (mut out, mut lse) = (vec![0.0; bh * tq * dv], vec![f64::NEG_INFINITY; bh * tq]);
    let (mut dq, mut dk, mut dvv) = (vec![0.0; bh * tq * d], vec![0.0; bh * tk * d], vec![0.0; bh * tk * dv]);
    for n in 0..bh {
        let b = n / c.h;
        let (q, k, v, g) = (&q[n * tq * d..], &k[n * tk * d..], &v[n * tk * dv..], &g[n * tq * dv..]);
        for i in 0..tq {
            let s: Vec<f64> = (0..tk).map(|j| if c.allowed(b, i, j) { scale * (0..d).map(|x| q[i * d + x] * k[j * d + x]).sum::<f64>() } else { f64::NEG_INFINITY }).collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            lse[n * tq + i] = m + z.ln();
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
            for x in 0..dv {
                out[(n * tq + i) * dv + x] = (0..tk).map(|j| p[j] * v[j * dv + x]).sum();
            }
            // dP_j = g_i·v_j; dS_j = P_j (dP_j - Σ_l P_l dP_l)
            let dp: Vec<f64> = (0..tk).map(|j| (0..dv).map(|x| g[i * dv + x] * v[j * dv + x]).sum()).collect();
            let dot: f64 = (0..tk).map(|j| p[j] * dp[j]).sum();
            for j in 0..tk {
                let ds = p[j] * (dp[j] - dot);
                for x in 0..dv {
                    dvv[(n * tk + j) * dv + x] += p[j] * g[i * dv + x];
                }
                for x in 0..d {
                    dq[(n * tq + i) * d + x] += scale * ds * k[j * d + x];
                    dk[(n * tk + j) * d + x] += scale * ds * q[i * d + x];
                }
            }
        }
    }
    [out, lse, dq, dk, dvv]
}

fn vec_of(t: &Tensor) -> Vec<f64> {
    t.to_vec_f64().unwrap()
}

fn tensor(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

/// Runs the fused op in `dtype` (forward + backward with upstream gradient `g`) and compares
/// output, lse and the three gradients with the reference.
fn check_case(c: &Case, dtype: DType, tol_fwd: f64, tol_bwd: f64) {
    let [q, k, v] = c.inputs(17);
    let g = Tensor::randn(99, &[c.b, c.h, c.tq, c.dv], 0.0, 1.0, DType::F64, Device::Cpu).unwrap();
    let r = reference(c, &vec_of(&q), &vec_of(&k), &vec_of(&v), &vec_of(&g));
    let (qx, kx, vx) = (q.to_dtype(dtype).unwrap().var(), k.to_dtype(dtype).unwrap().var(), v.to_dtype(dtype).unwrap().var());
    // keep the strided layout for the kernel: cast the [B, T, H, d] base, then transpose again
    let strided = |t: &Tensor| t.transpose(1, 2).unwrap().contiguous().unwrap().transpose(1, 2).unwrap();
    let (qs, ks, vs) = (strided(&qx), strided(&kx), strided(&vx));
    assert!(c.h == 1 || c.tq == 1 || !qs.is_contiguous());
    let (out, lse) = attention_with_lse(&qs, &ks, &vs, &c.opts()).unwrap();
    let what = format!("{c:?} {dtype}");
    assert_eq!(out.dtype(), dtype);
    assert_close(&format!("out {what}"), &out, &tensor(r[0].clone(), &[c.b, c.h, c.tq, c.dv]), tol_fwd);
    let lse_v = vec_of(&lse);
    for (i, (a, b)) in lse_v.iter().zip(&r[1]).enumerate() {
        assert!(a == b || (a - b).abs() <= tol_fwd * b.abs().max(1.0), "lse {what} row {i}: {a} vs {b}");
    }
    out.backward_with(g.to_dtype(dtype).unwrap()).unwrap();
    let shapes = [[c.b, c.h, c.tq, c.d], [c.b, c.h, c.tk, c.d], [c.b, c.h, c.tk, c.dv]];
    for (n, (x, want)) in [&qx, &kx, &vx].iter().zip(&r[2..]).enumerate() {
        let got = x.grad().unwrap_or_else(|| panic!("no grad for input {n}"));
        assert_eq!(got.dtype(), dtype);
        assert_close(&format!("grad {n} {what}"), &got, &tensor(want.clone(), &shapes[n]), tol_bwd);
    }
}

/// Odd sizes (not multiples of the 64-wide tiles), Tq != Tk, causal on/off, masks.
fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (b, h, tq, tk, d) in [(1, 1, 1, 1, 8), (2, 3, 7, 7, 17), (1, 2, 33, 65, 64), (2, 1, 65, 33, 8), (1, 1, 130, 130, 17), (2, 2, 130, 7, 64), (1, 1, 7, 130, 8)] {
        let c = Case::new(b, h, tq, tk, d);
        v.extend([c.clone(), c.clone().causal(), c.clone().padded(), c.causal().padded()]);
    }
    let mut odd = Case::new(2, 1, 20, 70, 8).padded();
    odd.dv = 5;
    odd.scale = Some(0.3);
    v.push(odd);
    v
}

#[test]
fn matches_reference_f64() {
    for c in cases() {
        check_case(&c, DType::F64, 1e-10, 1e-9);
    }
}

#[test]
fn matches_reference_f32() {
    for c in cases() {
        check_case(&c, DType::F32, 2e-5, 1e-4);
    }
}

#[test]
fn fully_masked_rows_give_zero_output_and_grads() {
    // batch row 1 keeps no key; with causal + key 0 dropped, row 0 of batch 0 sees nothing either
    let mut c = Case::new(2, 2, 9, 9, 4).causal();
    c.keep = Some((0..18).map(|i| i < 9 && i != 0).collect());
    let [q, k, v] = c.inputs(3);
    let (q, k, v) = (q.var(), k.var(), v.var());
    let (out, lse) = attention_with_lse(&q, &k, &v, &c.opts()).unwrap();
    let (o, l) = (vec_of(&out), vec_of(&lse));
    assert!(o.iter().all(|x| x.is_finite()));
    for n in 0..4 {
        for i in 0..9 {
            let dead = n >= 2 || i == 0;
            assert_eq!(l[n * 9 + i] == f64::NEG_INFINITY, dead, "lse row ({n}, {i}) = {}", l[n * 9 + i]);
            if dead {
                assert!(o[(n * 9 + i) * 4..][..4].iter().all(|&x| x == 0.0));
            }
        }
    }
    out.sum_all().unwrap().backward().unwrap();
    let dq = vec_of(&q.grad().unwrap().contiguous().unwrap());
    let dk = vec_of(&k.grad().unwrap().contiguous().unwrap());
    assert!(dq.iter().chain(&dk).all(|x| x.is_finite()));
    assert!(dq[..4].iter().all(|&x| x == 0.0), "row 0 of batch 0 has no keys");
    assert!(dq[2 * 9 * 4..].iter().chain(&dk[2 * 9 * 4..]).all(|&x| x == 0.0), "batch 1 is fully padded");
}

#[test]
fn gradcheck_strided_inputs() {
    let mut small = Case::new(2, 2, 5, 6, 3);
    small.dv = 4;
    let mut tiles = Case::new(1, 1, 70, 67, 2).causal().padded();
    tiles.dv = 1;
    for c in [small.clone(), small.clone().causal(), small.causal().padded(), tiles] {
        // [B, T, H, d] leaves; the op sees [B, H, T, d] transposed views
        let leaf = |s: u64, t: usize, d: usize| kiln::tensor::testing::rand_var(s, &[c.b, t, c.h, d]);
        let xs = [leaf(5, c.tq, c.d), leaf(6, c.tk, c.d), leaf(7, c.tk, c.dv)];
        let opts = c.opts();
        gradcheck(&format!("attention {c:?}"), &xs, |x| x[0].transpose(1, 2)?.attention(&x[1].transpose(1, 2)?, &x[2].transpose(1, 2)?, &opts)).unwrap();
    }
}

/// Forward + backward in f32; returns every output bit pattern.
fn run_bits(c: &Case, seed: u64) -> Vec<u32> {
    let [q, k, v] = c.inputs(seed);
    let xs: Vec<Tensor> = [q, k, v].iter().map(|t| t.to_dtype(DType::F32).unwrap().var()).collect();
    let out = xs[0].attention(&xs[1], &xs[2], &c.opts()).unwrap();
    out.mul(&out).unwrap().sum_all().unwrap().backward().unwrap();
    let mut bits: Vec<u32> = out.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect();
    for x in &xs {
        bits.extend(x.grad().unwrap().to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()));
    }
    bits
}

#[test]
fn deterministic_run_to_run() {
    // B·H = 2 splits the backward over key chunks (dQ partials); B·H = 20 does not.
    for c in [Case::new(1, 2, 200, 300, 64).causal().padded(), Case::new(4, 5, 130, 130, 16).padded()] {
        assert_eq!(run_bits(&c, 1), run_bits(&c, 1), "{c:?}");
    }
}

#[test]
fn simd_levels_match_scalar() {
    let c = Case::new(2, 2, 70, 90, 24).causal().padded();
    let base = simd::with_level(simd::Level::Scalar, || run_bits(&c, 8));
    let as_f32 = |b: &[u32]| tensor(b.iter().map(|&x| f32::from_bits(x) as f64).collect(), &[b.len()]);
    for l in simd::available_levels() {
        let got = simd::with_level(l, || run_bits(&c, 8));
        let e = max_rel_err(&as_f32(&got), &as_f32(&base)).unwrap();
        assert!(e <= 1e-4, "level {l:?}: max rel err {e:.3e}");
    }
}

#[test]
fn half_types_and_mask_dtypes() {
    let c = Case::new(1, 2, 40, 70, 16).causal().padded();
    let [q, k, v] = c.inputs(4);
    let to = |d: DType| [&q, &k, &v].map(|t| t.to_dtype(d).unwrap());
    let [q32, k32, v32] = to(DType::F32);
    let want = q32.attention(&k32, &v32, &c.opts()).unwrap();
    for d in [DType::BF16, DType::F16] {
        let [qh, kh, vh] = to(d).map(|t| t.var());
        let out = qh.attention(&kh, &vh, &c.opts()).unwrap();
        assert_eq!(out.dtype(), d);
        assert_close(&format!("{d} forward"), &out, &want, 3e-2);
        out.sum_all().unwrap().backward().unwrap();
        assert_eq!(kh.grad().unwrap().dtype(), d);
    }
    // the mask may have any dtype: nonzero keeps
    for md in [DType::F32, DType::F64, DType::BF16] {
        let opts = AttentionOpts { key_padding_mask: c.mask_tensor(md), ..c.opts() };
        let got = q32.attention(&k32, &v32, &opts).unwrap();
        assert_eq!(max_rel_err(&got, &want).unwrap(), 0.0, "mask dtype {md}");
    }
}

#[test]
fn bad_inputs_are_errors_naming_attention() {
    let z = |s: &[usize], d: DType| Tensor::zeros(s, d, Device::Cpu).unwrap();
    let (q, k, v) = (z(&[2, 3, 5, 8], DType::F32), z(&[2, 3, 7, 8], DType::F32), z(&[2, 3, 7, 4], DType::F32));
    let o = AttentionOpts::default();
    assert!(q.attention(&k, &v, &o).is_ok());
    let err = |r: kiln::Result<Tensor>| r.unwrap_err().to_string();
    let e = err(z(&[3, 5, 8], DType::F32).attention(&k, &v, &o));
    assert!(e.contains("attention") && e.contains("[3, 5, 8]"), "{e}");
    let e = err(q.attention(&z(&[2, 3, 7, 9], DType::F32), &v, &o));
    assert!(e.contains("attention") && e.contains("[2, 3, 5, 8]") && e.contains("[2, 3, 7, 9]"), "{e}");
    let e = err(q.attention(&k, &z(&[2, 3, 6, 4], DType::F32), &o));
    assert!(e.contains("attention") && e.contains("[2, 3, 6, 4]"), "{e}");
    let e = err(q.attention(&z(&[2, 4, 7, 8], DType::F32), &v, &o));
    assert!(e.contains("attention") && e.contains("[2, 4, 7, 8]"), "{e}");
    let bad_mask = AttentionOpts { key_padding_mask: Some(z(&[2, 5], DType::I64)), ..Default::default() };
    let e = err(q.attention(&k, &v, &bad_mask));
    assert!(e.contains("attention") && e.contains("[2, 5]") && e.contains("[2, 7]"), "{e}");
    let e = err(q.attention(&z(&[2, 3, 7, 8], DType::F64), &v, &o));
    assert!(e.contains("attention") && e.contains("dtype"), "{e}");
    let e = err(z(&[2, 3, 5, 8], DType::I64).attention(&z(&[2, 3, 7, 8], DType::I64), &z(&[2, 3, 7, 4], DType::I64), &o));
    assert!(e.contains("attention"), "{e}");
    let e = err(z(&[2, 3, 5, 0], DType::F32).attention(&z(&[2, 3, 7, 0], DType::F32), &v, &o));
    assert!(e.contains("attention"), "{e}");
}

/// The fused op against the composed reference (matmul + masked_fill + softmax + matmul), values
/// and gradients, in f64 and f32, on odd shapes with causal and padding masks (no fully masked rows).
#[test]
fn fused_matches_composed_reference() {
    use kiln::tensor::ops::attention::attention_reference;
    for (b, h, tq, tk, d, causal, pad) in [(2, 3, 7, 7, 5, false, false), (1, 2, 33, 33, 16, true, false), (2, 2, 9, 13, 8, false, true), (2, 1, 65, 65, 17, true, true)] {
        for dtype in [DType::F64, DType::F32] {
            let mk = |s: u64, t: usize| Tensor::randn(s, &[b, t, h, d], 0.0, 1.0, dtype, Device::Cpu).unwrap().transpose(1, 2).unwrap().var();
            let (q, k, v) = (mk(11, tq), mk(12, tk), mk(13, tk));
            // keep key 0 of every row so no row is fully masked
            let mask = pad.then(|| Tensor::from_vec((0..b * tk).map(|i| if i % tk == 0 || i % 3 != 2 { 1i64 } else { 0 }).collect(), &[b, tk]).unwrap());
            let opts = AttentionOpts { causal, key_padding_mask: mask, scale: None, dropout: None };
            let w = Tensor::randn(14, &[b, h, tq, d], 0.0, 1.0, dtype, Device::Cpu).unwrap();
            let run = |f: &dyn Fn() -> kiln::Result<Tensor>| {
                for t in [&q, &k, &v] {
                    t.zero_grad();
                }
                let o = f().unwrap();
                o.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
                (o.detach(), q.grad().unwrap(), k.grad().unwrap(), v.grad().unwrap())
            };
            let fused = run(&|| q.attention(&k, &v, &opts));
            let refr = run(&|| attention_reference(&q, &k, &v, &opts));
            let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
            let what = format!("b{b} h{h} tq{tq} tk{tk} d{d} causal {causal} pad {pad} {dtype}");
            assert_close(&format!("out {what}"), &fused.0, &refr.0, tol);
            assert_close(&format!("dq {what}"), &fused.1, &refr.1, tol);
            assert_close(&format!("dk {what}"), &fused.2, &refr.2, tol);
            assert_close(&format!("dv {what}"), &fused.3, &refr.3, tol);
        }
    }
}

#[test]
fn empty_key_or_query_sets() {
    // Tk = 0: every row is fully masked (output 0, lse -inf, zero grads); Tq = 0: empty output
    let z = |s: &[usize]| Tensor::randn(1, s, 0.0, 1.0, DType::F32, Device::Cpu).unwrap().var();
    let (q, k, v) = (z(&[1, 2, 3, 4]), z(&[1, 2, 0, 4]), z(&[1, 2, 0, 5]));
    let (out, lse) = attention_with_lse(&q, &k, &v, &AttentionOpts::default()).unwrap();
    assert_eq!(out.shape(), &[1, 2, 3, 5]);
    assert!(vec_of(&out).iter().all(|&x| x == 0.0) && vec_of(&lse).iter().all(|&x| x == f64::NEG_INFINITY));
    out.sum_all().unwrap().backward().unwrap();
    assert!(vec_of(&q.grad().unwrap()).iter().all(|&x| x == 0.0));
    let out = z(&[1, 2, 0, 4]).attention(&z(&[1, 2, 6, 4]), &z(&[1, 2, 6, 5]), &AttentionOpts::default()).unwrap();
    assert_eq!(out.shape(), &[1, 2, 0, 5]);
}
