//! The GPU side of the ops, on Candle's CUDA buffers (built with the `cuda` feature): what
//! [`super::cpu`] is for the CPU. Everything here runs on Candle's own stream of the device, so
//! it is ordered with every other op without extra synchronisation.
//!
//! - [`conv`]: cuDNN convolutions (forward, input gradient, weight gradient), with descriptors,
//!   algorithms and workspace kept per shape and device;
//! - [`batchnorm`]: batch statistics, normalisation (+ReLU) and the backward pass, our kernels
//!   of `src/nn/kernels/batchnorm.cu`;
//! - [`Kernels`]: a kernel file compiled with NVRTC once per process and loaded once per device.
//!
//! The residual addition's kernels (`src/nn/kernels/residual.cu`) are launched from
//! [`super::ops::residual`].

pub mod batchnorm;
pub mod conv;

use std::sync::{Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaView, LaunchConfig};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, DeviceId, WrapErr};
use candle_core::{Layout, Result};

/// The f32 values of a contiguous CUDA tensor as a custom op receives it; `op` names the op in
/// the error otherwise.
pub fn f32_view<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, f32>> {
    let data = s.as_cuda_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(data.slice(a..b)),
        None => candle_core::bail!("{op}: expected contiguous data"),
    }
}

/// One kernel file: its source, compiled to PTX with NVRTC the first time a kernel of it is
/// needed (tens of milliseconds, once per process), loaded into each device once, under
/// `module` (Candle caches loaded modules by name), and each kernel looked up once per device:
/// a launch then costs no driver lookup and no allocation.
pub struct Kernels {
    module: &'static str,
    source: &'static str,
    ptx: OnceLock<String>,
    /// The kernels looked up so far, by device and name (a handful per device).
    funcs: Mutex<Vec<(DeviceId, &'static str, CudaFunction)>>,
}

impl Kernels {
    pub const fn new(module: &'static str, source: &'static str) -> Kernels {
        Kernels {
            module,
            source,
            ptx: OnceLock::new(),
            funcs: Mutex::new(Vec::new()),
        }
    }

    /// The kernel `name` of this file on `dev`.
    pub fn func(&'static self, dev: &CudaDevice, name: &'static str) -> Result<CudaFunction> {
        let mut funcs = self.funcs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, f)) = funcs.iter().find(|(d, n, _)| *d == dev.id() && *n == name) {
            return Ok(f.clone());
        }
        let ptx = match self.ptx.get() {
            Some(p) => p,
            None => {
                let compiled = candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(self.source).w()?;
                self.ptx.get_or_init(|| compiled.to_src())
            }
        };
        let f = dev
            .get_or_load_custom_func(name, self.module, ptx)?
            .into_cuda_function();
        funcs.push((dev.id(), name, f.clone()));
        Ok(f)
    }
}

/// Each (what, length, expected length) of `op`'s buffers must match; the error names the
/// buffer and the `shape` that sets the expectation.
pub fn check_lens(op: &str, shape: &dyn std::fmt::Debug, lens: &[(&str, usize, usize)]) -> Result<()> {
    for &(what, len, want) in lens {
        if len != want {
            candle_core::bail!("{op}: {what} has {len} values, {shape:?} needs {want}");
        }
    }
    Ok(())
}

/// Threads per block of the element-wise kernels.
pub const BLOCK: u32 = 256;

/// A 1-D launch over `items` work items for a grid-stride kernel: more blocks than 2^16 only
/// queue up, the loops cover the rest.
pub fn grid_stride(items: usize) -> LaunchConfig {
    let blocks = items.div_ceil(BLOCK as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `v` as a kernel's int argument, or an error naming `what`.
pub fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what}: dimension {v} too large for the kernels")))
}

/// The most memory the device's default pool has had in use since the process started, in
/// bytes: Candle's buffers and ours are allocated stream-ordered from it (cuBLAS's and cuDNN's
/// own handles aside). None where the device has no such pool.
pub fn pool_peak_bytes(dev: &CudaDevice) -> Result<Option<u64>> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let ctx = dev.cuda_stream().context().clone();
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: out-pointers to live locals; the device handle is the context's own.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
        .result()
        .w()?;
    let mut high: u64 = 0;
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
    // SAFETY: USED_MEM_HIGH is a cuuint64_t, written into `high`.
    unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut high as *mut u64).cast()) }
        .result()
        .w()?;
    Ok(Some(high))
}
