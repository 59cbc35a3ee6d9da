//! The CUDA attention launchers of the default path: attention.cu (the simple fused forward and its
//! blockwise backward, any head dim up to 128, f32 / bf16 / f16) and attention_tc.cu's tensor-core
//! kernels (bf16 / f16, head dim 64 or 128, sm_80+, with the deterministic two-pass backward),
//! chosen per call by [`AttentionDims::kernel`]. The opt-in kernels that have not yet won on a GPU
//! (tc2, the sm_90a wgmma and TMA forms) live apart in `variants/`; this file hands them the call.
//! Conventions: see cuda/launch.rs (outputs → saved stats → inputs → dims; lengths checked; async).
use super::variants::{self, AttnKernel};
use super::AttnDropout;
use crate::cuda::device::CudaBackend;
use crate::cuda::launch::{allow_smem, check_len, to_i32, KernelFloat, PushOptArg};
use crate::{Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, LaunchArgs, LaunchConfig, PushKernelArg};

/// Shapes and options of one attention call. q: `[batch, heads, q_len, head_dim]`, k / v:
/// `[batch, heads, kv_len, head_dim]`, all contiguous. `scale` is usually `1 / sqrt(head_dim)`.
/// `causal`: key j is visible to query i iff `j <= i + (kv_len - q_len)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionDims {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub causal: bool,
    /// Attention-probability dropout (p > 0): the `_drop` kernels of attention.cu (`Simple`) and
    /// attention_tc.cu (`TensorCore`), which take `(float p_drop, u64 seed)` after the dims.
    pub dropout: Option<AttnDropout>,
}

/// Rows per block of the kernels (attention.cu: 4 warps x 4 query rows fwd, x 2 rows bwd).
const FWD_ROWS: usize = 16;
const BWD_ROWS: usize = 8;
/// Query (and key) rows per block of the tensor-core kernels.
pub(super) const TC_ROWS: usize = 64;

/// Dynamic shared memory of the tensor-core dK/dV pass: K, V (64 rows) and Q, dO (32 rows) tiles
/// plus the tile's lse and delta; with `dq` (attention_bwd_tc2) also the staged dS^T [64][32 + 8].
pub(super) fn tc_dkdv_smem(head_dim: usize, dq: bool) -> u32 {
    let base = (2 * TC_ROWS + 2 * 32) * (head_dim + 8) * 2 + 2 * 32 * 4;
    (base + if dq { TC_ROWS * 40 * 2 } else { 0 }) as u32
}
/// The arguments every attention kernel ends with: `const float* key_mask` (null when absent),
/// then `int B, int H, int Tq, int Tk, int D, float scale, int causal` (`args` from
/// [`AttentionDims::args`]).
pub(super) fn push_mask_and_dims<'a>(b: &mut LaunchArgs<'a>, key_mask: Option<&'a CudaView<f32>>, args: &'a [i32; 6], scale: &'a f32) {
    b.arg_opt(key_mask);
    b.arg(&args[0]).arg(&args[1]).arg(&args[2]).arg(&args[3]).arg(&args[4]).arg(scale).arg(&args[5]);
}

impl AttentionDims {
    fn check(&self, op: &'static str) -> Result<()> {
        if self.head_dim == 0 || self.head_dim > 128 {
            return Err(Error::msg(format!("{op}: head_dim {} is outside 1..=128", self.head_dim)));
        }
        for v in [self.q_len, self.kv_len] {
            to_i32(op, v)?;
        }
        if self.batch * self.heads > 65_535 {
            return Err(Error::msg(format!("{op}: batch * heads = {} exceeds the grid's 65535 y-blocks", self.batch * self.heads)));
        }
        Ok(())
    }
    /// The kernels for this call on a device of `arch` (e.g. "sm_90") with elements `suffix`.
    /// With dropout only `Simple` and `TensorCore` have variants: other requests run `TensorCore`.
    pub fn kernel(&self, arch: &str, suffix: &str) -> AttnKernel {
        let eligible = matches!(suffix, "bf16" | "f16") && matches!(self.head_dim, 64 | 128) && crate::cuda::nvrtc::arch_number(arch) >= 80;
        let choice = match variants::attention_kernel_override() {
            _ if !eligible => AttnKernel::Simple,
            Some(AttnKernel::Wgmma | AttnKernel::WgmmaSerial | AttnKernel::WgmmaTma | AttnKernel::WgmmaTmaPingpong) if crate::cuda::nvrtc::arch_number(arch) != 90 => AttnKernel::TensorCore,
            Some(k) => k,
            None => AttnKernel::TensorCore,
        };
        if self.dropout.is_some() && choice != AttnKernel::Simple {
            AttnKernel::TensorCore
        } else {
            choice
        }
    }
    pub(super) fn q_elems(&self) -> usize {
        self.batch * self.heads * self.q_len * self.head_dim
    }
    pub(super) fn kv_elems(&self) -> usize {
        self.batch * self.heads * self.kv_len * self.head_dim
    }
    pub(super) fn rows(&self) -> usize {
        self.batch * self.heads * self.q_len
    }
    /// The kernel-name infix of the dropout variants (`attention_fwd_drop_f32`,
    /// `attention_fwd_tc_drop_d64_bf16`), empty without dropout.
    fn drop_infix(&self) -> &'static str {
        if self.dropout.is_some() {
            "drop_"
        } else {
            ""
        }
    }
    /// The `(float p_drop, u64 seed)` the dropout variants take after the dims.
    fn drop_args(&self) -> Option<(f32, u64)> {
        self.dropout.map(|d| (crate::ops::dropout::threshold(d.p), d.seed))
    }
    /// The kernels' `int B, int H, int Tq, int Tk, int D, float scale, int causal` (checked).
    pub(super) fn args(&self) -> [i32; 6] {
        [self.batch, self.heads, self.q_len, self.kv_len, self.head_dim, self.causal as usize].map(|v| v as i32)
    }
}

impl CudaBackend {
    /// `out = softmax(scale * q k^T + masks) v`; saves `lse` (`[batch, heads, q_len]` f32).
    /// `key_mask` (`[batch, kv_len]` f32, nonzero = attend) hides padding keys. `kernel` from
    /// [`AttentionDims::kernel`]; the backward must use the same.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_fwd<T: KernelFloat>(
        &self, out: &mut CudaViewMut<T>, lse: &mut CudaViewMut<f32>, q: &CudaView<T>, k: &CudaView<T>, v: &CudaView<T>,
        key_mask: Option<&CudaView<f32>>, dims: &AttentionDims, kernel: AttnKernel,
    ) -> Result<()> {
        let op = "attention_fwd";
        dims.check(op)?;
        check_len(op, q.len(), dims.q_elems())?;
        check_len(op, out.len(), dims.q_elems())?;
        check_len(op, k.len(), dims.kv_elems())?;
        check_len(op, v.len(), dims.kv_elems())?;
        check_len(op, lse.len(), dims.rows())?;
        if let Some(m) = key_mask {
            check_len(op, m.len(), dims.batch * dims.kv_len)?;
        }
        if dims.rows() == 0 {
            return Ok(());
        }
        let d = dims.head_dim;
        if dims.dropout.is_some() && !matches!(kernel, AttnKernel::Simple | AttnKernel::TensorCore) {
            return Err(Error::msg(format!("{op}: the {kernel:?} kernels have no dropout variant (AttentionDims::kernel picks Simple or TensorCore)")));
        }
        let x = dims.drop_infix();
        if !kernel.is_default_path() {
            return variants::attention_fwd(self, out, lse, q, k, v, key_mask, dims, kernel);
        }
        let (f, smem, rows, threads) = if kernel == AttnKernel::TensorCore {
            let f = self.function(&crate::cuda::kernels::ATTENTION_TC, &format!("attention_fwd_tc_{x}d{d}_{}", T::SUFFIX))?;
            (f, (2 * TC_ROWS * (d + 8) * 2) as u32, TC_ROWS, 128)
        } else {
            (self.function(&crate::cuda::kernels::ATTENTION, &format!("attention_fwd_{x}{}", T::SUFFIX))?, ((48 * d + 32 * (d + 1)) * 4) as u32, FWD_ROWS, 128)
        };
        launch_fwd(self, &f, smem, rows, threads, out, lse, q, k, v, key_mask, dims)
    }

    /// Attention backward: writes `dq`, `dk`, `dv` from the saved `out` and `lse` (P is
    /// recomputed blockwise: a dQ pass over key tiles and a dK/dV pass over query tiles).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_bwd<T: KernelFloat>(
        &self, dq: &mut CudaViewMut<T>, dk: &mut CudaViewMut<T>, dv: &mut CudaViewMut<T>, lse: &CudaView<f32>,
        out: &CudaView<T>, dout: &CudaView<T>, q: &CudaView<T>, k: &CudaView<T>, v: &CudaView<T>,
        key_mask: Option<&CudaView<f32>>, dims: &AttentionDims, kernel: AttnKernel,
    ) -> Result<()> {
        let op = "attention_bwd";
        dims.check(op)?;
        for len in [dq.len(), out.len(), dout.len(), q.len()] {
            check_len(op, len, dims.q_elems())?;
        }
        for len in [dk.len(), dv.len(), k.len(), v.len()] {
            check_len(op, len, dims.kv_elems())?;
        }
        check_len(op, lse.len(), dims.rows())?;
        if let Some(m) = key_mask {
            check_len(op, m.len(), dims.batch * dims.kv_len)?;
        }
        if dims.batch * dims.heads * dims.head_dim == 0 || (dims.q_len == 0 && dims.kv_len == 0) {
            return Ok(());
        }
        let d = dims.head_dim;
        let args = dims.args();
        let bh = (dims.batch * dims.heads) as u32;
        // 1. delta = rowsum(dout * out)
        let mut delta = self.alloc::<f32>(dims.rows().max(1))?;
        if dims.rows() > 0 {
            let f = self.function(&crate::cuda::kernels::ATTENTION, &format!("attention_bwd_preprocess_{}", T::SUFFIX))?;
            let rows = to_i32(op, dims.rows())?;
            let mut b = self.stream().launch_builder(&f);
            b.arg(&mut *delta).arg(out).arg(dout).arg(&rows).arg(&args[4]);
            let cfg = LaunchConfig { grid_dim: (dims.rows().div_ceil(4) as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            unsafe { b.launch(cfg) }?;
        }
        if !kernel.is_default_path() {
            if dims.dropout.is_some() {
                return Err(Error::msg(format!("{op}: the {kernel:?} kernels have no dropout variant")));
            }
            return variants::attention_bwd_one_pass(self, dq, dk, dv, lse, &delta, q, k, v, dout, key_mask, dims, kernel);
        }
        let (tc, x, drop) = (kernel == AttnKernel::TensorCore, dims.drop_infix(), dims.drop_args());
        // 2. dQ over key tiles, 3. dK / dV over query tiles
        for (pass, len) in [("dq", dims.q_len), ("dkdv", dims.kv_len)] {
            if len == 0 {
                continue;
            }
            let (f, smem, rows) = if tc {
                let f = self.function(&crate::cuda::kernels::ATTENTION_TC, &format!("attention_bwd_{pass}_tc_{x}d{d}_{}", T::SUFFIX))?;
                let smem = if pass == "dq" { (2 * TC_ROWS * (d + 8) * 2) as u32 } else { tc_dkdv_smem(d, false) };
                (f, smem, TC_ROWS)
            } else {
                (self.function(&crate::cuda::kernels::ATTENTION, &format!("attention_bwd_{pass}_{x}{}", T::SUFFIX))?, ((16 * d + 64 * (d + 1)) * 4) as u32, BWD_ROWS)
            };
            allow_smem(&f, smem)?;
            let mut b = self.stream().launch_builder(&f);
            if pass == "dq" {
                b.arg(&mut *dq);
            } else {
                b.arg(&mut *dk).arg(&mut *dv);
            }
            b.arg(lse).arg(&*delta).arg(q).arg(k).arg(v).arg(dout);
            push_mask_and_dims(&mut b, key_mask, &args, &dims.scale);
            if let Some((p, seed)) = &drop {
                b.arg(p).arg(seed);
            }
            let cfg = LaunchConfig { grid_dim: (len.div_ceil(rows) as u32, bh, 1), block_dim: (128, 1, 1), shared_mem_bytes: smem };
            unsafe { b.launch(cfg) }?;
        }
        Ok(())
    }
}

/// Launches a forward kernel `f` that takes attention.cu's arguments (out, lse, q, k, v, the mask
/// and dims, and the dropout pair when `dims` has dropout), one block per `rows` query rows.
#[allow(clippy::too_many_arguments)]
pub(super) fn launch_fwd<T: KernelFloat>(
    be: &CudaBackend, f: &cudarc::driver::CudaFunction, smem: u32, rows: usize, threads: u32, out: &mut CudaViewMut<T>,
    lse: &mut CudaViewMut<f32>, q: &CudaView<T>, k: &CudaView<T>, v: &CudaView<T>, key_mask: Option<&CudaView<f32>>, dims: &AttentionDims,
) -> Result<()> {
    allow_smem(f, smem)?;
    let (args, drop) = (dims.args(), dims.drop_args());
    let mut b = be.stream().launch_builder(f);
    b.arg(out).arg(lse).arg(q).arg(k).arg(v);
    push_mask_and_dims(&mut b, key_mask, &args, &dims.scale);
    if let Some((p, seed)) = &drop {
        b.arg(p).arg(seed);
    }
    let grid = (dims.q_len.div_ceil(rows) as u32, (dims.batch * dims.heads) as u32, 1);
    unsafe { b.launch(LaunchConfig { grid_dim: grid, block_dim: (threads, 1, 1), shared_mem_bytes: smem }) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::variants::force_attention_kernel;
    use super::*;

    #[test]
    fn the_kernel_choice_follows_eligibility_and_the_thread_override() {
        fn pick(head_dim: usize, arch: &str, dt: &str) -> AttnKernel {
            AttentionDims { batch: 1, heads: 1, q_len: 5, kv_len: 5, head_dim, scale: 1.0, causal: false, dropout: None }.kernel(arch, dt)
        }
        // with dropout: the kernels that have dropout variants, whatever the request
        fn pick_drop(head_dim: usize, arch: &str, dt: &str) -> AttnKernel {
            let dropout = Some(AttnDropout { p: 0.1, seed: 1 });
            AttentionDims { batch: 1, heads: 1, q_len: 5, kv_len: 5, head_dim, scale: 1.0, causal: false, dropout }.kernel(arch, dt)
        }
        assert_eq!(pick(64, "sm_90", "bf16"), AttnKernel::TensorCore);
        assert_eq!(pick(128, "sm_80", "f16"), AttnKernel::TensorCore);
        for (d, arch, dt) in [(64, "sm_90", "f32"), (80, "sm_90", "bf16"), (64, "sm_75", "bf16")] {
            assert_eq!(pick(d, arch, dt), AttnKernel::Simple, "{d} {arch} {dt}");
        }
        assert_eq!((pick_drop(64, "sm_90", "bf16"), pick_drop(80, "sm_90", "bf16"), pick_drop(64, "sm_90", "f32")), (AttnKernel::TensorCore, AttnKernel::Simple, AttnKernel::Simple));
        force_attention_kernel(Some(AttnKernel::TensorCore2));
        assert_eq!(pick(128, "sm_90a", "bf16"), AttnKernel::TensorCore2);
        assert_eq!((pick_drop(128, "sm_90a", "bf16"), pick_drop(96, "sm_90", "bf16")), (AttnKernel::TensorCore, AttnKernel::Simple));
        assert_eq!(pick(96, "sm_90", "bf16"), AttnKernel::Simple, "tc2 where it is not eligible");
        // another thread keeps the default
        std::thread::spawn(|| assert_eq!(pick(64, "sm_90", "bf16"), AttnKernel::TensorCore)).join().unwrap();
        // the wgmma kernel is sm_90 only: elsewhere the request runs tc
        force_attention_kernel(Some(AttnKernel::Wgmma));
        assert_eq!(pick(64, "sm_90", "bf16"), AttnKernel::Wgmma);
        assert_eq!(pick(128, "sm_90a", "f16"), AttnKernel::Wgmma);
        assert_eq!(pick(128, "sm_80", "bf16"), AttnKernel::TensorCore);
        assert_eq!(pick(128, "sm_100", "bf16"), AttnKernel::TensorCore);
        force_attention_kernel(Some(AttnKernel::WgmmaSerial));
        assert_eq!((pick(128, "sm_90", "bf16"), pick(64, "sm_86", "bf16")), (AttnKernel::WgmmaSerial, AttnKernel::TensorCore));
        assert_eq!(pick(64, "sm_90", "f32"), AttnKernel::Simple);
        force_attention_kernel(Some(AttnKernel::WgmmaTma));
        assert_eq!((pick(128, "sm_90a", "f16"), pick(64, "sm_89", "bf16")), (AttnKernel::WgmmaTma, AttnKernel::TensorCore));
        assert_eq!(pick_drop(128, "sm_90", "f16"), AttnKernel::TensorCore);
        force_attention_kernel(Some(AttnKernel::WgmmaTmaPingpong));
        assert_eq!((pick(64, "sm_90", "bf16"), pick(128, "sm_80", "f16")), (AttnKernel::WgmmaTmaPingpong, AttnKernel::TensorCore));
        force_attention_kernel(Some(AttnKernel::Simple));
        assert_eq!(pick(64, "sm_90", "f16"), AttnKernel::Simple);
        assert_eq!(pick_drop(64, "sm_90", "f16"), AttnKernel::Simple);
        force_attention_kernel(None);
        assert_eq!(pick(64, "sm_90", "f16"), AttnKernel::TensorCore);
        // the sizes in attention_tc.cu's header: 27.9 / 52.5 KB (33 / 57.6 KB with tc2's dS^T tile)
        assert_eq!([tc_dkdv_smem(64, false), tc_dkdv_smem(128, false)], [27_904, 52_480]);
    }
}
