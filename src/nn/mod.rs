//! What architecture plugins build networks from: units and stages described as values
//! ([`UnitSpec`], [`unit`], [`stage`]), layers for the rest ([`conv2d`], [`batch_norm`],
//! [`linear`], pooling, [`dropout`]), and the parameter store.
//!
//! A plugin says *what* its net is; this module decides *how* it runs. A unit described as its
//! convolutions, norms, activation order and shortcut runs on the fused ops wherever they take
//! its shapes (one training op per conv → BN → ReLU, the shortcut's addition inside the last
//! one, a run of basic identity units as one op, BatchNorm folded into the convolutions in
//! evaluation), so an outsider's plugin is as fast as ours and a faster kernel reaches every
//! architecture at once. Layers count their forward multiply-adds while a [`flops::count`] is
//! active, which is how `runner` reports `mflops` for any plugin.
//!
//! Inside, each layer imports only from the ones below it: `units` (the fused paths chosen
//! from a unit's description) over `layers` over `ops` (the Candle ops, each with its `*_slow`
//! oracle built from Candle's own) over `cpu` (the kernels, on plain slices) and, with the
//! `cuda` feature, `cuda` (cuDNN and our kernels, on Candle's device buffers). [`bench`] times
//! ops and kernels for `runner bench`.

pub mod bench;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod flops;
mod layers;
mod ops;
mod params;
pub mod trace;
mod units;

/// Makes the convolution, batch-norm and residual ops built on this thread Candle's own
/// composed ops (the `*_slow` functions) instead of our kernels, so that `runner bench
/// --compare` and the tests can run the same model both ways, side by side. Per thread, so
/// tests running in parallel do not see each other's setting.
pub fn use_reference_ops(on: bool) {
    ops::set_reference_ops(on);
}

/// The most memory `device` has had in use for this process's tensors so far, in bytes: on a
/// CUDA device its allocation pool's high-water mark; None on the CPU (see the process's peak
/// resident memory there) and where the device cannot say.
pub fn device_memory_peak(device: &candle_core::Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        return cuda::pool_peak_bytes(d).ok().flatten();
    }
    let _ = device;
    None
}

pub use layers::{
    batch_norm, conv2d, conv2d_biased, dropout, global_avg_pool, linear, max_pool2d, relu, set_step, BatchNorm2d,
    Conv2d, Dropout, Linear,
};
pub use ops::residual::{residual, residual_slow, Addend};
pub use params::{is_buffer, ParamStore, ShapeStore};
// What a plugin's signatures are made of, so that a plugin needs no crate but this one.
pub use candle_core::{Error, ModuleT, Result, Tensor};
pub use candle_nn::VarBuilder;
pub use units::{conv1x1, conv3x3, stage, unit, ConvSpec, Order, Shortcut, Stage, Unit, UnitSpec};
