//! Layers, parameter storage and fused ops that the architecture plugins are built from.
//!
//! Plugins build models only through this module, so a faster kernel for a layer replaces it
//! for every architecture at once. Layers count their forward multiply-adds while a
//! [`flops::count`] is active, which is how `runner` reports `mflops` for any plugin.

mod batchnorm;
pub mod conv;
mod conv_bn;
pub mod flops;
mod lanes;
mod layers;
mod params;
mod residual;
pub mod residual_bench;

thread_local! {
    static REFERENCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes the convolution, batch-norm and residual ops built on this thread Candle's own
/// composed ops (the `*_slow` functions) instead of our kernels, so that `runner bench
/// --compare` and the tests can run the same model both ways, side by side. Per thread, so
/// tests running in parallel do not see each other's setting.
pub fn use_reference_ops(on: bool) {
    REFERENCE.with(|r| r.set(on));
}

/// The f32 values of a contiguous CPU tensor as a custom op receives it; `op` names the op in
/// the error otherwise.
pub(crate) fn f32_data<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        candle_core::CpuStorage::F32(d) => d.as_slice(),
        _ => candle_core::bail!("{op}: expected f32 data"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: expected contiguous data"),
    }
}

/// Whether [`use_reference_ops`] is on for this thread.
pub(crate) fn reference_ops() -> bool {
    REFERENCE.with(|r| r.get())
}

pub use layers::{
    basic_units, batch_norm, conv2d, conv_bn, conv_bn_add_relu, global_avg_pool, linear, BasicUnit, BatchNorm2d,
    Conv2d, Linear,
};
pub use params::{is_buffer, ParamStore};
pub use residual::{residual, residual_slow, Shortcut};
