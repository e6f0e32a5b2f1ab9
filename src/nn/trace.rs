//! A model's shapes without its storage: what `runner run --dry-run` and the memory estimate
//! learn from a net of any depth in milliseconds.
//!
//! [`footprint`] runs a training forward pass in which every tensor is a *placeholder*, one
//! zero broadcast to its shape (4 bytes, whatever the shape), and the layers of this module
//! return placeholders of their outputs' shapes instead of computing them. Each layer records
//! what it keeps for the backward pass, as the ops behind it do: a fused conv → BN (→ ReLU,
//! plus shortcut) layer keeps the convolution's output and its own (two activations), every
//! other layer its output (a Candle graph node), dropout its mask as well. Together with the
//! parameters' shapes ([`super::ShapeStore`]) and the multiply-adds the layers count
//! ([`super::flops`]), that is the model's cost, at no more than a few bytes per layer.
//!
//! A plugin's forward pass that calls Candle's ops directly on a placeholder still works (the
//! op computes a one-image result), but what those ops keep is not counted.

use std::cell::Cell;

use candle_core::{DType, Device, Result, Shape, Tensor};

/// What one image's training forward pass keeps and how large its activations get, in f32
/// values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Values per image kept for the backward pass, summed over the layers.
    pub kept: u64,
    /// Values per image of the largest activation (the backward pass's working buffers are
    /// of its size).
    pub largest: u64,
}

thread_local! {
    static TRACE: Cell<Option<Footprint>> = const { Cell::new(None) };
}

/// Whether a [`footprint`] trace runs on this thread: layers then return placeholders.
pub fn active() -> bool {
    TRACE.with(|t| t.get().is_some())
}

/// Runs `f` (a training forward pass on placeholders) as a trace; returns its result and
/// what the layers recorded.
pub fn footprint<T>(f: impl FnOnce() -> T) -> (T, Footprint) {
    let before = TRACE.with(|t| t.replace(Some(Footprint::default())));
    let out = f();
    let fp = TRACE.with(|t| t.replace(before)).unwrap_or_default();
    (out, fp)
}

/// A tensor of `shape` that holds a single zero (no storage of its size).
pub fn placeholder(shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::zeros((), DType::F32, &Device::Cpu)?.broadcast_as(shape)
}

/// A layer's output in a trace: a placeholder of `shape` (batch first), recorded as kept
/// `copies` times for the backward pass.
pub(super) fn output(shape: impl Into<Shape>, copies: u64) -> Result<Tensor> {
    let shape = shape.into();
    let dims = shape.dims();
    let per_image = dims
        .iter()
        .skip(1)
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .ok_or_else(|| candle_core::Error::Msg(format!("an activation of shape {dims:?} is too large to count")))?;
    TRACE.with(|t| {
        if let Some(mut fp) = t.get() {
            fp.kept = fp.kept.saturating_add(per_image.saturating_mul(copies));
            fp.largest = fp.largest.max(per_image);
            t.set(Some(fp));
        }
    });
    placeholder(shape)
}

/// The output shape of a `k`×`k` convolution with `stride` and `padding` from `x`'s.
pub(super) fn conv_dims(
    x: &Tensor,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
) -> Result<(usize, usize, usize, usize)> {
    let (n, _, h, w) = x.dims4()?;
    let side = |s: usize| (s + 2 * padding).checked_sub(k).map(|d| d / stride + 1);
    match (side(h), side(w)) {
        (Some(ho), Some(wo)) => Ok((n, c_out, ho, wo)),
        _ => candle_core::bail!("a {k}×{k} convolution does not fit a {h}×{w} map with padding {padding}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_hold_one_value_and_outputs_are_recorded_per_image() -> Result<()> {
        let p = placeholder((1000, 64, 32, 32))?;
        assert_eq!(p.dims(), [1000, 64, 32, 32]);
        assert_eq!(p.stride(), [0, 0, 0, 0]);
        let (y, fp) = footprint(|| -> Result<Tensor> {
            output((8, 16, 32, 32), 2)?;
            output((8, 32, 16, 16), 1)
        });
        assert_eq!(y?.dims(), [8, 32, 16, 16]);
        assert_eq!(
            fp,
            Footprint {
                kept: 2 * 16 * 32 * 32 + 32 * 16 * 16,
                largest: 16 * 32 * 32
            }
        );
        assert!(!active());
        Ok(())
    }

    #[test]
    fn conv_output_shapes() -> Result<()> {
        let x = placeholder((2, 3, 33, 33))?;
        assert_eq!(conv_dims(&x, 16, 3, 2, 1)?, (2, 16, 17, 17));
        assert_eq!(conv_dims(&x, 16, 1, 2, 0)?, (2, 16, 17, 17));
        assert!(conv_dims(&placeholder((1, 3, 2, 2))?, 8, 5, 1, 0).is_err());
        Ok(())
    }
}
