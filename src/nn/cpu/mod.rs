//! The kernels on plain slices: slices in, slices out, no Candle types. [`super::ops`] wraps
//! them in Candle ops.
//!
//! - [`lanes`]: the element-wise loops, compiled per instruction set;
//! - [`batchnorm`]: the batch-norm statistics, normalisation and backward pass;
//! - [`residual`]: the residual addition and its gradients;
//! - [`conv`]: the convolution's forward pass, input and weight gradients, with their plan,
//!   geometry, scratch buffers and SIMD kernels.

pub mod batchnorm;
pub mod conv;
pub mod lanes;
pub mod residual;
