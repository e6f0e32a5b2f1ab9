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

mod batchnorm;
pub mod conv;
mod conv_bn;
pub mod flops;
mod lanes;
mod layers;
mod params;
mod residual;
pub mod residual_bench;
mod units;

thread_local! {
    static REFERENCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static STEP: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Tells the layers that draw random numbers in training ([`Dropout`]) which trial seed and
/// training step the next forward pass on this thread belongs to; the trainer calls it before
/// every step, so the draws depend on (seed, step, layer) alone.
pub fn set_step(seed: u64, step: u64) {
    STEP.with(|s| s.set((seed, step)));
}

/// The (seed, step) of [`set_step`] on this thread; (0, 0) before any.
pub(crate) fn step() -> (u64, u64) {
    STEP.with(|s| s.get())
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
    batch_norm, conv2d, conv2d_biased, dropout, global_avg_pool, linear, max_pool2d, BatchNorm2d, Conv2d, Dropout,
    Linear,
};
pub use params::{is_buffer, ParamStore};
// What a plugin's signatures are made of, so that a plugin needs no crate but this one.
pub use candle_core::{Error, ModuleT, Result, Tensor};
pub use candle_nn::VarBuilder;
pub use residual::{residual, residual_slow};
pub use units::{conv1x1, conv3x3, stage, unit, ConvSpec, Order, Shortcut, Stage, Unit, UnitSpec};
