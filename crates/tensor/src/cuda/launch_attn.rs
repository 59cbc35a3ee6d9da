//! Launchers for attention.cu (the simple fused attention forward and its blockwise backward, any
//! head dim up to 128, f32 / bf16 / f16) and attention_tc.cu (the tensor-core kernels: bf16 / f16,
//! head dim 64 or 128, sm_80+), chosen per call by [`AttentionDims::kernel`].
//! Conventions: see launch.rs (outputs → saved stats → inputs → dims; lengths checked; async).
use super::device::CudaBackend;
use super::launch::{allow_smem, check_len, to_i32, KernelFloat, NULL_PTR};
use crate::{Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

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
}

/// Rows per block of the kernels (attention.cu: 4 warps x 4 query rows fwd, x 2 rows bwd).
const FWD_ROWS: usize = 16;
const BWD_ROWS: usize = 8;
/// Query (and key) rows per block of the tensor-core kernels.
const TC_ROWS: usize = 64;

/// Which attention kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnKernel {
    /// attention.cu: the simple (reference) kernels.
    Simple,
    /// attention_tc.cu: mma.sync tensor-core kernels (bf16 / f16, head dim 64 / 128, sm_80+).
    TensorCore,
}

static FORCE_SIMPLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes later attention forwards use the simple kernels even where the tensor-core ones apply
/// (process-wide; for the reference variant of `kiln bench` and for tests). A forward's choice is
/// kept by its backward.
pub fn force_simple_attention(on: bool) {
    FORCE_SIMPLE.store(on, std::sync::atomic::Ordering::Relaxed);
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
    pub fn kernel(&self, arch: &str, suffix: &str) -> AttnKernel {
        let sm: u32 = arch.trim_start_matches("sm_").trim_end_matches(|c: char| c.is_alphabetic()).parse().unwrap_or(0);
        let eligible = matches!(suffix, "bf16" | "f16") && matches!(self.head_dim, 64 | 128) && sm >= 80;
        if eligible && !FORCE_SIMPLE.load(std::sync::atomic::Ordering::Relaxed) {
            AttnKernel::TensorCore
        } else {
            AttnKernel::Simple
        }
    }
    fn q_elems(&self) -> usize {
        self.batch * self.heads * self.q_len * self.head_dim
    }
    fn kv_elems(&self) -> usize {
        self.batch * self.heads * self.kv_len * self.head_dim
    }
    fn rows(&self) -> usize {
        self.batch * self.heads * self.q_len
    }
    /// The kernels' `int B, int H, int Tq, int Tk, int D, float scale, int causal` (checked).
    fn args(&self) -> [i32; 6] {
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
        let tc = kernel == AttnKernel::TensorCore;
        let (f, smem, rows) = if tc {
            let f = self.function("attention_tc", &format!("attention_fwd_tc_d{d}_{}", T::SUFFIX))?;
            (f, (2 * TC_ROWS * (d + 8) * 2) as u32, TC_ROWS)
        } else {
            (self.function("attention", &format!("attention_fwd_{}", T::SUFFIX))?, ((48 * d + 32 * (d + 1)) * 4) as u32, FWD_ROWS)
        };
        allow_smem(&f, smem)?;
        let [bb, hh, tq, tk, dd, causal] = dims.args();
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(lse).arg(q).arg(k).arg(v);
        match key_mask {
            Some(m) => b.arg(m),
            None => b.arg(&NULL_PTR),
        };
        b.arg(&bb).arg(&hh).arg(&tq).arg(&tk).arg(&dd).arg(&dims.scale).arg(&causal);
        let grid = (dims.q_len.div_ceil(rows) as u32, (dims.batch * dims.heads) as u32, 1);
        unsafe { b.launch(LaunchConfig { grid_dim: grid, block_dim: (128, 1, 1), shared_mem_bytes: smem }) }?;
        Ok(())
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
        let [bb, hh, tq, tk, dd, causal] = dims.args();
        let bh = (dims.batch * dims.heads) as u32;
        // 1. delta = rowsum(dout * out)
        let mut delta = self.alloc::<f32>(dims.rows().max(1))?;
        if dims.rows() > 0 {
            let f = self.function("attention", &format!("attention_bwd_preprocess_{}", T::SUFFIX))?;
            let rows = to_i32(op, dims.rows())?;
            let mut b = self.stream().launch_builder(&f);
            b.arg(&mut *delta).arg(out).arg(dout).arg(&rows).arg(&dd);
            let cfg = LaunchConfig { grid_dim: (dims.rows().div_ceil(4) as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            unsafe { b.launch(cfg) }?;
        }
        let tc = kernel == AttnKernel::TensorCore;
        // 2. dQ over key tiles, 3. dK / dV over query tiles
        for (pass, len) in [("dq", dims.q_len), ("dkdv", dims.kv_len)] {
            if len == 0 {
                continue;
            }
            let (f, smem, rows) = if tc {
                let f = self.function("attention_tc", &format!("attention_bwd_{pass}_tc_d{d}_{}", T::SUFFIX))?;
                let smem = if pass == "dq" { 2 * TC_ROWS * (d + 8) * 2 } else { (2 * 64 + 2 * 32) * (d + 8) * 2 + 2 * 32 * 4 };
                (f, smem as u32, TC_ROWS)
            } else {
                (self.function("attention", &format!("attention_bwd_{pass}_{}", T::SUFFIX))?, ((16 * d + 64 * (d + 1)) * 4) as u32, BWD_ROWS)
            };
            allow_smem(&f, smem)?;
            let mut b = self.stream().launch_builder(&f);
            if pass == "dq" {
                b.arg(&mut *dq);
            } else {
                b.arg(&mut *dk).arg(&mut *dv);
            }
            b.arg(lse).arg(&*delta).arg(q).arg(k).arg(v).arg(dout);
            match key_mask {
                Some(m) => b.arg(m),
                None => b.arg(&NULL_PTR),
            };
            b.arg(&bb).arg(&hh).arg(&tq).arg(&tk).arg(&dd).arg(&dims.scale).arg(&causal);
            let cfg = LaunchConfig { grid_dim: (len.div_ceil(rows) as u32, bh, 1), block_dim: (128, 1, 1), shared_mem_bytes: smem };
            unsafe { b.launch(cfg) }?;
        }
        Ok(())
    }
}
