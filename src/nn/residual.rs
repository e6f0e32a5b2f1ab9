//! The one place where a residual unit adds its two paths: `out = relu?(branch + S(x))`.
//!
//! `S` is the identity, or He et al.'s option A where the shape changes: `x` subsampled with
//! stride 2 and its channels zero-padded (half the new channels before, half after, as the
//! common CIFAR ResNet code does), with no parameters.

use candle_core::{Result, Tensor};

/// What the shortcut does to `x` before the addition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortcut {
    /// `x` has the branch's shape and is added as it is.
    Identity,
    /// Option A: `x[:, :, ::2, ::2]`, zero-padded to the branch's channel count.
    SubsamplePad,
}

/// `relu?(branch + S(x))`.
pub fn residual(branch: &Tensor, x: &Tensor, shortcut: Shortcut, relu: bool) -> Result<Tensor> {
    residual_slow(branch, x, shortcut, relu)
}

/// The same, from plain Candle ops: the reference that fused versions are tested against.
pub fn residual_slow(branch: &Tensor, x: &Tensor, shortcut: Shortcut, relu: bool) -> Result<Tensor> {
    let s = match shortcut {
        Shortcut::Identity => x.clone(),
        Shortcut::SubsamplePad => subsample_pad(x, branch.dim(1)?)?,
    };
    if s.dims() != branch.dims() {
        candle_core::bail!(
            "residual: shortcut shape {:?} differs from branch shape {:?}",
            s.dims(),
            branch.dims()
        );
    }
    let out = (branch + s)?;
    if relu {
        out.relu()
    } else {
        Ok(out)
    }
}

/// `x[:, :, ::2, ::2]` zero-padded from C to `c_out` channels ((c_out−C)/2 before, the rest after).
fn subsample_pad(x: &Tensor, c_out: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if c_out < c {
        candle_core::bail!("option A shortcut cannot reduce channels ({c} → {c_out})");
    }
    // Pad odd sizes by one so the reshape trick applies; the padded row/column is never picked.
    let x = if h % 2 == 1 {
        x.pad_with_zeros(2, 0, 1)?
    } else {
        x.clone()
    };
    let x = if w % 2 == 1 { x.pad_with_zeros(3, 0, 1)? } else { x };
    let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
    let sub = x
        .reshape((n, c, h2, 2, w2, 2))?
        .narrow(3, 0, 1)?
        .narrow(5, 0, 1)?
        .reshape((n, c, h2, w2))?;
    let before = (c_out - c) / 2;
    sub.pad_with_zeros(1, before, c_out - c - before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn option_a_subsamples_and_pads_symmetrically() -> Result<()> {
        let x = Tensor::arange(0f32, 2. * 16., &Device::Cpu)?.reshape((1, 2, 4, 4))?;
        let branch = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu)?;
        let y = residual_slow(&branch, &x, Shortcut::SubsamplePad, false)?;
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        // channel 0 and 3 are padding; channel 1 is x[0] at (0,0),(0,2),(2,0),(2,2)
        assert_eq!(&v[0..4], &[0., 0., 0., 0.]);
        assert_eq!(&v[4..8], &[0., 2., 8., 10.]);
        assert_eq!(&v[8..12], &[16., 18., 24., 26.]);
        assert_eq!(&v[12..16], &[0., 0., 0., 0.]);
        Ok(())
    }

    #[test]
    fn option_a_handles_odd_sizes() -> Result<()> {
        let x = Tensor::ones((2, 3, 7, 5), candle_core::DType::F32, &Device::Cpu)?;
        let branch = Tensor::zeros((2, 6, 4, 3), candle_core::DType::F32, &Device::Cpu)?;
        let y = residual_slow(&branch, &x, Shortcut::SubsamplePad, true)?;
        assert_eq!(y.dims(), &[2, 6, 4, 3]);
        assert_eq!(y.sum_all()?.to_scalar::<f32>()?, (2 * 3 * 4 * 3) as f32);
        Ok(())
    }
}
