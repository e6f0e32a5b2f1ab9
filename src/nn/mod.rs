//! Layers, parameter storage and fused ops that the architecture plugins are built from.
//!
//! Plugins build models only through this module, so a faster kernel for a layer replaces it
//! for every architecture at once. Layers count their forward multiply-adds while a
//! [`flops::count`] is active, which is how `runner` reports `mflops` for any plugin.
//!
//! Inside, each layer imports only from the ones below it: `layers` (the layers re-exported
//! here) over `ops` (the Candle ops, each with its `*_slow` oracle built from Candle's own)
//! over `cpu` (the kernels, on plain slices). [`bench`] times ops and kernels for `runner
//! bench`.

pub mod bench;
mod cpu;
pub mod flops;
mod layers;
mod ops;
mod params;

/// Makes the convolution, batch-norm and residual ops built on this thread Candle's own
/// composed ops (the `*_slow` functions) instead of our kernels, so that `runner bench
/// --compare` and the tests can run the same model both ways, side by side. Per thread, so
/// tests running in parallel do not see each other's setting.
pub fn use_reference_ops(on: bool) {
    ops::set_reference_ops(on);
}

pub use layers::{
    basic_units, batch_norm, conv2d, conv_bn, conv_bn_add_relu, global_avg_pool, linear, BasicUnit, BatchNorm2d,
    Conv2d, Linear,
};
pub use ops::residual::{residual, residual_slow, Shortcut};
pub use params::{is_buffer, ParamStore};
