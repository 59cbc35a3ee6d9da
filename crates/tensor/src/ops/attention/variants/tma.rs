//! The TMA launcher of attention_tma.cu (the warp-specialized sm_90a forward `attention_fwd_wgtma`
//! and its pingpong form): the q, k, v tensor maps, built per call with `cuTensorMapEncodeTiled`,
//! and the launch. Called by `variants::attention_fwd` (mod.rs).
use super::super::launch::{push_mask_and_dims, AttentionDims};
use super::launchers::WG_ROWS;
use crate::cuda::device::CudaBackend;
use crate::cuda::launch::{allow_smem, KernelFloat};
use crate::{Error, Result};
use cudarc::driver::{sys, CudaView, CudaViewMut, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};

/// The driver's tensor map (`CUtensorMap`, 128 opaque bytes), passed by value to attention_tma.cu's
/// kernels as a `const __grid_constant__ TmaMap`.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct TmaMap(sys::CUtensorMap);
// SAFETY: plain bytes with the layout and alignment the kernel parameter declares.
unsafe impl DeviceRepr for TmaMap {}

/// Rows of a TMA box (and of the kernel's query block and key tile) and its 64 columns: one
/// 128-byte swizzle atom row of 16-bit elements.
const TMA_BOX: [u32; 3] = [64, 128, 1];
/// Dynamic shared memory of `attention_fwd_wgtma`: Q and two stages of K and V (128 rows each),
/// nine mbarriers, and 1 KB to align the swizzled tiles.
pub(super) fn wgtma_smem(head_dim: usize) -> u32 {
    (5 * 128 * head_dim * 2 + 72 + 1024) as u32
}

/// A 3-D tensor map (innermost first: head dim, sequence, batch * heads) over the contiguous
/// 16-bit tensor `[bh, len, d]` at `ptr`: 64 x 128 x 1 boxes, 128-byte swizzle, rows past `len`
/// zero-filled.
fn tma_map_3d(ptr: sys::CUdeviceptr, bh: usize, len: usize, d: usize, bf16: bool) -> Result<TmaMap> {
    use sys::*;
    let dtype = if bf16 { CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 } else { CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16 };
    let dims = [d as u64, len as u64, bh as u64];
    let strides = [2 * d as u64, (2 * d * len) as u64];  // bytes, of dims 1 and 2
    let elem_strides = [1u32; 3];
    let mut map = std::mem::MaybeUninit::<CUtensorMap>::zeroed();
    // SAFETY: every array has the rank's entries, `map` is 128-byte aligned, and the driver only
    // reads `ptr` as an address (nothing is accessed until a kernel runs with the map).
    let r = unsafe {
        cuTensorMapEncodeTiled(
            map.as_mut_ptr(), dtype, 3, ptr as *mut std::ffi::c_void, dims.as_ptr(), strides.as_ptr(), TMA_BOX.as_ptr(),
            elem_strides.as_ptr(), CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B, CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if r != CUresult::CUDA_SUCCESS {
        return Err(Error::msg(format!("attention_fwd: cuTensorMapEncodeTiled([{bh}, {len}, {d}]) failed: {r:?}")));
    }
    // SAFETY: the driver wrote the map (CUDA_SUCCESS).
    Ok(TmaMap(unsafe { map.assume_init() }))
}

impl CudaBackend {
    /// `attention_fwd` with attention_fwd_wgtma (or its pingpong form): builds the q, k, v tensor maps and launches, or
    /// returns false (nothing launched) where the kernel cannot take them: no keys or no queries
    /// (a map needs every dimension nonzero) or a pointer not 16-byte aligned. The caller then
    /// runs `attention_fwd_wg`, which has the same contract.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_fwd_tma<T: KernelFloat>(
        &self, out: &mut CudaViewMut<T>, lse: &mut CudaViewMut<f32>, q: &CudaView<T>, k: &CudaView<T>, v: &CudaView<T>,
        key_mask: Option<&CudaView<f32>>, dims: &AttentionDims, pingpong: bool,
    ) -> Result<bool> {
        let (bh, d) = (dims.batch * dims.heads, dims.head_dim);
        if dims.q_len == 0 || dims.kv_len == 0 || bh == 0 {
            return Ok(false);
        }
        let stream = self.stream();
        // the guards record the kernel's reads of q, k, v when dropped, after the launch
        let (pq, _rq) = q.device_ptr(stream);
        let (pk, _rk) = k.device_ptr(stream);
        let (pv, _rv) = v.device_ptr(stream);
        if [pq, pk, pv].iter().any(|p| p % 16 != 0) {
            return Ok(false);
        }
        let bf16 = T::SUFFIX == "bf16";
        let maps = [tma_map_3d(pq, bh, dims.q_len, d, bf16)?, tma_map_3d(pk, bh, dims.kv_len, d, bf16)?, tma_map_3d(pv, bh, dims.kv_len, d, bf16)?];
        let pp = if pingpong { "pp_" } else { "" };
        let f = self.function(&crate::cuda::kernels::ATTENTION_TMA, &format!("attention_fwd_wgtma_{pp}d{d}_{}", T::SUFFIX))?;
        let smem = wgtma_smem(d);
        allow_smem(&f, smem)?;
        let args = dims.args();
        let mut b = stream.launch_builder(&f);
        b.arg(out).arg(lse).arg(&maps[0]).arg(&maps[1]).arg(&maps[2]);
        push_mask_and_dims(&mut b, key_mask, &args, &dims.scale);
        let grid = (dims.q_len.div_ceil(WG_ROWS) as u32, bh as u32, 1);
        unsafe { b.launch(LaunchConfig { grid_dim: grid, block_dim: (384, 1, 1), shared_mem_bytes: smem }) }?;
        Ok(true)
    }
}
