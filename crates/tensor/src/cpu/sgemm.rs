//! Blocked f32 GEMM for matmul: `C = alpha·A·B + beta·C`, C with unit column stride, on one of two
//! register-block kernels picked at run time ([`super::gemm::kernel`], which holds the dispatch
//! rule): AVX2 + FMA (6 × 16, `gemm256.rs`) or AVX-512F (12 × 32, `sgemm512.rs`).
//!
//! matrixmultiply, with C split into one panel per thread, packs all of the shared operand again in
//! every thread; on a training step's shapes (k = 256 or 1024, m = 1024 tokens) its packing was 9%
//! of the step's CPU time. Here B is packed once per call by all threads together, and each task
//! packs only its own rows of A:
//!
//! * B is packed, all of k deep and as many columns as fit in 8 MB, into `NR`-column panels (16 for
//!   AVX2, 32 for AVX-512; transposed B goes through 8 × 8 AVX transposes), in parallel;
//! * then tasks of up to `MC` rows of A (× a group of panels when m is small) run in parallel, each
//!   over all of k in blocks of `KC`: pack its `MC × KC` slice of A into `MR`-row strips (72 KB for
//!   AVX2, 144 KB for AVX-512: stays in L2), then sweep its panels with the register block, a
//!   `KC × NR` panel block (16 KB / 32 KB) staying in L1 while the strips pass over it. A task owns
//!   its tile of C for the whole of k, so the tile stays in its core's L2 between k blocks.
//!
//! Every element of C is the same sequence of operations whatever the thread count (a sequential
//! sum over each `KC` block, blocks added in order), so results do not depend on it; both kernels
//! use KC = 256 and the same operations per element, so they give the same bits as each other.
use super::gemm::GemmKernel;
use super::gemm256::{self, BElem};
use super::sgemm512;
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Rows of B (depth) per packed block.
const KC: usize = 256;
/// Floats of packed B per block (8 MB, L3-resident): all of k deep, as many columns as fit.
const B_FLOATS: usize = 1 << 21;
/// Rows of A per task (a multiple of the 6-row register block).
const MC: usize = 72;
/// Panel width (the register block's 16 columns).
const NR: usize = 16;

/// A raw pointer rayon tasks may share (each task writes disjoint rows/columns of C).
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    /// The pointer (a method, so closures capture the whole `Ptr`, not its non-`Sync` field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// True when the kernels may run: AVX2 + FMA detected and not forced off ([`super::simd::force_level`]).
pub(crate) fn available() -> bool {
    super::simd::level() >= super::simd::Level::Avx2
}

/// `C = alpha·A·B + beta·C (+ bias)` with `A[i][p] = a[i·rsa + p·csa]`, `B[p][j] = b[p·rsb + j·csb]`,
/// `C[i][j] = c[i·ldc + j]`; `beta == 0` never reads C. `bias` (null: none) is a row of n added to
/// every row of C: each task writes it into its tile of C just before its first block of k, while
/// the tile is in cache, instead of a separate pass over C. `parallel`: split across rayon's threads.
///
/// # Safety
/// [`available`]; every addressed element of A, B (when k > 0), C and the bias is in bounds; C's rows
/// do not overlap (`ldc ≥ n` or m ≤ 1) and C does not alias A, B or the bias.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm<E: BElem>(m: usize, k: usize, n: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, b: *const E, rsb: isize, csb: isize, beta: f32, c: *mut f32, ldc: usize, bias: *const f32, parallel: bool) {
    if m == 0 || n == 0 {
        return;
    }
    let (c, bias) = (Ptr(c), Ptr(bias as *mut f32));
    // adds the bias to rows i0..i1, columns j0..j0 + w of C (a copy when the rows were not yet written)
    let add_bias = |i0: usize, i1: usize, j0: usize, w: usize, overwrite: bool| {
        if bias.get().is_null() {
            return;
        }
        // SAFETY: in bounds per the caller's contract; rows of C do not overlap the bias. Rows not
        // yet written (beta = 0, possibly uninitialized) are only written through the raw pointer.
        let bv = unsafe { std::slice::from_raw_parts(bias.get().add(j0), w) };
        for i in i0..i1 {
            let dst = unsafe { c.get().add(i * ldc + j0) };
            if overwrite {
                unsafe { std::ptr::copy_nonoverlapping(bv.as_ptr(), dst, w) };
            } else {
                let row = unsafe { std::slice::from_raw_parts_mut(dst, w) };
                row.iter_mut().zip(bv).for_each(|(x, &y)| *x += y);
            }
        }
    };
    if beta != 0.0 && beta != 1.0 {
        for i in 0..m {
            for x in std::slice::from_raw_parts_mut(c.0.add(i * ldc), n) {
                *x *= beta;
            }
        }
    }
    if k == 0 {
        if beta == 0.0 {
            for i in 0..m {
                std::ptr::write_bytes(c.0.add(i * ldc), 0, n);
            }
        }
        add_bias(0, m, 0, n, false);
        return;
    }
    let nt = if parallel { rayon::current_num_threads() } else { 1 };
    let kernel = super::gemm::kernel().unwrap_or(GemmKernel::Avx2);
    let kc = kc_of(kernel);
    if m <= FEW_ROWS {
        // SAFETY: as for this function
        few_rows::<E>(m, k, n, kc, alpha, a, rsa, csa, b, rsb, csb, beta, c.get(), ldc, !bias.get().is_null(), &add_bias, nt);
        return;
    }
    match kernel {
        GemmKernel::Avx2 => blocked::<E, K256>(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, ldc, bias, &add_bias, nt),
        // SAFETY: `kernel()` reports Avx512 only at simd level Avx512 (avx512f, avx2, fma detected)
        GemmKernel::Avx512 => blocked::<E, K512>(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, ldc, bias, &add_bias, nt),
    }
}

/// The k depth of the blocks each kernel sums (the few-rows paths use the same, so that their rows
/// are the blocked path's bits).
fn kc_of(k: GemmKernel) -> usize {
    match k {
        GemmKernel::Avx2 => K256::KC,
        GemmKernel::Avx512 => K512::KC,
    }
}

/// One register-block kernel of the blocked path, with its packing and blocking parameters.
trait Kern {
    /// Rows per register block (and per packed strip of A).
    const MR: usize;
    /// Columns per packed panel of B.
    const NR: usize;
    /// Rows of A per task (a multiple of MR).
    const MC: usize;
    /// Rows of B (depth) per block of k.
    const KC: usize;
    /// Packs one panel (`w` ≤ NR columns, zero-padded) of all k rows of B into `dst` (k·NR floats).
    ///
    /// # Safety
    /// The kernel's CPU features; B's k × w elements in bounds.
    unsafe fn pack_panel<E: BElem>(k: usize, w: usize, b: *const E, rsb: isize, csb: isize, dst: *mut f32);
    /// One task's block of k: see [`run_task`].
    ///
    /// # Safety
    /// As for [`run_task`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_task(rows: usize, cols: usize, kc: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, panels: *const f32, pstride: usize, acc: bool, c: *mut f32, ldc: usize);
}

/// AVX2 + FMA: the 6 × 16 block of `gemm256.rs`, 16-column panels.
struct K256;
impl Kern for K256 {
    const MR: usize = 6;
    const NR: usize = NR;
    const MC: usize = MC;
    const KC: usize = KC;
    unsafe fn pack_panel<E: BElem>(k: usize, w: usize, b: *const E, rsb: isize, csb: isize, dst: *mut f32) {
        gemm256::pack_panel(k, w, b, rsb, csb, std::slice::from_raw_parts_mut(dst, k * NR))
    }
    unsafe fn run_task(rows: usize, cols: usize, kc: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, panels: *const f32, pstride: usize, acc: bool, c: *mut f32, ldc: usize) {
        run_task(rows, cols, kc, alpha, a, rsa, csa, panels, pstride, acc, c, ldc)
    }
}

/// AVX-512F: the 12 × 32 block of `sgemm512.rs`, 32-column panels. KC = 256 and MC = 144 (12
/// strips, 144 KB of packed A) come from the cache table in `sgemm512.rs` (a 32 KB panel block
/// in the 48 KB L1d, A and C's tile in the 2 MB L2); single-thread sweeps of KC 128…384 and MC
/// 72…240 on the Xeon this kernel is the default for stayed within the noise of a loaded machine.
/// KC = 256 is also the AVX2 kernel's, so both kernels give the same bits.
struct K512;
impl Kern for K512 {
    const MR: usize = sgemm512::MR;
    const NR: usize = sgemm512::NR;
    const MC: usize = 144;
    const KC: usize = 256;
    unsafe fn pack_panel<E: BElem>(k: usize, w: usize, b: *const E, rsb: isize, csb: isize, dst: *mut f32) {
        sgemm512::pack_panel(k, w, b, rsb, csb, dst)
    }
    unsafe fn run_task(rows: usize, cols: usize, kc: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, panels: *const f32, pstride: usize, acc: bool, c: *mut f32, ldc: usize) {
        run_task512(rows, cols, kc, alpha, a, rsa, csa, panels, pstride, acc, c, ldc)
    }
}

/// The blocked path of [`sgemm`] (m > [`FEW_ROWS`], k > 0) with kernel `K`.
///
/// # Safety
/// As for [`sgemm`]; the CPU has `K`'s features.
#[allow(clippy::too_many_arguments)]
unsafe fn blocked<E: BElem, K: Kern>(
    m: usize, k: usize, n: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, b: *const E, rsb: isize, csb: isize, beta: f32, c: Ptr, ldc: usize, bias: Ptr,
    add_bias: &(dyn Fn(usize, usize, usize, usize, bool) + Sync), nt: usize,
) {
    let (nr, mr, kcb) = (K::NR, K::MR, K::KC);
    // the packed B blocks go in this thread's buffer, taken out for the call (a task this thread
    // steals while waiting may run another GEMM: it then finds the slot empty and grows its own)
    let mut buf = BPACK.with_borrow_mut(std::mem::take);
    // columns per packed block: all of k deep, at most B_FLOATS floats
    let nc_blk = (B_FLOATS / k / nr).max(1) * nr;
    for jc in (0..n).step_by(nc_blk) {
        let nc = nc_blk.min(n - jc);
        let np = nc.div_ceil(nr);
        // panel jp holds all k rows (`pstride = NR·k`); a task reads rows pc.. at `+ NR·pc`
        let pstride = k * nr;
        // + 16 floats so that the panels can start on a 64-byte line
        buf.resize(np * pstride + 16, 0.0);
        let skip = buf.as_ptr().align_offset(64).min(16);
        let bb = BPtr(b.offset(jc as isize * csb));
        let pack = |(jp, dst): (usize, &mut [f32])| {
            // SAFETY: panel jp covers columns jc + NR·jp .. (at most NR) and all k rows of the checked B
            unsafe { K::pack_panel(k, nr.min(nc - jp * nr), bb.get().offset((jp * nr) as isize * csb), rsb, csb, dst.as_mut_ptr()) }
        };
        let packed = &mut buf[skip..skip + np * pstride];
        if nt > 1 && np > 1 {
            packed.par_chunks_mut(pstride).enumerate().for_each(pack);
        } else {
            packed.chunks_mut(pstride).enumerate().for_each(pack);
        }
        let (panels, ap) = (Ptr(packed.as_ptr() as *mut f32), Ptr(a as *mut f32));
        // Row tasks: the MR-row strips dealt out evenly, a multiple of the thread count of them,
        // each at most MC rows; when that gives fewer than two tasks per thread, the panels are
        // split into groups too. Each task runs all of k, so its tile of C stays in its core's L2.
        let strips = m.div_ceil(mr);
        let rb = (nt * strips.div_ceil(nt * (K::MC / mr))).min(strips);
        let groups = if rb >= 2 * nt { 1 } else { (2 * nt).div_ceil(rb).min(np) };
        let task = |t: usize| {
            let (r, g) = (t / groups, t % groups);
            let (i0, i1) = ((r * strips / rb) * mr, ((r + 1) * strips / rb * mr).min(m));
            let (jp0, jp1) = (g * np / groups, (g + 1) * np / groups);
            let cols = (jp1 * nr).min(nc) - jp0 * nr;
            // with a bias, the tile starts as (beta·C +) bias and every block of k adds to it
            add_bias(i0, i1, jc + jp0 * nr, cols, beta == 0.0);
            for pc in (0..k).step_by(kcb) {
                // the first block of k overwrites C (unless beta = 1 or there is a bias); later ones add
                let acc = pc > 0 || beta != 0.0 || !bias.get().is_null();
                // SAFETY: rows i0..i1 of A and C, columns jc + NR·jp0 .. of C: in bounds (caller)
                // and disjoint between tasks; the panels were packed above for all k rows.
                unsafe {
                    let a0 = ap.get().offset(i0 as isize * rsa + pc as isize * csa);
                    let bp = panels.get().add(jp0 * pstride + pc * nr);
                    K::run_task(i1 - i0, cols, kcb.min(k - pc), alpha, a0, rsa, csa, bp, pstride, acc, c.get().add(i0 * ldc + jc + jp0 * nr), ldc)
                }
            }
        };
        if nt > 1 && rb * groups > 1 {
            (0..rb * groups).into_par_iter().for_each(task);
        } else {
            (0..rb * groups).for_each(task);
        }
    }
    BPACK.with_borrow_mut(|slot| {
        if slot.capacity() < buf.capacity() {
            *slot = buf;
        }
    });
}

/// Up to this many rows of A (one register block), [`sgemm`] takes the few-rows paths.
const FEW_ROWS: usize = 6;

/// `C = alpha·A·B + beta·C` (+ the bias that `bias_fill` writes) for m ≤ [`FEW_ROWS`] rows of f32 A
/// and a B of element `E`: a row-major B (`csb == 1`) through [`few_rows_row_major`], a transposed
/// B with a row-major A (`rsb == 1`, `csa == 1`) through [`few_rows_dot`], any other through
/// [`few_rows_task`]. `bias_fill(i0, i1, j0, w, overwrite)` puts the bias into rows i0..i1, columns
/// j0..j0 + w of C (a no-op without one); `has_bias` says whether there is one. `nt` > 1 splits the
/// work.
///
/// # Safety
/// avx2 + fma; as for [`sgemm`] (A, B, C in bounds, C not aliasing them).
#[allow(clippy::too_many_arguments)]
unsafe fn few_rows<E: BElem>(
    m: usize, k: usize, n: usize, kc: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, b: *const E, rsb: isize, csb: isize, beta: f32, c: *mut f32, ldc: usize, has_bias: bool,
    bias_fill: &(dyn Fn(usize, usize, usize, usize, bool) + Sync), nt: usize,
) {
    let (ap, bp, cp) = (Ptr(a as *mut f32), BPtr(b), Ptr(c));
    let acc0 = beta != 0.0 || has_bias;
    if csb == 1 {
        // (block of k, column half) units, each streaming its rows of B into its own partial sums;
        // then the blocks' sums are added into C in block order
        let (nb, halves) = (k.div_ceil(kc), if nt > 1 && n >= 2 * NR { 2 } else { 1 });
        let cols = |h: usize| ((h * n / halves) / 8 * 8, ((h + 1) * n / halves) / 8 * 8 + if h + 1 == halves { n % 8 } else { 0 });
        let mut sums = vec![0f32; nb * m * n];
        let sp = Ptr(sums.as_mut_ptr());
        let unit = |u: usize| {
            let (blk, (j0, j1)) = (u / halves, cols(u % halves));
            let p0 = blk * kc;
            // SAFETY: rows p0.. of B and A's columns p0..: in bounds (caller); each unit writes its
            // own (block, columns) window of `sums`
            unsafe { few_rows_row_major(m, p0, kc.min(k - p0), j0, j1, ap.get(), rsa, csa, bp.get(), rsb, sp.get().add(blk * m * n), n) }
        };
        if nt > 1 && nb * halves > 1 {
            (0..nb * halves).into_par_iter().for_each(unit);
        } else {
            (0..nb * halves).for_each(unit);
        }
        bias_fill(0, m, 0, n, beta == 0.0);
        for i in 0..m {
            let cr = std::slice::from_raw_parts_mut(c.add(i * ldc), n);
            for (blk, part) in sums.chunks_exact(m * n).enumerate() {
                let first = blk == 0 && !acc0;
                for (o, &x) in cr.iter_mut().zip(&part[i * n..(i + 1) * n]) {
                    *o = if first { x * alpha } else { x * alpha + *o };
                }
            }
        }
        return;
    }
    // otherwise groups of 16-column panels, a few per thread; each element of C is written by one task
    let dot = rsb == 1 && csa == 1;
    let np = n.div_ceil(NR);
    let groups = if nt > 1 { (4 * nt).min(np) } else { 1 };
    let task = |g: usize| {
        let (jp0, jp1) = (g * np / groups, (g + 1) * np / groups);
        let (j0, j1) = (jp0 * NR, (jp1 * NR).min(n));
        bias_fill(0, m, j0, j1 - j0, beta == 0.0);
        // SAFETY: columns j0..j1 of B and of C's m rows: in bounds (caller) and disjoint between tasks
        unsafe {
            if dot {
                few_rows_dot(m, k, j0, j1, alpha, ap.get(), rsa, bp.get(), csb, acc0, cp.get(), ldc)
            } else {
                few_rows_task(m, k, n, kc, jp0, jp1, alpha, ap.get(), rsa, csa, bp.get(), rsb, csb, acc0, cp.get(), ldc)
            }
        }
    };
    if groups > 1 {
        (0..groups).into_par_iter().for_each(task);
    } else {
        task(0);
    }
}

/// A B pointer rayon tasks may share (read only).
struct BPtr<E>(*const E);
impl<E> Clone for BPtr<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for BPtr<E> {}
unsafe impl<E: Sync> Send for BPtr<E> {}
unsafe impl<E: Sync> Sync for BPtr<E> {}
impl<E> BPtr<E> {
    fn get(self) -> *const E {
        self.0
    }
}

/// Columns `16·jp0 .. 16·jp1` of C for m ≤ [`FEW_ROWS`] rows when neither [`few_rows_row_major`]
/// nor [`few_rows_dot`] applies (a strided B, or a transposed B with a transposed A).
///
/// With so few rows every element of B is used at most six times, and packing all of B into the
/// shared buffer first (a write and a read of B's whole size) costs more than the multiplication.
/// Here each 16-column panel, all of k deep, is packed into this thread's own buffer (48 KB at
/// k = 768: it stays in L2) just before the register block sweeps it, with A read in place: B
/// crosses the memory bus once. Per element of C the operations and their order are the blocked
/// path's (sums over blocks of `kc`, added in order).
///
/// # Safety
/// avx2 + fma; as for [`sgemm`], restricted to these columns.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn few_rows_task<E: BElem>(m: usize, k: usize, n: usize, kc: usize, jp0: usize, jp1: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, b: *const E, rsb: isize, csb: isize, acc0: bool, c: *mut f32, ldc: usize) {
    PANEL.with_borrow_mut(|buf| {
        buf.resize(k * NR, 0.0);
        for jp in jp0..jp1 {
            let (j0, w) = (jp * NR, NR.min(n - jp * NR));
            gemm256::pack_panel(k, w, b.offset(j0 as isize * csb), rsb, csb, buf);
            for pc in (0..k).step_by(kc) {
                let acc = pc > 0 || acc0;
                gemm256::block_rows(m, kc.min(k - pc), alpha, a.offset(pc as isize * csa), rsa, csa, buf.as_ptr().add(pc * NR), acc, c.add(j0), ldc, w);
            }
        }
    })
}

/// Columns `j0..j1` of C for m ≤ [`FEW_ROWS`] rows of a row-major A and a transposed B (`rsb ==
/// 1`: column j of B is row j of a row-major W, as for `nn.Linear` weights and tied LM heads):
/// each element a dot product of A's row with W's row, four rows of W at a time, sixteen lanes of
/// partial sums added at the end.
///
/// Unlike the other paths this does not keep the blocked path's order of additions (a sequential
/// chain over k would need the 8 × 8 transposes of a panel, which held the GPT-2 LM head to half
/// of this speed), so a few rows' results differ from the same rows inside a tall product by
/// rounding; they are still the same whatever the thread count.
///
/// # Safety
/// avx2 + fma; A's m rows of k (`a[i·rsa + p]`) and W's rows `j0..j1` of k (`b[j·ldb + p]`) in
/// bounds; C's m rows of `ldc` do not alias them.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn few_rows_dot<E: BElem>(m: usize, k: usize, j0: usize, j1: usize, alpha: f32, a: *const f32, rsa: isize, b: *const E, ldb: isize, acc0: bool, c: *mut f32, ldc: usize) {
    let hsum = |v: __m256| -> f32 {
        let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        let x = _mm_add_ss(x, _mm_shuffle_ps::<1>(x, x));
        _mm_cvtss_f32(x)
    };
    let mut j = j0;
    while j < j1 {
        let nr = 4.min(j1 - j);
        let rows: [*const E; 4] = std::array::from_fn(|r| b.offset((j + r.min(nr - 1)) as isize * ldb));
        for i in 0..m {
            let ai = a.offset(i as isize * rsa);
            let (mut acc, mut acc2) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
            let mut p = 0;
            while p + 16 <= k {
                let x0 = _mm256_loadu_ps(ai.add(p));
                let x1 = _mm256_loadu_ps(ai.add(p + 8));
                for r in 0..4 {
                    acc[r] = _mm256_fmadd_ps(x0, E::load8(rows[r].add(p)), acc[r]);
                    acc2[r] = _mm256_fmadd_ps(x1, E::load8(rows[r].add(p + 8)), acc2[r]);
                }
                p += 16;
            }
            for r in 0..nr {
                let mut s = hsum(_mm256_add_ps(acc[r], acc2[r]));
                for q in p..k {
                    s = (*ai.add(q)).mul_add(E::get(rows[r].add(q)), s);
                }
                let o = c.add(i * ldc + j + r);
                *o = if acc0 { s * alpha + *o } else { s * alpha };
            }
        }
        j += nr;
    }
}

/// The sums over rows `p0..p0 + kc` of a row-major B (`csb == 1`, GPT-2's `Conv1D` weights) for
/// columns `j0..j1` and m ≤ [`FEW_ROWS`] rows of A: `out[i·ld + j] = Σ_p A[i][p]·B[p][j]`, an FMA
/// chain from zero in order of p, as [`gemm256::block_rows`] sums one block of `KC`.
///
/// B is read a row at a time, the rows of a block of k being one contiguous stretch of memory when
/// the unit spans all columns. (Packing 16-column panels of a row-major B reads one cache line from
/// each of k rows; that stride kept decoding's GEMVs at a third of the bandwidth that streaming gets.)
///
/// # Safety
/// avx2 + fma; A's `m × (p0 + kc)` and B's `(p0 + kc) × j1` elements in bounds; `out` holds
/// `m` rows of `ld ≥ j1` floats, not aliasing A or B.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn few_rows_row_major<E: BElem>(m: usize, p0: usize, kc: usize, j0: usize, j1: usize, a: *const f32, rsa: isize, csa: isize, b: *const E, rsb: isize, out: *mut f32, ld: usize) {
    let w = j1 - j0;
    for i in 0..m {
        std::ptr::write_bytes(out.add(i * ld + j0), 0, w);
    }
    // four rows of B per pass over the accumulators: each element's FMA chain keeps its order (p,
    // p + 1, p + 2, p + 3), with a quarter of the accumulator loads and stores
    const RP: usize = 8;
    let mut p = p0;
    while p < p0 + kc {
        let rows = RP.min(p0 + kc - p);
        let br: [*const E; RP] = std::array::from_fn(|r| b.offset((p + r.min(rows - 1)) as isize * rsb).add(j0));
        for i in 0..m {
            let ai: [f32; RP] = std::array::from_fn(|r| *a.offset(i as isize * rsa + (p + r.min(rows - 1)) as isize * csa));
            let av: [__m256; RP] = std::array::from_fn(|r| _mm256_set1_ps(ai[r]));
            let o = out.add(i * ld + j0);
            let mut q = 0;
            if rows == RP {
                while q + 8 <= w {
                    let mut x = _mm256_loadu_ps(o.add(q));
                    for r in 0..RP {
                        x = _mm256_fmadd_ps(av[r], E::load8(br[r].add(q)), x);
                    }
                    _mm256_storeu_ps(o.add(q), x);
                    q += 8;
                }
            }
            for q in q..w {
                let mut x = *o.add(q);
                for r in 0..rows {
                    x = ai[r].mul_add(E::get(br[r].add(q)), x);
                }
                *o.add(q) = x;
            }
        }
        p += rows;
    }
}

thread_local! {
    /// One B panel of [`few_rows_task`] (16 · k floats).
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The calling thread's packed B blocks (grown, never shrunk: at most B_FLOATS).
    static BPACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A task's rows of A, packed (see [`run_task`]); MC · KC floats per thread.
    static APACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One task: its `rows` (≤ MC) of A packed into strips of 6 (`strip[p·6 + r]`, so the kernel's six
/// broadcasts per step read one cache line and its loads are sequential), then every panel swept
/// by the 6 × 16 register block, strip by strip.
///
/// # Safety
/// avx2 + fma; as for [`sgemm`], restricted to the task's rows and columns.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_task(rows: usize, cols: usize, kc: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, panels: *const f32, pstride: usize, acc: bool, c: *mut f32, ldc: usize) {
    const MR: usize = 6;
    APACK.with_borrow_mut(|buf| {
        let strips = rows.div_ceil(MR);
        buf.resize(strips * MR * kc + 8, 0.0); // + slack for the 8-wide stores
        let d = buf.as_mut_ptr();
        for s in 0..strips {
            let r = MR.min(rows - s * MR);
            let (src, dst) = (a.offset((s * MR) as isize * rsa), d.add(s * MR * kc));
            if csa == 1 && r == MR {
                // row-major A: 8 steps of k from each of the 6 rows, transposed in registers (rows
                // 6, 7 are zeros) and stored 8 wide at stride 6: each store's last two lanes are
                // overwritten by the next one (the buffer has slack for the strip's last)
                let z = _mm256_setzero_ps();
                let mut p0 = 0;
                while p0 + 8 <= kc {
                    let r8: [__m256; 8] = std::array::from_fn(|i| if i < MR { _mm256_loadu_ps(src.offset(i as isize * rsa).add(p0)) } else { z });
                    for (q, v) in gemm256::transpose8(r8).iter().enumerate() {
                        _mm256_storeu_ps(dst.add((p0 + q) * MR), *v);
                    }
                    p0 += 8;
                }
                for p in p0..kc {
                    for i in 0..MR {
                        *dst.add(p * MR + i) = *src.offset(i as isize * rsa).add(p);
                    }
                }
            } else if csa == 1 {
                for i in 0..r {
                    let row = src.offset(i as isize * rsa);
                    for p in 0..kc {
                        *dst.add(p * MR + i) = *row.add(p);
                    }
                }
            } else {
                for p in 0..kc {
                    let col = src.offset(p as isize * csa);
                    for i in 0..r {
                        *dst.add(p * MR + i) = *col.offset(i as isize * rsa);
                    }
                }
            }
        }
        for jp in 0..cols.div_ceil(NR) {
            let (bp, w) = (panels.add(jp * pstride), NR.min(cols - jp * NR));
            for s in 0..strips {
                let (ai, ci) = (d.add(s * MR * kc) as *const f32, c.add(s * MR * ldc + jp * NR));
                gemm256::block_rows(MR.min(rows - s * MR), kc, alpha, ai, 1, MR as isize, bp, acc, ci, ldc, w);
            }
        }
    })
}

/// [`run_task`] for the AVX-512 kernel: the task's rows of A packed into 12-row strips
/// ([`sgemm512::pack_strip`]), then every 32-column panel swept by the 12 × 32 register block,
/// strip by strip (the panel's `kc × 32` block stays in L1 while the strips pass over it).
///
/// # Safety
/// avx512f + avx2 + fma; as for [`sgemm`], restricted to the task's rows and columns.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_task512(rows: usize, cols: usize, kc: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, panels: *const f32, pstride: usize, acc: bool, c: *mut f32, ldc: usize) {
    use sgemm512::{MR, NR};
    APACK.with_borrow_mut(|buf| {
        let strips = rows.div_ceil(MR);
        buf.resize(strips * MR * kc + 16, 0.0);
        let d = buf.as_mut_ptr();
        let d = d.add(d.align_offset(64).min(16));
        for s in 0..strips {
            sgemm512::pack_strip(MR.min(rows - s * MR), kc, a.offset((s * MR) as isize * rsa), rsa, csa, d.add(s * MR * kc));
        }
        for jp in 0..cols.div_ceil(NR) {
            let (bp, w) = (panels.add(jp * pstride), NR.min(cols - jp * NR));
            for s in 0..strips {
                let (ai, ci) = (d.add(s * MR * kc) as *const f32, c.add(s * MR * ldc + jp * NR));
                sgemm512::block_rows(MR.min(rows - s * MR), kc, alpha, ai, bp, acc, ci, ldc, w);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` with each kernel this CPU has forced (the AVX-512 one wherever avx512f is detected).
    fn each_kernel(f: impl Fn()) {
        use super::super::simd::{detected, Level};
        if detected() >= Level::Avx512 {
            super::super::gemm::with_kernel(GemmKernel::Avx512, &f);
        }
        super::super::gemm::with_kernel(GemmKernel::Avx2, &f);
    }

    fn naive(m: usize, k: usize, n: usize, a: &dyn Fn(usize, usize) -> f32, b: &dyn Fn(usize, usize) -> f32) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a(i, p) as f64 * b(p, j) as f64).sum();
            }
        }
        c
    }

    /// Odd shapes, several k and n blocks, A and B plain and transposed, beta 0 / 1 / 0.5, serial
    /// and parallel: against an f64 reference.
    #[test]
    fn blocked_sgemm_matches_the_reference() {
        each_kernel(blocked_sgemm_matches_the_reference_body);
    }

    fn blocked_sgemm_matches_the_reference_body() {
        if !available() {
            eprintln!("SKIPPED: no AVX2 + FMA on this CPU");
            return;
        }
        let val = |s: usize| ((s * 2654435761usize) % 1000) as f32 / 500.0 - 1.0;
        for &(m, k, n) in &[(1, 1, 1), (7, 13, 5), (75, 300, 37), (150, 520, 70), (13, 9, 4100), (200, 257, 90), (7, 4100, 600), (1, 300, 37), (3, 520, 70), (6, 257, 1030), (5, 7, 17)] {
            let av: Vec<f32> = (0..m * k).map(val).collect();
            let bv: Vec<f32> = (0..k * n).map(|s| val(s + 7)).collect();
            let want = naive(m, k, n, &|i, p| av[i * k + p], &|p, j| bv[p * n + j]);
            let bt: Vec<f32> = (0..n * k).map(|q| bv[(q % k) * n + q / k]).collect(); // n × k
            let at: Vec<f32> = (0..k * m).map(|q| av[(q % m) * k + q / m]).collect(); // k × m
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let (pa, rsa, csa) = if ta { (at.as_ptr(), 1, m as isize) } else { (av.as_ptr(), k as isize, 1) };
                let (pb, rsb, csb) = if tb { (bt.as_ptr(), 1, k as isize) } else { (bv.as_ptr(), n as isize, 1) };
                let bias: Vec<f32> = (0..n).map(|j| val(j + 11)).collect();
                for (beta, parallel, with_bias) in [(0.0f32, false, false), (0.0, true, false), (1.0, true, false), (0.5, false, false), (0.0, true, true), (0.5, false, true)] {
                    let bp = if with_bias { bias.as_ptr() } else { std::ptr::null() };
                    let init = |s: usize| if beta == 0.0 { f32::NAN } else { val(s + 3) };
                    let ldc = n + 3; // rows of C padded: the padding must stay untouched
                    let mut c: Vec<f32> = (0..m * ldc).map(init).collect();
                    let before = c.clone();
                    unsafe { sgemm(m, k, n, 1.5, pa, rsa, csa, pb, rsb, csb, beta, c.as_mut_ptr(), ldc, bp, parallel) };
                    for i in 0..m {
                        for j in 0..ldc {
                            let got = c[i * ldc + j];
                            if j >= n {
                                assert!(got.to_bits() == before[i * ldc + j].to_bits(), "padding written at ({i}, {j})");
                                continue;
                            }
                            let old = if beta == 0.0 { 0.0 } else { beta as f64 * before[i * ldc + j] as f64 };
                            let w = 1.5 * want[i * n + j] + old + if with_bias { bias[j] as f64 } else { 0.0 };
                            assert!((got as f64 - w).abs() <= 2e-5 * (k as f64).sqrt() * (1.0 + w.abs()), "{m}x{k}x{n} ta {ta} tb {tb} beta {beta} bias {with_bias}: ({i}, {j}) {got} vs {w}");
                        }
                    }
                }
            }
        }
    }

    /// Up to six rows take the few-rows paths. With a row-major B their results are the same bits
    /// as the same rows of a taller product (the packed path); with a transposed B (dot products)
    /// they match it to rounding. Either way they do not depend on the thread count. Bias and beta,
    /// several k blocks, a partial last panel.
    #[test]
    fn few_rows_match_the_blocked_path_on_any_thread_count() {
        each_kernel(few_rows_match_the_blocked_path_on_any_thread_count_body);
    }

    fn few_rows_match_the_blocked_path_on_any_thread_count_body() {
        if !available() {
            eprintln!("SKIPPED: no AVX2 + FMA on this CPU");
            return;
        }
        let val = |s: usize| ((s * 2654435761usize) % 1000) as f32 / 500.0 - 1.0;
        let (tall, k, n) = (20, 600, 85);
        let av: Vec<f32> = (0..tall * k).map(val).collect();
        let bv: Vec<f32> = (0..k * n).map(|s| val(s + 7)).collect();
        let bt: Vec<f32> = (0..n * k).map(|q| bv[(q % k) * n + q / k]).collect();
        let bias: Vec<f32> = (0..n).map(|j| val(j + 11)).collect();
        let c0: Vec<f32> = (0..tall * n).map(|s| val(s + 3)).collect();
        for tb in [false, true] {
            let (pb, rsb, csb) = if tb { (bt.as_ptr(), 1, k as isize) } else { (bv.as_ptr(), n as isize, 1) };
            for (beta, with_bias) in [(0.0f32, false), (0.0, true), (0.5, true)] {
                let bp = if with_bias { bias.as_ptr() } else { std::ptr::null() };
                let run = |m: usize, threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let mut c = c0[..m * n].to_vec();
                    let (pb, bp, cp) = (Ptr(pb as *mut f32), Ptr(bp as *mut f32), Ptr(c.as_mut_ptr()));
                    pool.install(|| unsafe { sgemm(m, k, n, 1.5, av.as_ptr(), k as isize, 1, pb.get(), rsb, csb, beta, cp.get(), n, bp.get(), true) });
                    c
                };
                let want = run(tall, 2);
                for m in 1..=FEW_ROWS {
                    let got = run(m, 2);
                    let what = format!("m {m}, transposed B {tb}, beta {beta}, bias {with_bias}");
                    for t in [1, 3] {
                        assert!(got.iter().zip(run(m, t)).all(|(x, y)| x.to_bits() == y.to_bits()), "{what}: {t} threads differ from 2");
                    }
                    for (x, y) in got.iter().zip(&want) {
                        if tb {
                            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()) * (k as f32).sqrt(), "{what}: {x} vs {y}");
                        } else {
                            assert_eq!(x.to_bits(), y.to_bits(), "{what}: rows differ from the blocked path's");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn k_zero_and_threads_do_not_change_results() {
        each_kernel(k_zero_and_threads_do_not_change_results_body);
    }

    fn k_zero_and_threads_do_not_change_results_body() {
        if !available() {
            eprintln!("SKIPPED: no AVX2 + FMA on this CPU");
            return;
        }
        let mut c = vec![f32::NAN; 12];
        unsafe { sgemm(3, 0, 4, 1.0, [0f32].as_ptr(), 0, 1, [0f32].as_ptr(), 4, 1, 0.0, c.as_mut_ptr(), 4, std::ptr::null(), true) };
        assert!(c.iter().all(|&x| x == 0.0));
        let (m, k, n) = (300, 600, 200);
        let av: Vec<f32> = (0..m * k).map(|s| ((s * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let bv: Vec<f32> = (0..k * n).map(|s| ((s * 53 % 97) as f32 - 48.0) / 9.0).collect();
        let run = |threads: usize, parallel: bool| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut c = vec![0f32; m * n];
            pool.install(|| unsafe { sgemm(m, k, n, 1.0, av.as_ptr(), k as isize, 1, bv.as_ptr(), n as isize, 1, 0.0, c.as_mut_ptr(), n, std::ptr::null(), parallel) });
            c
        };
        let one = run(1, false);
        assert_eq!(one, run(2, true));
        assert_eq!(one, run(3, true));
    }
}
