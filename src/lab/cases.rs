//! The op cases of `kiln bench`: the ceilings (copy, GEMM), the memory-bound fused ops (GELU,
//! LayerNorm, softmax, cross-entropy), matmul and fused attention, forward and backward.
//! Variants on the CPU: one per SIMD level this machine has (`scalar` is the plain reference
//! variant), plus `composed` (the op built from primitive ops, as an unfused engine runs it) where
//! kiln has one. On CUDA: `cuda`, checked against the same op run on the CPU (`cpu`, untimed).
//! Work is counted as in ../shared/notes/perf-anchors.md and scripts/torch_bench.py.
use super::harness::{Case, Thunk, Variant, Work};
use crate::tensor::cpu::simd::{self, Level};
use crate::tensor::cuda::RowKernel;
use crate::tensor::ops::attention::AttnKernel;
use crate::tensor::ops::attention::{attention_reference, AttentionOpts};
use crate::tensor::ops::ROW_OPS;
use crate::{DType, Device, Result, Tensor};
use std::rc::Rc;

/// Where and how big.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub device: Device,
}

impl Ctx {
    /// Input sets rotated between calls (more on a GPU, whose 60 MB L2 would otherwise serve them).
    fn sets(&self, bytes_per_set: usize) -> usize {
        match self.device {
            Device::Cpu => 2,
            Device::Cuda(_) => ((256usize << 20) / bytes_per_set.max(1)).clamp(2, 16),
        }
    }
}

type OpFn = Rc<dyn Fn(&[Tensor]) -> Result<Tensor>>;

/// Forward alone, backward alone (the forward runs untimed before each call), or both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pass {
    Fwd,
    Bwd,
    FwdBwd,
}

impl Pass {
    pub fn suffix(self) -> &'static str {
        match self {
            Pass::Fwd => "fwd",
            Pass::Bwd => "bwd",
            Pass::FwdBwd => "fwd_bwd",
        }
    }
}

pub fn level_name(l: Level) -> &'static str {
    match l {
        Level::Scalar => "scalar",
        Level::Avx2 => "avx2",
        Level::Avx512 => "avx512",
    }
}

fn randn(seed: u64, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
    Tensor::randn(seed, shape, 0.0, 1.0, DType::F32, Device::Cpu)?.to_dtype(dtype)?.to_device(device)
}

/// The timed thunk of `pass` over one input set: `grad_mask[i]` says which inputs get gradients.
fn prep_pass(pass: Pass, f: &OpFn, inputs: &[Tensor], dy: &Tensor) -> Result<Thunk<'static>> {
    let ins: Vec<Tensor> = inputs.to_vec();
    let f = f.clone();
    let dy = dy.clone();
    let grads = |ins: &[Tensor]| -> Vec<Tensor> { ins.iter().filter(|t| t.requires_grad()).filter_map(|t| t.grad()).collect() };
    match pass {
        Pass::Fwd => Ok(Box::new(move || Ok(vec![crate::tensor::no_grad(|| f(&ins))?]))),
        Pass::Bwd => {
            ins.iter().for_each(|t| t.zero_grad());
            let out = f(&ins)?;
            Ok(Box::new(move || {
                out.backward_with(dy)?;
                Ok(grads(&ins))
            }))
        }
        Pass::FwdBwd => {
            ins.iter().for_each(|t| t.zero_grad());
            Ok(Box::new(move || {
                f(&ins)?.backward_with(dy)?;
                Ok(grads(&ins))
            }))
        }
    }
}

/// One op: random input sets on the device (`needs_grad[i]`: input i is a leaf with gradients),
/// the fused body, and optionally a composed body.
pub struct OpSpec<'s> {
    pub op: &'s str,
    pub dtype: DType,
    pub shape: String,
    pub causal: bool,
    pub inputs: Vec<(Vec<usize>, bool)>,
    /// Non-random inputs (integer targets, ...), appended after the random ones.
    pub fixed: Vec<Tensor>,
    pub out_shape: Vec<usize>,
    pub fused: OpFn,
    pub composed: Option<OpFn>,
    /// On CUDA: further timed variants `(name, body)` on the same inputs (e.g. another kernel).
    pub cuda_alternatives: Vec<(&'static str, OpFn)>,
    /// On CUDA: check against the op run on the CPU first (off for sizes the CPU would take
    /// minutes over; such rows say `"checked": false`).
    pub check_on_cpu: bool,
    /// With `check_on_cpu` and a 16-bit dtype: the CPU reference runs in f32 on the same
    /// (16-bit-valued) inputs, so `max_err` is the error against an f32 computation (issue 6's
    /// accuracy measure for attention; torch_bench.py reports the same for SDPA and for a plain
    /// 16-bit PyTorch attention).
    pub reference_f32: bool,
    /// Work per pass.
    pub work: Box<dyn Fn(Pass) -> Work + 's>,
}

impl<'s> OpSpec<'s> {
    /// An op over one `[rows, d]` input with gradients, output of the same shape, no composed
    /// variant, checked on the CPU; set the other fields with struct-update syntax.
    pub fn rowwise(op: &'s str, dtype: DType, rows: usize, d: usize, fused: OpFn, work: Box<dyn Fn(Pass) -> Work + 's>) -> Self {
        OpSpec {
            op,
            dtype,
            shape: format!("{rows}x{d}"),
            causal: false,
            inputs: vec![(vec![rows, d], true)],
            fixed: vec![],
            out_shape: vec![rows, d],
            fused,
            composed: None,
            cuda_alternatives: vec![],
            check_on_cpu: true,
            reference_f32: false,
            work,
        }
    }
}

/// The cases of `spec` for each pass in `passes`.
pub fn op_cases(ctx: &Ctx, spec: &OpSpec, passes: &[Pass], seed: u64) -> Result<Vec<Case<'static>>> {
    let set_bytes: usize = spec.inputs.iter().map(|(s, _)| s.iter().product::<usize>() * spec.dtype.size_in_bytes()).sum();
    let n_sets = ctx.sets(set_bytes);
    // input set k on `device`; `as_f32`: the same values widened to f32 (exact)
    let make_set_as = |k: u64, device: Device, as_f32: bool| -> Result<Vec<Tensor>> {
        let mut v = Vec::new();
        for (i, (shape, grad)) in spec.inputs.iter().enumerate() {
            let mut t = randn(seed + 1000 * k + i as u64, shape, spec.dtype, device)?;
            if as_f32 {
                t = t.to_dtype(DType::F32)?;
            }
            v.push(if *grad { t.var() } else { t });
        }
        for t in &spec.fixed {
            v.push(t.to_device(device)?);
        }
        Ok(v)
    };
    let make_set = |k: u64, device: Device| make_set_as(k, device, false);
    let dy_of = |device: Device| -> Result<Tensor> {
        if spec.out_shape.is_empty() {
            Tensor::ones(&[], spec.dtype, device)
        } else {
            randn(seed + 999, &spec.out_shape, spec.dtype, device)
        }
    };
    let sets: Rc<Vec<Vec<Tensor>>> = Rc::new((0..n_sets as u64).map(|k| make_set(k, ctx.device)).collect::<Result<_>>()?);
    let dy = dy_of(ctx.device)?;
    let mut cases = Vec::new();
    for &pass in passes {
        let mut variants: Vec<Variant<'static>> = Vec::new();
        let mk = |name: &str, level: Option<Level>, timed: bool, f: OpFn, sets: Rc<Vec<Vec<Tensor>>>, dy: Tensor| Variant {
            name: name.into(),
            level,
            timed,
            tol: None,
            prep: Box::new(move |i| prep_pass(pass, &f, &sets[i % sets.len()], &dy)),
        };
        let default_variant;
        match ctx.device {
            Device::Cpu => {
                if let Some(c) = &spec.composed {
                    variants.push(mk("composed", Some(simd::detected()), true, c.clone(), sets.clone(), dy.clone()));
                }
                for l in simd::available_levels() {
                    variants.push(mk(level_name(l), Some(l), true, spec.fused.clone(), sets.clone(), dy.clone()));
                }
                default_variant = level_name(simd::detected()).to_string();
            }
            Device::Cuda(_) => {
                if spec.check_on_cpu {
                    let widen = spec.reference_f32 && matches!(spec.dtype, DType::BF16 | DType::F16);
                    let cpu_set = Rc::new(vec![make_set_as(0, Device::Cpu, widen)?]);
                    let cpu_dy = dy_of(Device::Cpu)?;
                    let cpu_dy = if widen { cpu_dy.to_dtype(DType::F32)? } else { cpu_dy };
                    variants.push(mk(if widen { "cpu-f32" } else { "cpu" }, None, false, spec.fused.clone(), cpu_set, cpu_dy));
                }
                // (no composed variant on CUDA: some of the primitive ops it is built from, e.g.
                // max over a dim and masked_fill, have no CUDA path yet)
                variants.push(mk("cuda", None, true, spec.fused.clone(), sets.clone(), dy.clone()));
                for (name, f) in &spec.cuda_alternatives {
                    variants.push(mk(name, None, true, f.clone(), sets.clone(), dy.clone()));
                }
                default_variant = "cuda".to_string();
            }
        }
        let mut extra = serde_json::Map::new();
        if ctx.device != Device::Cpu && !spec.check_on_cpu {
            extra.insert("checked".into(), false.into());
        }
        if variants.first().is_some_and(|v| v.name == "cpu-f32") {
            // max_err is against f32 on the same inputs (the wording torch_bench.py uses too)
            extra.insert("err_reference".into(), format!("f32 {} on the same 16-bit inputs", spec.op).into());
        }
        cases.push(Case {
            op: format!("{}_{}", spec.op, pass.suffix()),
            device: ctx.device,
            dtype: spec.dtype,
            shape: spec.shape.clone(),
            causal: spec.causal,
            work: (spec.work)(pass),
            variants,
            default_variant,
            extra,
        });
    }
    Ok(cases)
}

/// Every row-wise op of [`ROW_OPS`] (GELU erf and tanh, LayerNorm, softmax, RMSNorm, ... as each op
/// declares itself) over `[rows, d]`, and cross-entropy over `[n, classes]`. `ce: None` leaves
/// cross-entropy out (for the extra large shapes).
pub fn memory_bound(ctx: &Ctx, dtype: DType, rows: usize, d: usize, ce: Option<(usize, usize)>) -> Result<Vec<Case<'static>>> {
    let e = dtype.size_in_bytes() as u64;
    let all = [Pass::Fwd, Pass::Bwd];
    let mut cases = Vec::new();
    for (i, op) in ROW_OPS.iter().enumerate() {
        let fused: OpFn = Rc::new(op.fused);
        // on CUDA the block-per-row kernels too, timed beside the warp-per-row default (`cuda-block`)
        let block = |f: OpFn| -> (&'static str, OpFn) { ("cuda-block", Rc::new(move |t: &[Tensor]| crate::tensor::cuda::with_row_kernel(Some(RowKernel::Block), || f(t)))) };
        let (r, dd, bytes) = (rows as u64, d as u64, op.bytes);
        let mut spec = OpSpec::rowwise(op.name, dtype, rows, d, fused.clone(), Box::new(move |p| Work::Bytes(bytes(p == Pass::Fwd, r, dd, e))));
        spec.inputs.extend((0..op.params).map(|_| (vec![d], true)));
        spec.composed = op.composed.map(|c| Rc::new(c) as OpFn);
        spec.cuda_alternatives.extend(op.row_kernels.then(|| block(fused)));
        cases.extend(op_cases(ctx, &spec, &all, 10 * (i as u64 + 1))?);
    }
    let Some((cn, classes)) = ce else { return Ok(cases) };
    let targets: Vec<i64> = (0..cn as i64).map(|i| if i % 17 == 5 { -100 } else { (i * 7919) % classes as i64 }).collect();
    let (nc, cn64) = ((cn * classes) as u64, cn as u64);
    // fwd: logits and targets read, per-row logsumexp saved, the loss written; bwd: logits, targets, lse read, dlogits written.
    let ce_work = move |p| Work::Bytes(if p == Pass::Fwd { nc * e + cn64 * 12 + 4 } else { 2 * nc * e + cn64 * 12 });
    let spec = OpSpec {
        fixed: vec![Tensor::from_vec(targets, &[cn])?],
        out_shape: vec![],
        ..OpSpec::rowwise("cross_entropy", dtype, cn, classes, Rc::new(|t| t[0].cross_entropy(&t[1], -100)), Box::new(ce_work))
    };
    cases.extend(op_cases(ctx, &spec, &all, 40)?);
    Ok(cases)
}

/// Fused attention on `[b, h, t, d]`, forward / backward / both; FLOPs as FlashAttention counts them.
/// `composed`: add the composed variant (stores the T×T matrix); `check_on_cpu`: as in [`OpSpec`].
#[allow(clippy::too_many_arguments)]
pub fn attention(ctx: &Ctx, dtype: DType, (b, h, t, d): (usize, usize, usize, usize), causal: bool, passes: &[Pass], composed: bool, check_on_cpu: bool) -> Result<Vec<Case<'static>>> {
    let fwd = 4.0 * (b * h * t * t * d) as f64 / if causal { 2.0 } else { 1.0 };
    let opts = AttentionOpts { causal, ..Default::default() };
    let o2 = opts.clone();
    let o3 = opts.clone();
    // on CUDA also the simple kernels of attention.cu, timed beside the tensor-core ones (the
    // choice made in the forward is kept by its backward)
    let hopper = crate::tensor::cuda::device_arch(ctx.device).is_some_and(|a| crate::tensor::cuda::kernels::arch_number(&a) == 90);
    let forced = |kernel: AttnKernel| -> OpFn {
        let o = o3.clone();
        Rc::new(move |x| {
            let before = crate::tensor::ops::attention::attention_kernel_override();
            crate::tensor::ops::attention::force_attention_kernel(Some(kernel));
            let r = x[0].attention(&x[1], &x[2], &o);
            crate::tensor::ops::attention::force_attention_kernel(before);
            r
        })
    };
    let spec = OpSpec {
        op: "attention",
        dtype,
        shape: format!("{b}x{h}x{t}x{d}"),
        causal,
        inputs: vec![(vec![b, h, t, d], true); 3],
        fixed: vec![],
        out_shape: vec![b, h, t, d],
        fused: Rc::new(move |x| x[0].attention(&x[1], &x[2], &opts)),
        composed: composed.then(|| Rc::new(move |x: &[Tensor]| attention_reference(&x[0], &x[1], &x[2], &o2)) as OpFn),
        cuda_alternatives: [
            ("cuda-simple", AttnKernel::Simple),
            ("cuda-tc2", AttnKernel::TensorCore2),
            ("cuda-wg", AttnKernel::Wgmma),
            ("cuda-wg-serial", AttnKernel::WgmmaSerial),
            ("cuda-wgtma", AttnKernel::WgmmaTma),
            ("cuda-wgtma-pp", AttnKernel::WgmmaTmaPingpong),
        ]
        .into_iter()
        // the wgmma kernels exist on sm_90 only (elsewhere a request for them runs tc)
        .filter(|(_, k)| !matches!(k, AttnKernel::Wgmma | AttnKernel::WgmmaSerial | AttnKernel::WgmmaTma | AttnKernel::WgmmaTmaPingpong) || hopper)
            .map(|(name, k)| (name, forced(k)))
            .collect(),
        check_on_cpu,
        reference_f32: true,
        work: Box::new(move |p| Work::Flops(fwd * if p == Pass::Fwd { 1.0 } else if p == Pass::Bwd { 2.5 } else { 3.5 })),
    };
    op_cases(ctx, &spec, passes, 50)
}

/// Scaled error allowed for TF32 matmuls (inputs rounded to 10 mantissa bits) against f64.
pub const TF32_TOLERANCE: f64 = 2e-3;

/// `[m, k] × [k, n]`: the GEMM ceiling. Checked against the same product computed in f64.
pub fn matmul(ctx: &Ctx, dtype: DType, m: usize, n: usize, k: usize) -> Result<Case<'static>> {
    matmul_layout(ctx, dtype, m, n, k, false, false)
}

/// [`matmul`] with A stored transposed (`ta`: A is the transposed view of a `[k, m]` tensor, as
/// Xᵀ in a linear layer's weight gradient) and/or B (`tb`: a `[n, k]` tensor's view, as an
/// `nn.Linear` weight or Wᵀ in the input gradient). The shape is `MxNxK`, then `-At` / `-Bt`.
pub fn matmul_layout(ctx: &Ctx, dtype: DType, m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Result<Case<'static>> {
    let a = if ta { randn(61, &[k, m], dtype, ctx.device)?.t()? } else { randn(61, &[m, k], dtype, ctx.device)? };
    let bm = if tb { randn(62, &[n, k], dtype, ctx.device)?.t()? } else { randn(62, &[k, n], dtype, ctx.device)? };
    let (a64, b64) = (a.to_device(Device::Cpu)?.to_dtype(DType::F64)?, bm.to_device(Device::Cpu)?.to_dtype(DType::F64)?);
    // CPU: kiln's blocked GEMM with the kernel the dispatch rule picks (the default, `kiln`), each
    // kernel forced (`avx512` where the CPU has AVX-512F, `avx2`), and matrixmultiply, which matmul
    // falls back to below AVX2 (forcing the scalar level selects it; it still picks its own SIMD kernel)
    use crate::tensor::cpu::gemm::{force_kernel, GemmKernel};
    let mut alternatives: Vec<(&str, Level, Option<GemmKernel>)> = Vec::new();
    if ctx.device == Device::Cpu {
        if simd::detected() >= Level::Avx512 {
            alternatives.push(("avx512", Level::Avx512, Some(GemmKernel::Avx512)));
        }
        if simd::detected() >= Level::Avx2 {
            alternatives.push(("avx2", Level::Avx2, None));
        }
        alternatives.push(("matrixmultiply", Level::Scalar, None));
    }
    let name = if ctx.device == Device::Cpu { "kiln" } else { "cublas" };
    let timed = |vname: &str, level: Option<Level>, kernel: Option<GemmKernel>| {
        let (a, b) = (a.clone(), bm.clone());
        let prep = move |_| {
            let (a, b) = (a.clone(), b.clone());
            Ok(Box::new(move || {
                if kernel.is_some() {
                    force_kernel(kernel);
                }
                let r = a.matmul(&b);
                if kernel.is_some() {
                    force_kernel(None);
                }
                Ok(vec![r?])
            }) as Thunk)
        };
        Variant { name: vname.into(), level, timed: true, tol: None, prep: Box::new(prep) }
    };
    // CUDA f32: also cuBLAS on TF32 tensor cores (the opt-in `set_tf32`), checked with TF32's tolerance
    let tf32 = (ctx.device != Device::Cpu && dtype == DType::F32).then(|| {
        let (a, b) = (a.clone(), bm.clone());
        let body = move || -> Result<Vec<Tensor>> {
            let before = crate::tensor::cuda::tf32_enabled();
            crate::tensor::cuda::set_tf32(true);
            let r = a.matmul(&b);
            crate::tensor::cuda::set_tf32(before);
            Ok(vec![r?])
        };
        Variant { name: "cublas-tf32".into(), level: None, timed: true, tol: Some(TF32_TOLERANCE), prep: Box::new(move |_| { let f = body.clone(); Ok(Box::new(f) as Thunk) }) }
    });
    let mut variants = vec![
        Variant { name: "f64-reference".into(), level: None, timed: false, tol: None, prep: Box::new(move |_| { let (a, b) = (a64.clone(), b64.clone()); Ok(Box::new(move || Ok(vec![a.matmul(&b)?])) as Thunk) }) },
        timed(name, None, None),
    ];
    variants.extend(alternatives.iter().map(|&(v, l, kern)| timed(v, Some(l), kern)));
    variants.extend(tf32);
    Ok(Case {
        op: "matmul".into(),
        device: ctx.device,
        dtype,
        shape: format!("{m}x{n}x{k}{}{}", if ta { "-At" } else { "" }, if tb { "-Bt" } else { "" }),
        causal: false,
        work: Work::Flops(2.0 * (m * n * k) as f64),
        variants,
        default_variant: name.into(),
        extra: Default::default(),
    })
}

/// The copy-bandwidth ceiling over `[rows, d]` (bytes: read + write). CPU: a rayon-parallel
/// `copy_from_slice` into a preallocated buffer; CUDA: the elementwise `affine(1, 0)` kernel.
pub fn copy(ctx: &Ctx, dtype: DType, rows: usize, d: usize) -> Result<Case<'static>> {
    let n = rows * d;
    let dtype = if ctx.device == Device::Cpu { DType::F32 } else { dtype }; // the CPU copy moves f32
    let bytes = 2 * (n * dtype.size_in_bytes()) as u64;
    let variant = match ctx.device {
        Device::Cpu => {
            use rayon::prelude::*;
            let src = randn(71, &[n], DType::F32, Device::Cpu)?.to_vec::<f32>()?;
            let mut dst = vec![1.0f32; n];
            // one piece per thread: pieces this large let memcpy use non-temporal stores (measured
            // 1.2 ms for 25 MB on 2 threads, against 2.5 ms with 4 pieces per thread)
            let chunk = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
            let run = move || {
                dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
                dst[n / 2] != src[n / 2]
            };
            let cell = std::cell::RefCell::new(run);
            let cell = Rc::new(cell);
            Variant {
                name: "rayon-memcpy".into(),
                level: None,
                timed: true,
                tol: None,
                prep: Box::new(move |_| {
                    let c = cell.clone();
                    Ok(Box::new(move || if (c.borrow_mut())() { Err(crate::Error::msg("copy: destination differs from source")) } else { Ok(vec![]) }) as Thunk)
                }),
            }
        }
        Device::Cuda(_) => {
            let x = randn(71, &[rows, d], dtype, ctx.device)?;
            Variant { name: "affine(1,0)".into(), level: None, timed: true, tol: None, prep: Box::new(move |_| { let x = x.clone(); Ok(Box::new(move || Ok(vec![x.affine(1.0, 0.0)?])) as Thunk) }) }
        }
    };
    let name = variant.name.clone();
    Ok(Case {
        op: "copy".into(),
        device: ctx.device,
        dtype,
        shape: format!("{rows}x{d}"),
        causal: false,
        work: Work::Bytes(bytes),
        variants: vec![variant],
        default_variant: name,
        extra: Default::default(),
    })
}
