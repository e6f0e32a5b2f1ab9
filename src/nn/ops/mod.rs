//! The Candle glue: each fused op's public function, its `*_slow` oracle built from Candle's
//! own ops, and the custom ops (`CustomOp1/2/3`) that check layouts and hand plain slices to
//! [`super::cpu`]'s passes. Nothing below this module knows Candle; nothing here computes more
//! than shapes and bookkeeping.
//!
//! - [`conv`]: `conv2d`, `conv2d_bias`, `conv2d_slow` and the convolution's forward and
//!   gradient ops;
//! - [`batchnorm`]: `batch_norm`, `batch_norm_slow`, the eval-mode scale and shift, the running
//!   statistics and the batch-norm ops;
//! - [`residual`]: `residual`, `residual_slow` and their op, with its CUDA kernels;
//! - [`conv_bn`]: the fused training ops of conv → BN (→ + shortcut) (→ ReLU) layers and of
//!   runs of basic residual units.

pub mod batchnorm;
mod common;
pub mod conv;
pub mod conv_bn;
pub mod residual;

pub use common::{reference_ops, set_reference_ops};
