//! Layers, parameter storage and fused ops that the architecture plugins are built from.
//!
//! Plugins build models only through this module, so a faster kernel for a layer replaces it
//! for every architecture at once. Layers count their forward multiply-adds while a
//! [`flops::count`] is active, which is how `runner` reports `mflops` for any plugin.

mod batchnorm;
pub mod conv;
pub mod flops;
mod lanes;
mod layers;
mod params;
mod residual;
pub mod residual_bench;

pub use layers::{batch_norm, conv2d, global_avg_pool, linear, BatchNorm2d, Conv2d, Linear};
pub use params::{is_buffer, ParamStore};
pub use residual::{residual, residual_slow, Shortcut};
