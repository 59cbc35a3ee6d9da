//! Blocked f32 GEMM on AVX2 + FMA for matmul: `C = alpha·A·B + beta·C`, C with unit column stride.
//!
//! matrixmultiply, with C split into one panel per thread, packs all of the shared operand again in
//! every thread; on a training step's shapes (k = 256 or 1024, m = 1024 tokens) its packing was 9%
//! of the step's CPU time. Here B is packed once per call by all threads together, and each task
//! packs only its own rows of A:
//!
//! * B is packed, all of k deep and as many columns as fit in 8 MB, into 16-column panels
//!   ([`gemm256::pack_panel`]; transposed B goes through 8 × 8 AVX transposes), in parallel;
//! * then tasks of up to `MC` rows of A (× a group of panels when m is small) run in parallel, each
//!   over all of k in blocks of `KC`: pack its `MC × KC` slice of A into 6-row strips (72 KB, stays
//!   in L2), then sweep its panels with the 6 × 16 register block ([`gemm256::block_rows`]), a 16 KB
//!   panel block staying in L1 while the strips pass over it. A task owns its tile of C for the
//!   whole of k, so the tile stays in its core's L2 between k blocks.
//!
//! Every element of C is the same sequence of operations whatever the thread count (a sequential
//! sum over each `KC` block, blocks added in order), so results do not depend on it.
use super::gemm256;
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
pub(crate) unsafe fn sgemm(m: usize, k: usize, n: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, b: *const f32, rsb: isize, csb: isize, beta: f32, c: *mut f32, ldc: usize, bias: *const f32, parallel: bool) {
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
    // the packed B blocks go in this thread's buffer, taken out for the call (a task this thread
    // steals while waiting may run another GEMM: it then finds the slot empty and grows its own)
    let mut buf = BPACK.with_borrow_mut(std::mem::take);
    // columns per packed block: all of k deep, at most B_FLOATS floats
    let nc_blk = (B_FLOATS / k / NR).max(1) * NR;
    for jc in (0..n).step_by(nc_blk) {
        let nc = nc_blk.min(n - jc);
        let np = nc.div_ceil(NR);
        // panel jp holds all k rows (`pstride = 16·k`); a task reads rows pc.. at `+ 16·pc`
        let pstride = k * NR;
        buf.resize(np * pstride, 0.0);
        let bb = Ptr(b.offset(jc as isize * csb) as *mut f32);
        let pack = |(jp, dst): (usize, &mut [f32])| {
            // SAFETY: panel jp covers columns jc + 16·jp .. (at most 16) and all k rows of the checked B
            unsafe { gemm256::pack_panel(k, NR.min(nc - jp * NR), bb.get().offset((jp * NR) as isize * csb), rsb, csb, dst) }
        };
        if nt > 1 && np > 1 {
            buf[..np * pstride].par_chunks_mut(pstride).enumerate().for_each(pack);
        } else {
            buf[..np * pstride].chunks_mut(pstride).enumerate().for_each(pack);
        }
        let (panels, ap) = (Ptr(buf.as_ptr() as *mut f32), Ptr(a as *mut f32));
        // Row tasks: the 6-row strips dealt out evenly, a multiple of the thread count of them,
        // each at most MC rows; when that gives fewer than two tasks per thread, the panels are
        // split into groups too. Each task runs all of k, so its tile of C stays in its core's L2.
        let strips = m.div_ceil(6);
        let rb = (nt * strips.div_ceil(nt * (MC / 6))).min(strips);
        let groups = if rb >= 2 * nt { 1 } else { (2 * nt).div_ceil(rb).min(np) };
        let task = |t: usize| {
            let (r, g) = (t / groups, t % groups);
            let (i0, i1) = ((r * strips / rb) * 6, ((r + 1) * strips / rb * 6).min(m));
            let (jp0, jp1) = (g * np / groups, (g + 1) * np / groups);
            let cols = (jp1 * NR).min(nc) - jp0 * NR;
            // with a bias, the tile starts as (beta·C +) bias and every block of k adds to it
            add_bias(i0, i1, jc + jp0 * NR, cols, beta == 0.0);
            for pc in (0..k).step_by(KC) {
                // the first block of k overwrites C (unless beta = 1 or there is a bias); later ones add
                let acc = pc > 0 || beta != 0.0 || !bias.get().is_null();
                // SAFETY: rows i0..i1 of A and C, columns jc + 16·jp0 .. of C: in bounds (caller)
                // and disjoint between tasks; the panels were packed above for all k rows.
                unsafe {
                    let a0 = ap.get().offset(i0 as isize * rsa + pc as isize * csa);
                    let bp = panels.get().add(jp0 * pstride + pc * NR);
                    run_task(i1 - i0, cols, KC.min(k - pc), alpha, a0, rsa, csa, bp, pstride, acc, c.get().add(i0 * ldc + jc + jp0 * NR), ldc)
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

thread_local! {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        if !available() {
            eprintln!("SKIPPED: no AVX2 + FMA on this CPU");
            return;
        }
        let val = |s: usize| ((s * 2654435761usize) % 1000) as f32 / 500.0 - 1.0;
        for &(m, k, n) in &[(1, 1, 1), (7, 13, 5), (75, 300, 37), (150, 520, 70), (13, 9, 4100), (200, 257, 90), (7, 4100, 600)] {
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

    #[test]
    fn k_zero_and_threads_do_not_change_results() {
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
