//! GEMM on the CPU: `C = alpha·A·B + beta·C` over strided f32/f64 matrices, with bounds checks and a
//! rayon threading policy. f32 with a row-major C on AVX2 + FMA runs kiln's blocked GEMM
//! (`cpu/sgemm.rs`, [`GemmFloat::blocked_gemm`]); everything else runs matrixmultiply's packed
//! micro-kernels, threaded as described below.
//!
//! # Safety model
//! [`gemm`] is a safe function. Each operand is a [`Mat`]/[`MatMut`]: a slice plus the (offset, rows,
//! cols, row stride, col stride) of a matrix inside it. Before any unsafe call the smallest and largest
//! slice index the matrix can touch are computed with checked arithmetic and compared with the slice
//! length, and C's strides are checked so that no two elements of C share an address (matrixmultiply
//! requires this; A and B may use any stride, including 0 for broadcasting and negative strides).
//! A, B are `&[T]` and C is `&mut [T]`, so C cannot alias A or B. Bad input is an `Err`, never UB.
//!
//! # Threads
//! All parallelism is rayon's; matrixmultiply always runs single-threaded. How matrixmultiply picks its
//! thread count (0.3.11, `src/threading.rs`): with its `threading` feature a process-global
//! `Lazy<Registry>` reads `MATMUL_NUM_THREADS` once, at the first GEMM (default: physical cores,
//! clamped to 1..=4), and builds a `thread-tree` pool; every later call may fork into that pool when
//! `m·k + k·n ≥ 2·16384`. There is no per-call control, so with the feature on, a GEMM called from a
//! rayon worker (a batched matmul, attention over batch·heads) would fork into a second pool and
//! oversubscribe the cores, and forcing single-threaded GEMMs would need `std::env::set_var` before
//! the lazy init (racy with other threads reading the environment). So the workspace builds
//! matrixmultiply *without* `threading` (keep it off: turning it on makes every large GEMM here fork
//! into both pools), and [`Threads::Auto`] splits a large GEMM into row or column panels of C run as
//! rayon tasks, each a single-threaded matrixmultiply call. That nests safely inside other rayon loops
//! (work stealing, no second pool). Back-to-back runs on the shared 2-core dev machine, 1024³ f32,
//! when it gave us ~1.8 cores: rayon panels 93–102 GFLOP/s (56 GFLOP per CPU-second), matrixmultiply's
//! own 2-thread pool 89–96 (49–53 per CPU-second), one thread 74–80; quieter later runs of
//! `benches/ops/matmul.rs` gave 124–147 (2 threads) vs 95–97 (one). Each element of C is computed by
//! one call with the same k-blocking, so results do not depend on the thread count (tested).
use crate::{CpuFloat, Error, Result};
use std::mem::MaybeUninit;
use rayon::prelude::*;

/// The register-block kernel of kiln's blocked f32 GEMM (`cpu/sgemm.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmKernel {
    /// AVX2 + FMA, a 6 × 16 block over 16-column panels (`cpu/gemm256.rs`).
    Avx2,
    /// AVX-512F, a 12 × 32 block over 32-column panels (`cpu/sgemm512.rs`).
    Avx512,
}

/// CPUs on which the AVX-512 kernel was measured faster than the AVX2 one, as
/// (vendor, family, model) from CPUID. Keep it small and measured (`kiln bench --op matmul`'s
/// `avx512` and `avx2` rows, same run; docs/RESULTS.md):
/// - Intel family 6 model 0xCF (`lscpu` "Intel(R) Xeon(R) Processor", Emerald Rapids class;
///   AVX-512 F/BW/VL/VNNI/BF16/FP16, no AMX, 2 vCPUs), 2026-12-07, on a loaded machine: 1024³ f32
///   17.8 ms against the AVX2 kernel's 42.9 ms on 2 threads, 17.0 against 30.1 on one; faster on
///   every shape of docs/RESULTS.md's table (1.65-2.2× on one thread).
/// - AMD family 0x19 model 0x11 (`lscpu` "AMD EPYC", Zen 4 (Genoa class); AVX-512 F/BW/VL/VNNI/
///   BF16, no FP16; 2 vCPUs), 2026-12-07, on a heavily loaded machine (load 8-10 on 2 vCPUs),
///   `examples/gemm_dispatch.rs` with interleaved rounds: never slower than the AVX2 kernel on 10
///   shape × thread-count rows, 1.03-1.58× by wall time and 1.00-1.57× by FLOPs per CPU-second
///   (1024³: 1.04× on one thread, 1.28× on two; 2048³: 1.37×, 1.17×). Zen 4 splits a 512-bit FMA
///   into two 256-bit halves, so the gain is fewer loads and broadcasts per FMA, not wider FMAs.
///
/// Not in the table, so AVX2 by default: every other AMD CPU (Zen 3 has no AVX-512) and the other
/// Intel AVX-512 models (Skylake-SP … Sapphire Rapids), not measured; `KILN_GEMM=avx512` (or
/// [`force_kernel`]) selects it on any AVX-512F CPU.
const AVX512_FASTER: &[(&str, u32, u32)] = &[("GenuineIntel", 6, 0xCF), ("AuthenticAMD", 0x19, 0x11)];

/// Vendor, family and model of this CPU (CPUID leaves 0 and 1, extended family/model folded in).
#[cfg(target_arch = "x86_64")]
fn cpu_id() -> (String, u32, u32) {
    use std::arch::x86_64::__cpuid;
    // CPUID leaves 0 and 1 exist on every x86_64 CPU
    let (l0, l1) = (__cpuid(0), __cpuid(1));
    let vendor: Vec<u8> = [l0.ebx, l0.edx, l0.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
    let (base_fam, base_model) = ((l1.eax >> 8) & 0xF, (l1.eax >> 4) & 0xF);
    let (ext_fam, ext_model) = ((l1.eax >> 20) & 0xFF, (l1.eax >> 16) & 0xF);
    let family = if base_fam == 0xF { base_fam + ext_fam } else { base_fam };
    let model = if base_fam == 0x6 || base_fam == 0xF { (ext_model << 4) | base_model } else { base_model };
    (String::from_utf8_lossy(&vendor).into_owned(), family, model)
}

/// 0: no override; 1: AVX2; 2: AVX-512 (see [`force_kernel`]).
static FORCED_KERNEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Forces the blocked GEMM's kernel (None: back to the default rule of [`kernel`]). Process-wide;
/// for tests and benchmarks. The SIMD level still caps it: forcing AVX-512 at level AVX2 runs AVX2.
pub fn force_kernel(k: Option<GemmKernel>) {
    let v = match k {
        None => 0,
        Some(GemmKernel::Avx2) => 1,
        Some(GemmKernel::Avx512) => 2,
    };
    FORCED_KERNEL.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// Runs `f` with the kernel forced to `k` (see [`force_kernel`]), restoring the default afterwards;
/// serialized with [`super::simd::with_level`] by the same lock.
pub fn with_kernel<R>(k: GemmKernel, f: impl FnOnce() -> R) -> R {
    let _g = super::simd::FORCE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    force_kernel(Some(k));
    let r = f();
    force_kernel(None);
    r
}

/// The kernel kiln's blocked f32 GEMM runs now, or None where it does not run (below AVX2 + FMA,
/// or the level forced to scalar: matmul then runs matrixmultiply).
///
/// Dispatch rule: at SIMD level AVX2 the AVX2 kernel. At level AVX-512 (avx512f + avx2 + fma),
/// the AVX-512 kernel where the CPU is in `AVX512_FASTER` (measured faster there), else the AVX2
/// kernel (CPUs not measured). Overrides, in order: [`force_kernel`], then the
/// environment variable `KILN_GEMM=avx2|avx512` (read once); either is capped by the level.
pub fn kernel() -> Option<GemmKernel> {
    use super::simd::{level, Level};
    let l = level();
    if l < Level::Avx2 {
        return None;
    }
    if l < Level::Avx512 {
        return Some(GemmKernel::Avx2);
    }
    match FORCED_KERNEL.load(std::sync::atomic::Ordering::Relaxed) {
        1 => return Some(GemmKernel::Avx2),
        2 => return Some(GemmKernel::Avx512),
        _ => {}
    }
    static DEFAULT: std::sync::OnceLock<GemmKernel> = std::sync::OnceLock::new();
    Some(*DEFAULT.get_or_init(|| match std::env::var("KILN_GEMM").ok().as_deref() {
        Some("avx2") => GemmKernel::Avx2,
        Some("avx512") | Some("avx512bf16") => GemmKernel::Avx512,
        _ => default_kernel(),
    }))
}

/// The table's choice at level AVX-512 (no override).
fn default_kernel() -> GemmKernel {
    #[cfg(target_arch = "x86_64")]
    {
        let (vendor, family, model) = cpu_id();
        if AVX512_FASTER.iter().any(|&(v, f, m)| v == vendor && f == family && m == model) {
            return GemmKernel::Avx512;
        }
    }
    GemmKernel::Avx2
}

/// Element types with a matrixmultiply kernel.
pub trait GemmFloat: CpuFloat {
    /// # Safety
    /// The pointers and strides must describe in-bounds matrices; C's elements must not alias.
    #[allow(clippy::too_many_arguments)]
    unsafe fn raw_gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
    /// kiln's own blocked GEMM for this type, when the CPU and C's layout allow it (row-major C):
    /// returns false to leave the call to [`GemmFloat::raw_gemm`]. Arguments as for `raw_gemm`, plus
    /// `bias` (null: none), a row of n added to every row of C.
    ///
    /// # Safety
    /// As for `raw_gemm`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn blocked_gemm(
        _m: usize,
        _k: usize,
        _n: usize,
        _alpha: Self,
        _a: *const Self,
        _rsa: isize,
        _csa: isize,
        _b: *const Self,
        _rsb: isize,
        _csb: isize,
        _beta: Self,
        _c: *mut Self,
        _rsc: isize,
        _csc: isize,
        _bias: *const Self,
        _parallel: bool,
    ) -> bool {
        false
    }
}

impl GemmFloat for f32 {
    unsafe fn raw_gemm(m: usize, k: usize, n: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, b: *const f32, rsb: isize, csb: isize, beta: f32, c: *mut f32, rsc: isize, csc: isize) {
        matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn blocked_gemm(m: usize, k: usize, n: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, b: *const f32, rsb: isize, csb: isize, beta: f32, c: *mut f32, rsc: isize, csc: isize, bias: *const f32, parallel: bool) -> bool {
        if csc != 1 || rsc < 0 || !super::sgemm::available() {
            return false;
        }
        super::sgemm::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc as usize, bias, parallel);
        true
    }
}

impl GemmFloat for f64 {
    unsafe fn raw_gemm(m: usize, k: usize, n: usize, alpha: f64, a: *const f64, rsa: isize, csa: isize, b: *const f64, rsb: isize, csb: isize, beta: f64, c: *mut f64, rsc: isize, csc: isize) {
        matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
}

/// How many threads one GEMM may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread only (use inside rayon loops that already cover the cores).
    Single,
    /// Split large GEMMs into panels of C across the current rayon pool (safe to nest in rayon).
    Auto,
}

/// A read-only strided matrix inside a slice: element (i, j) is `data[offset + i*rs + j*cs]`.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: isize,
    pub cs: isize,
}

/// A writable strided matrix inside a slice (see [`Mat`]); its elements must not alias each other.
#[derive(Debug)]
pub struct MatMut<'a, T> {
    pub data: &'a mut [T],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: isize,
    pub cs: isize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major `rows × cols` matrix starting at `data[0]`.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat { data, offset: 0, rows, cols, rs: cols as isize, cs: 1 }
    }
    /// The transpose (a stride swap, no copy).
    pub fn t(self) -> Self {
        Mat { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }
}

impl<'a, T> MatMut<'a, T> {
    /// A row-major `rows × cols` matrix starting at `data[0]`.
    pub fn row_major(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        MatMut { data, offset: 0, rows, cols, rs: cols as isize, cs: 1 }
    }
}

/// Parallel grain: GEMMs below this many flops (2·m·n·k) stay on one thread, unless B is
/// larger than [`PAR_B_ELEMS`].
pub const PAR_FLOPS: f64 = (1u64 << 23) as f64;
/// A GEMM whose B has this many elements (1 MB of f32) is split across threads whatever its flops:
/// with one or a few rows of A (decoding a token) it is bound by reading B, which two cores do faster than one.
pub const PAR_B_ELEMS: usize = 1 << 18;

/// Where a matrix sits in its slice.
#[derive(Debug, Clone, Copy)]
struct Geom {
    offset: usize,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

impl Geom {
    /// The (min, max) slice index the matrix touches, or None when it is empty. Errors when the
    /// arithmetic overflows.
    fn span(self) -> Result<Option<(isize, isize)>> {
        let Geom { offset, rows, cols, rs, cs } = self;
        if rows == 0 || cols == 0 {
            return Ok(None);
        }
        let ovf = || Error::msg(format!("gemm: matrix extent overflows (rows {rows}, cols {cols}, strides {rs}, {cs})"));
        let base = isize::try_from(offset).map_err(|_| ovf())?;
        let (mut lo, mut hi) = (base, base);
        for (len, s) in [(rows, rs), (cols, cs)] {
            let len = isize::try_from(len - 1).map_err(|_| ovf())?;
            let ext = len.checked_mul(s).ok_or_else(ovf)?;
            if ext < 0 {
                lo = lo.checked_add(ext).ok_or_else(ovf)?;
            } else {
                hi = hi.checked_add(ext).ok_or_else(ovf)?;
            }
        }
        Ok(Some((lo, hi)))
    }

    /// Errors unless every element lies inside a slice of `len` elements.
    fn check(self, what: &str, len: usize) -> Result<()> {
        if let Some((lo, hi)) = self.span()? {
            if lo < 0 || hi as usize >= len {
                let Geom { offset, rows, cols, rs, cs } = self;
                return Err(Error::msg(format!(
                    "gemm: {what} ({rows}x{cols}, offset {offset}, strides ({rs}, {cs})) reaches index {} outside a buffer of {len}",
                    if lo < 0 { lo } else { hi }
                )));
            }
        }
        Ok(())
    }
}

/// True when distinct (i, j) of a rows × cols matrix with strides (rs, cs) map to distinct addresses
/// (a sufficient test: the inner stride's whole extent fits strictly inside one outer step).
fn no_self_alias(rows: usize, cols: usize, rs: isize, cs: isize) -> bool {
    let dims = [(rows, rs.unsigned_abs()), (cols, cs.unsigned_abs())];
    let live: Vec<(usize, usize)> = dims.into_iter().filter(|&(n, _)| n > 1).collect();
    match live.as_slice() {
        [] => true,
        [(_, s)] => *s > 0,
        [a, b] => {
            let (inner, outer) = if a.1 <= b.1 { (*a, *b) } else { (*b, *a) };
            inner.1 > 0 && inner.1.checked_mul(inner.0 - 1).is_some_and(|e| e < outer.1)
        }
        _ => unreachable!(),
    }
}

/// A raw C pointer that rayon tasks may share; each task writes a disjoint panel.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// `C = alpha·A·B + beta·C` with A `m×k`, B `k×n`, C `m×n` (all strided; see the module docs).
/// With `beta == 0` the old contents of C are ignored (NaNs included). Errors on mismatched shapes,
/// out-of-bounds strides/offsets, or a C whose elements alias.
pub fn gemm<T: GemmFloat>(alpha: T, a: Mat<'_, T>, b: Mat<'_, T>, beta: T, c: MatMut<'_, T>, threads: Threads) -> Result<()> {
    let cg = Geom { offset: c.offset, rows: c.rows, cols: c.cols, rs: c.rs, cs: c.cs };
    // SAFETY: C is an initialized slice of `c.data.len()` elements, exclusively borrowed.
    unsafe { gemm_at(alpha, a, b, beta, c.data.as_mut_ptr(), c.data.len(), cg, None, threads) }
}

/// `C = alpha·A·B` into `c`, a row-major `a.rows × b.cols` matrix filling the whole slice, which
/// may be uninitialized: with β = 0 matrixmultiply writes every element of C without reading it (its
/// documented contract; for k = 0 it writes zeros). For fresh outputs: no zero-fill pass first (a
/// full extra write of C, 3% of a CPU training step). Errors as [`gemm`] does.
pub fn gemm_uninit<T: GemmFloat>(alpha: T, a: Mat<'_, T>, b: Mat<'_, T>, c: &mut [MaybeUninit<T>], threads: Threads) -> Result<()> {
    let (m, n) = (a.rows, b.cols);
    if c.len() != m * n {
        return Err(Error::msg(format!("gemm: output buffer of {} elements for a {m}x{n} result", c.len())));
    }
    let cg = Geom { offset: 0, rows: m, cols: n, rs: n as isize, cs: 1 };
    // SAFETY: `c` is exclusively borrowed; β = 0, so no element of C is read before it is written.
    unsafe { gemm_at(alpha, a, b, T::zero(), c.as_mut_ptr().cast(), c.len(), cg, None, threads) }
}

/// Whether [`gemm_bf16_b`] runs on this CPU (AVX2 + FMA).
pub fn bf16_b_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::sgemm::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `C = A·B` into uninitialized `c` (row-major `a.rows × b.cols`, the whole slice; every element is
/// written) for an f32 A and a bf16 B read as it is stored: the blocked GEMM packs B's panels
/// straight from bf16 and the few-rows paths widen it as they stream it, so a bf16 weight is never
/// widened whole (decoding with bf16 weights streams half the bytes of f32). The same bits as
/// widening B first and multiplying in f32. An error where [`bf16_b_supported`] is false.
pub fn gemm_bf16_b(a: Mat<'_, f32>, b: Mat<'_, half::bf16>, c: &mut [MaybeUninit<f32>]) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || c.len() != m * n {
        return Err(Error::msg(format!("gemm: A {m}x{k}, B {}x{n} and an output of {} elements do not chain", b.rows, c.len())));
    }
    if !bf16_b_supported() {
        return Err(Error::msg("gemm: the bf16-B product needs AVX2 + FMA"));
    }
    #[cfg(target_arch = "x86_64")]
    {
        if k > 0 {
            Geom { offset: a.offset, rows: m, cols: k, rs: a.rs, cs: a.cs }.check("A", a.data.len())?;
            Geom { offset: b.offset, rows: k, cols: n, rs: b.rs, cs: b.cs }.check("B", b.data.len())?;
        }
        let parallel = split_across_threads(m, k, n, rayon::current_num_threads());
        let (pa, pb) = if k > 0 { (a.data[a.offset..].as_ptr(), b.data[b.offset..].as_ptr()) } else { (a.data.as_ptr(), b.data.as_ptr()) };
        // SAFETY: A and B were checked in bounds; `c` is an exclusively borrowed m × n row-major
        // buffer, never read (β = 0) and written whole.
        unsafe { super::sgemm::sgemm::<half::bf16>(m, k, n, 1.0, pa, a.rs, a.cs, pb, b.rs, b.cs, 0.0, c.as_mut_ptr().cast(), n, std::ptr::null(), parallel) };
    }
    Ok(())
}

/// How bf16 × bf16 products run on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Gemm {
    /// Natively on AVX512_BF16 (`vdpbf16ps`, `cpu/sbgemm.rs`): bf16 pairs multiplied and summed in
    /// f32, operands packed as bf16 (half the bytes of f32).
    Native,
    /// Widened to f32 and multiplied by the f32 GEMM (any CPU).
    Widen,
}

/// 0: no override; 1: widen; 2: native (see [`force_bf16`]).
static FORCED_BF16: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether this CPU has what the native bf16 GEMM needs: AVX512_BF16 (`avx512bf16`) with
/// AVX-512 F/BW/VL, AVX2 and FMA.
pub fn bf16_native_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::sbgemm::detected();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Forces how bf16 products run (None: back to the default rule of [`bf16_gemm`]). Process-wide,
/// for tests and benchmarks; forcing `Native` on a CPU without it still widens.
pub fn force_bf16(p: Option<Bf16Gemm>) {
    let v = match p {
        None => 0,
        Some(Bf16Gemm::Widen) => 1,
        Some(Bf16Gemm::Native) => 2,
    };
    FORCED_BF16.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// Runs `f` with bf16 products forced to `p` (see [`force_bf16`]), restoring the default
/// afterwards; serialized with [`with_kernel`] and `simd::with_level` by the same lock.
pub fn with_bf16<R>(p: Bf16Gemm, f: impl FnOnce() -> R) -> R {
    let _g = super::simd::FORCE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    force_bf16(Some(p));
    let r = f();
    force_bf16(None);
    r
}

/// How bf16 × bf16 products run now. Native where [`bf16_native_detected`] and the SIMD level is
/// not forced below AVX-512; else widened. Overrides, in order: [`force_bf16`], then
/// `KILN_GEMM` (read once): `avx2` or `avx512` widen (the GEMM levels of CPUs without
/// AVX512_BF16), `avx512bf16` is the default on a CPU that has it.
pub fn bf16_gemm() -> Bf16Gemm {
    if !bf16_native_detected() || super::simd::level() < super::simd::Level::Avx512 {
        return Bf16Gemm::Widen;
    }
    match FORCED_BF16.load(std::sync::atomic::Ordering::Relaxed) {
        1 => return Bf16Gemm::Widen,
        2 => return Bf16Gemm::Native,
        _ => {}
    }
    static DEFAULT: std::sync::OnceLock<Bf16Gemm> = std::sync::OnceLock::new();
    *DEFAULT.get_or_init(|| match std::env::var("KILN_GEMM").ok().as_deref() {
        Some("avx2") | Some("avx512") => Bf16Gemm::Widen,
        _ => Bf16Gemm::Native,
    })
}

/// Output element types of [`gemm_bf16`]: f32, or bf16 rounded once (to nearest even) from the
/// f32 sum.
pub trait Bf16Out: Copy + Send + Sync + 'static {
    /// True for bf16.
    const BF16: bool;
}
impl Bf16Out for f32 {
    const BF16: bool = false;
}
impl Bf16Out for half::bf16 {
    const BF16: bool = true;
}

/// `C = A·B` for bf16 A and B on AVX512_BF16 (`vdpbf16ps`: pairs of bf16 along k multiplied
/// exactly and summed in f32), into uninitialized `c` (row-major `a.rows × b.cols`, the whole
/// slice; every element is written) as f32 or bf16. A and B may have any strides. Errors on
/// shapes that do not chain, out-of-bounds operands, or where [`bf16_gemm`] is not `Native`
/// (callers widen instead).
pub fn gemm_bf16<O: Bf16Out>(a: Mat<'_, half::bf16>, b: Mat<'_, half::bf16>, c: &mut [MaybeUninit<O>], threads: Threads) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || c.len() != m * n {
        return Err(Error::msg(format!("gemm: A {m}x{k}, B {}x{n} and an output of {} elements do not chain", b.rows, c.len())));
    }
    if bf16_gemm() != Bf16Gemm::Native {
        return Err(Error::msg("gemm: the native bf16 product needs AVX512_BF16 (and is not forced off)"));
    }
    #[cfg(target_arch = "x86_64")]
    {
        if k > 0 && m > 0 && n > 0 {
            Geom { offset: a.offset, rows: m, cols: k, rs: a.rs, cs: a.cs }.check("A", a.data.len())?;
            Geom { offset: b.offset, rows: k, cols: n, rs: b.rs, cs: b.cs }.check("B", b.data.len())?;
        }
        let parallel = threads == Threads::Auto && split_across_threads(m, k, n, rayon::current_num_threads());
        // element (0, 0), derived from the whole slices so that negative strides keep their provenance
        // (for an empty product A and B are never read)
        let (pa, pb) = if k > 0 && m > 0 && n > 0 {
            // SAFETY: the checks above cover element (0, 0) of both
            unsafe { (a.data.as_ptr().add(a.offset), b.data.as_ptr().add(b.offset)) }
        } else {
            (a.data.as_ptr(), b.data.as_ptr())
        };
        // SAFETY: A and B were checked in bounds; `c` is an exclusively borrowed m × n row-major
        // buffer, never read and written whole; the CPU has AVX512_BF16 (`bf16_gemm` is Native).
        unsafe { super::sbgemm::sbgemm::<O>(m, k, n, pa, a.rs, a.cs, pb, b.rs, b.cs, c.as_mut_ptr().cast(), n, parallel) };
    }
    Ok(())
}

/// Whether a GEMM of this size is split across `nt` threads: enough FLOPs ([`PAR_FLOPS`]) or a
/// large enough B ([`PAR_B_ELEMS`]).
fn split_across_threads(m: usize, k: usize, n: usize, nt: usize) -> bool {
    nt > 1 && (2.0 * m as f64 * n as f64 * k as f64 >= PAR_FLOPS || k * n >= PAR_B_ELEMS)
}

/// `C = alpha·A·B + bias` (the bias row added to every row) into uninitialized `c`, as
/// [`gemm_uninit`]. The blocked f32 GEMM adds the bias inside its tasks, on tiles of C that are in
/// cache; elsewhere C is first filled with the bias rows and the GEMM accumulates onto them.
pub fn gemm_bias_uninit<T: GemmFloat>(alpha: T, a: Mat<'_, T>, b: Mat<'_, T>, bias: &[T], c: &mut [MaybeUninit<T>], threads: Threads) -> Result<()> {
    let (m, n) = (a.rows, b.cols);
    if c.len() != m * n || bias.len() != n {
        return Err(Error::msg(format!("gemm: output buffer of {} elements and a bias of {} for a {m}x{n} result", c.len(), bias.len())));
    }
    let cg = Geom { offset: 0, rows: m, cols: n, rs: n as isize, cs: 1 };
    // SAFETY: `c` is exclusively borrowed; β = 0 and the bias path writes C before reading it.
    unsafe { gemm_at(alpha, a, b, T::zero(), c.as_mut_ptr().cast(), c.len(), cg, Some(bias), threads) }
}

/// The body of [`gemm`], [`gemm_uninit`] and [`gemm_bias_uninit`]: C is the matrix `cg` inside
/// `c_len` elements at `c_data`; `bias` (n elements, only with `beta` zero and a row-major C) is
/// added to every row.
///
/// # Safety
/// `c_data` points to `c_len` elements that nothing else accesses during the call; they must be
/// initialized unless `beta` is zero.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_at<T: GemmFloat>(alpha: T, a: Mat<'_, T>, b: Mat<'_, T>, mut beta: T, c_data: *mut T, c_len: usize, cg: Geom, bias: Option<&[T]>, threads: Threads) -> Result<()> {
    const OP: &str = "gemm";
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || cg.rows != m || cg.cols != n {
        return Err(Error::msg(format!(
            "{OP}: shapes do not chain: A {}x{}, B {}x{}, C {}x{}",
            a.rows, a.cols, b.rows, b.cols, cg.rows, cg.cols
        )));
    }
    cg.check("C", c_len)?;
    if !no_self_alias(m, n, cg.rs, cg.cs) {
        return Err(Error::msg(format!("{OP}: C strides ({}, {}) make elements of a {m}x{n} output alias", cg.rs, cg.cs)));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k > 0 {
        Geom { offset: a.offset, rows: m, cols: k, rs: a.rs, cs: a.cs }.check("A", a.data.len())?;
        Geom { offset: b.offset, rows: k, cols: n, rs: b.rs, cs: b.cs }.check("B", b.data.len())?;
    }
    // Pointers to element (0, 0). In bounds: the checks above cover element (0, 0) of each non-empty
    // matrix; for k == 0 matrixmultiply never reads A or B, and an empty slice's pointer is fine.
    // Derived from the whole slice (not a sub-slice) so negative strides keep the slice's provenance.
    let pa = if k > 0 { unsafe { a.data.as_ptr().add(a.offset) } } else { a.data.as_ptr() };
    let pb = if k > 0 { unsafe { b.data.as_ptr().add(b.offset) } } else { b.data.as_ptr() };
    let pc = SendPtr(unsafe { c_data.add(cg.offset) });
    let (rsa, csa, rsb, csb, rsc, csc) = (a.rs, a.cs, b.rs, b.cs, cg.rs, cg.cs);

    let nt = rayon::current_num_threads();
    let parallel = threads == Threads::Auto && split_across_threads(m, k, n, nt);
    let bias_ptr = bias.map_or(std::ptr::null(), |b| b.as_ptr());
    // SAFETY: bounds and C's non-aliasing were checked above; C is exclusively borrowed.
    if unsafe { T::blocked_gemm(m, k, n, alpha, pa, rsa, csa, pb, rsb, csb, beta, pc.0, rsc, csc, bias_ptr, parallel) } {
        return Ok(());
    }
    if let Some(bias) = bias {
        // C starts as the bias rows (row-major, checked by the callers), the GEMM accumulates onto it
        for i in 0..m {
            // SAFETY: row i of the checked, row-major C (n elements at offset i·rsc)
            unsafe { std::ptr::copy_nonoverlapping(bias.as_ptr(), pc.0.offset(i as isize * rsc), n) };
        }
        beta = T::one();
    }
    let split_m = m >= n;
    let len = if split_m { m } else { n };
    // Panels: one per thread, each at least 64 rows/cols (a multiple of 16, the widest micro-tile)
    // so that re-packing the shared operand in every panel stays a small fraction of the work.
    let parts = if parallel { nt.min(len / 64).max(1) } else { 1 };
    if parts == 1 {
        // SAFETY: bounds and C's non-aliasing were checked above; C is exclusively borrowed.
        unsafe { T::raw_gemm(m, k, n, alpha, pa, rsa, csa, pb, rsb, csb, beta, pc.0, rsc, csc) };
        return Ok(());
    }
    let chunk = len.div_ceil(parts).div_ceil(16) * 16;
    let (sa, sb) = (SendPtr(pa as *mut T), SendPtr(pb as *mut T));
    (0..len.div_ceil(chunk)).into_par_iter().for_each(move |p| {
        let (sa, sb, pc) = (sa, sb, pc);
        let start = p * chunk;
        let size = chunk.min(len - start);
        // SAFETY: each panel is a sub-rectangle of the checked matrices (rows [start, start+size) of
        // A and C, or columns of B and C); panels of C are disjoint because C does not self-alias.
        unsafe {
            if split_m {
                let o = start as isize;
                T::raw_gemm(size, k, n, alpha, sa.0.offset(o * rsa), rsa, csa, sb.0, rsb, csb, beta, pc.0.offset(o * rsc), rsc, csc);
            } else {
                let o = start as isize;
                T::raw_gemm(m, k, size, alpha, sa.0, rsa, csa, sb.0.offset(o * csb), rsb, csb, beta, pc.0.offset(o * csc), rsc, csc);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, k: usize, n: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matches_naive_all_thread_modes_and_transposes() {
        for &(m, k, n) in &[(1, 1, 1), (3, 7, 13), (130, 70, 200), (200, 257, 90), (5, 0, 4)] {
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 37 % 101) as f64 - 50.0) / 25.0).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 53 % 97) as f64 - 48.0) / 30.0).collect();
            let want = naive(m, k, n, &a, &b);
            // B stored transposed (n×k row-major), read through swapped strides.
            let bt: Vec<f64> = (0..n * k).map(|q| b[(q % k) * n + q / k]).collect();
            for threads in [Threads::Single, Threads::Auto] {
                let mut c = vec![f64::NAN; m * n];
                gemm(1.0, Mat::row_major(&a, m, k), Mat::row_major(&bt, n, k).t(), 0.0, MatMut::row_major(&mut c, m, n), threads).unwrap();
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-9 * (1.0 + y.abs()), "{m}x{k}x{n}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn uninit_output_is_written_completely() {
        // (5, 0, 4): k = 0 must still produce zeros; the big shape takes the threaded panel path
        for &(m, k, n) in &[(3, 7, 13), (5, 0, 4), (300, 70, 200)] {
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 37 % 101) as f64 - 50.0) / 25.0).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 53 % 97) as f64 - 48.0) / 30.0).collect();
            let want = naive(m, k, n, &a, &b);
            for threads in [Threads::Single, Threads::Auto] {
                // stale NaNs where the "uninitialized" output lives
                let mut c: Vec<MaybeUninit<f64>> = vec![MaybeUninit::new(f64::NAN); m * n];
                gemm_uninit(1.0, Mat::row_major(&a, m, k), Mat::row_major(&b, k, n), &mut c, threads).unwrap();
                for (x, y) in c.iter().zip(&want) {
                    let x = unsafe { x.assume_init() };
                    assert!((x - y).abs() < 1e-9 * (1.0 + y.abs()), "{m}x{k}x{n}: {x} vs {y}");
                }
            }
        }
        let a = vec![1.0f32; 12];
        let mut short = vec![MaybeUninit::new(0f32); 8];
        let e = gemm_uninit(1.0, Mat::row_major(&a, 3, 4), Mat::row_major(&a, 4, 3), &mut short, Threads::Single).unwrap_err();
        assert!(e.to_string().contains("output buffer of 8 elements for a 3x3 result"), "{e}");
    }

    #[test]
    fn rejects_out_of_bounds_and_aliasing() {
        let a = vec![1.0f32; 12];
        let mut c = vec![0.0f32; 9];
        let ok = |c: &mut [f32]| gemm(1.0, Mat::row_major(&a, 3, 4), Mat::row_major(&a, 4, 3), 0.0, MatMut::row_major(c, 3, 3), Threads::Single);
        assert!(ok(&mut c).is_ok());
        assert_eq!(c[0], 4.0);
        let short = Mat { offset: 1, ..Mat::row_major(&a, 3, 4) };
        assert!(gemm(1.0, short, Mat::row_major(&a, 4, 3), 0.0, MatMut::row_major(&mut c, 3, 3), Threads::Single).is_err());
        let neg = Mat { rs: -4, ..Mat::row_major(&a, 3, 4) };
        assert!(gemm(1.0, neg, Mat::row_major(&a, 4, 3), 0.0, MatMut::row_major(&mut c, 3, 3), Threads::Single).is_err());
        let alias = MatMut { rs: 1, cs: 1, ..MatMut::row_major(&mut c, 3, 3) };
        assert!(gemm(1.0, Mat::row_major(&a, 3, 4), Mat::row_major(&a, 4, 3), 0.0, alias, Threads::Single).is_err());
        let bad_chain = gemm(1.0, Mat::row_major(&a, 3, 4), Mat::row_major(&a, 3, 4), 0.0, MatMut::row_major(&mut c, 3, 3), Threads::Single);
        assert!(bad_chain.unwrap_err().to_string().contains("gemm"));
        // zero strides (broadcast) in A and B are fine
        let bc = Mat { rs: 0, ..Mat::row_major(&a[..4], 3, 4) };
        assert!(gemm(1.0, bc, Mat::row_major(&a, 4, 3), 0.0, MatMut::row_major(&mut c, 3, 3), Threads::Auto).is_ok());
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Big enough to be split into panels along m, then along n.
        for &(m, k, n) in &[(300, 150, 200), (150, 170, 300)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 9.0).collect();
            let run = |threads: usize, mode: Threads| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut c = vec![0f32; m * n];
                pool.install(|| gemm(1.0, Mat::row_major(&a, m, k), Mat::row_major(&b, k, n), 0.0, MatMut::row_major(&mut c, m, n), mode)).unwrap();
                c
            };
            let single = run(1, Threads::Single);
            assert_eq!(single, run(2, Threads::Auto), "{m}x{k}x{n}");
            assert_eq!(single, run(3, Threads::Auto), "{m}x{k}x{n}");
        }
    }
}
