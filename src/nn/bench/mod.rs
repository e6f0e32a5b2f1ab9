//! What `runner bench` times besides whole models: the convolution against Candle's and its
//! tuning aids ([`conv`]), the convolution on a GPU against the CPU oracle ([`device`]), the fused residual op against the composed one ([`residual`]); and
//! how it times them ([`timing`]: alternating variants, medians), which `runner bench --op
//! model` (in `commands::bench`) uses too.

pub mod conv;
pub mod device;
pub mod residual;
pub mod timing;

pub use timing::{alternate, median};
