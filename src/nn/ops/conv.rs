//! The fast 2-D convolution as Candle ops: [`conv2d`] (with its backward pass), [`conv2d_bias`]
//! (inference with a folded BatchNorm, a shortcut and a ReLU), [`conv2d_slow`] (Candle's own,
//! the oracle the tests compare against), and the custom ops behind them ([`ConvOp`],
//! `BiasConvOp`, [`InputGradOp`], [`WeightGradOp`]). The arithmetic is
//! [`cpu::conv`](crate::nn::cpu::conv)'s, on slices, and on a CUDA device (with the `cuda`
//! feature) cuDNN's, through `nn::cuda::conv`; this file checks shapes and layouts and hands
//! the buffers over. Shapes the kernels do not take go to Candle's own `conv2d`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::common::{f32_data, reference_ops};
use crate::nn::cpu::conv::{self as cpu, ConvGeom, Isa};
#[cfg(feature = "cuda")]
use crate::nn::cuda::{conv as gpu, f32_view};
#[cfg(feature = "cuda")]
use candle_core::CudaStorage;

#[cfg(test)]
mod tests;

/// `conv2d(x, w)` with no bias: x (N, C_in, H, W), w (C_out, C_in, k, k) → (N, C_out, H', W').
///
/// The fast op handles f32 tensors on the CPU or a CUDA device with 3×3 kernels and padding
/// 1, or 1×1 kernels and padding 0, at stride 1 or 2; anything else is passed to Candle's
/// `conv2d` (the same values, more slowly).
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if reference_ops() {
        return conv2d_slow(x, w, stride, padding);
    }
    conv2d_with(x, w, stride, padding, Isa::detect())
}

/// Candle's own convolution (`x.conv2d(w, padding, stride, 1, 1)`): the reference the fast op
/// is tested against.
pub fn conv2d_slow(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.conv2d(w, padding, stride, 1, 1)
}

/// `relu?(conv2d(x, w) + bias (+ add))`, bias (C_out) and `add` a tensor of the output's
/// shape, in one pass: the kernels add the bias and `add` and apply the ReLU as they store
/// each value. For inference with a BatchNorm folded into the weights and bias (and a residual
/// unit's shortcut as `add`); the result carries no gradient. Shapes the fast op does not
/// handle go through Candle's ops (the same values up to rounding).
pub fn conv2d_bias(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    add: Option<&Tensor>,
    stride: usize,
    padding: usize,
    relu: bool,
) -> Result<Tensor> {
    let cout = w.dim(0)?;
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    let bias_fits = bias.dims() == [cout] && f32_cpu(bias);
    let fast = match reference_ops() || !bias_fits {
        true => None,
        false => ConvOp::for_input(x, w, stride, padding, Isa::detect())?,
    };
    let fast = fast
        .filter(|op| x.device().is_cpu() && add.is_none_or(|a| f32_cpu(a) && a.dims4().ok() == Some(op.out_dims())));
    let Some(conv) = fast else {
        // on a GPU: the convolution on cuDNN, the rest as Candle's ops
        let mut y = conv2d(x, w, stride, padding)?.broadcast_add(&bias.reshape((1, cout, 1, 1))?)?;
        if let Some(a) = add {
            y = (y + a)?;
        }
        return if relu { y.relu() } else { Ok(y) };
    };
    let op = BiasConvOp {
        conv,
        bias: bias.to_vec1::<f32>()?,
        relu,
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match add {
        Some(a) => x.apply_op3_no_bwd(&w, &a.contiguous()?, &op),
        None => x.apply_op2_no_bwd(&w, &op),
    }
}

/// [`conv2d`] with the kernels of `isa` (the tests force each one the machine has).
fn conv2d_with(x: &Tensor, w: &Tensor, stride: usize, padding: usize, isa: Isa) -> Result<Tensor> {
    match ConvOp::for_input(x, w, stride, padding, isa)? {
        Some(op) => x.contiguous()?.apply_op2(&w.contiguous()?, op),
        None => conv2d_slow(x, w, stride, padding),
    }
}

/// The `len` f32 values of a contiguous CPU tensor, `what` naming it in a length error.
fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str, len: usize) -> Result<&'a [f32]> {
    let data = f32_data(s, l, "conv2d")?;
    if data.len() != len {
        candle_core::bail!("conv2d: {what} has {:?}, expected {len} elements", l.shape());
    }
    Ok(data)
}

/// The forward op on (x, w); its backward runs the two gradient ops below.
#[derive(Debug, Clone, Copy)]
pub struct ConvOp {
    pub g: ConvGeom,
    pub isa: Isa,
}

impl ConvOp {
    /// The fast op for `conv2d(x, w)` with the kernels of `isa` (on the CPU; cuDNN's on a CUDA
    /// device), or None where Candle's `conv2d` must run instead.
    fn for_input(x: &Tensor, w: &Tensor, stride: usize, padding: usize, isa: Isa) -> Result<Option<ConvOp>> {
        let op = Self::for_dims(x.dims4()?, w, stride, padding, isa)?;
        Ok(op.filter(|_| x.device().same_device(w.device()) && x.dtype() == DType::F32))
    }

    /// [`ConvOp::for_input`] for an f32 input of dimensions `x` on `w`'s device.
    pub fn for_dims(
        x: (usize, usize, usize, usize),
        w: &Tensor,
        stride: usize,
        padding: usize,
        isa: Isa,
    ) -> Result<Option<ConvOp>> {
        let (n, cin, h, wd) = x;
        let (cout, wcin, k, kw) = w.dims4()?;
        if wcin != cin {
            candle_core::bail!(
                "conv2d: input has {cin} channels but the weight {:?} expects {wcin}",
                w.dims()
            );
        }
        let fast_shape =
            k == kw && ((k == 3 && padding == 1) || (k == 1 && padding == 0)) && (stride == 1 || stride == 2);
        // a CUDA device exists only in the `cuda` build, whose ops have their `cuda_fwd`
        let device = w.device().is_cpu() || w.device().is_cuda();
        let fast = fast_shape && device && w.dtype() == DType::F32 && n * cin * h * wd * cout > 0;
        Ok(fast.then(|| ConvOp {
            g: ConvGeom::new(n, cin, cout, h, wd, k, stride),
            isa,
        }))
    }

    /// The output's shape (N, C_out, H', W').
    pub fn out_dims(&self) -> (usize, usize, usize, usize) {
        (self.g.n, self.g.cout, self.g.ho, self.g.wo)
    }

    /// The weight's shape (C_out, C_in, k, k).
    pub fn w_dims(&self) -> (usize, usize, usize, usize) {
        (self.g.cout, self.g.cin, self.g.k, self.g.k)
    }

    /// The forward pass on contiguous x and w (lengths checked).
    pub fn forward(&self, x: &[f32], w: &[f32]) -> Result<Vec<f32>> {
        if x.len() != self.x_len() || w.len() != self.w_len() {
            candle_core::bail!(
                "conv2d: {} input and {} weight values do not match {:?}",
                x.len(),
                w.len(),
                self.g
            );
        }
        Ok(cpu::forward(&self.g, self.isa, x, w, None, None, false))
    }

    fn x_len(&self) -> usize {
        self.g.n * self.g.cin * self.g.h * self.g.w
    }
    fn w_len(&self) -> usize {
        self.g.cout * self.g.cin * self.g.k * self.g.k
    }
    fn y_len(&self) -> usize {
        self.g.n * self.g.cout * self.g.hw()
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "conv2d-fast"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "input", self.x_len())?;
        let w = contiguous(s2, l2, "weight", self.w_len())?;
        let g = &self.g;
        let y = cpu::forward(g, self.isa, x, w, None, None, false);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        let (x, w) = (f32_view(s1, l1, "conv2d")?, f32_view(s2, l2, "conv2d")?);
        let y = gpu::forward(&s1.device, &self.g, &x, &w)?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, s1.device.clone()),
            Shape::from(self.out_dims()),
        ))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        // the network's first convolution reads the data batch, which needs no gradient
        let dx = match x.track_op() {
            true => Some(dy.apply_op2_no_bwd(w, &InputGradOp(*self))?),
            false => None,
        };
        let dw = x.apply_op2_no_bwd(&dy, &WeightGradOp(*self))?;
        Ok((dx, Some(dw)))
    }
}

/// (x, w) → relu?(conv(x, w) + bias), or (x, w, s) → relu?(conv(x, w) + bias + s); forward
/// only.
struct BiasConvOp {
    conv: ConvOp,
    bias: Vec<f32>,
    relu: bool,
}

impl BiasConvOp {
    fn run(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        add: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let op = &self.conv;
        let x = contiguous(s1, l1, "input", op.x_len())?;
        let w = contiguous(s2, l2, "weight", op.w_len())?;
        let g = &op.g;
        let y = cpu::forward(g, op.isa, x, w, Some(&self.bias), add, self.relu);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.ho, g.wo))))
    }
}

impl CustomOp2 for BiasConvOp {
    fn name(&self) -> &'static str {
        "conv2d-fast-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, None)
    }
}

impl CustomOp3 for BiasConvOp {
    fn name(&self) -> &'static str {
        "conv2d-fast-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let add = contiguous(s3, l3, "added values", self.conv.y_len())?;
        self.run(s1, l1, s2, l2, Some(add))
    }
}

/// (dy, w) → dx, or (dy, w, s) → dx + s.
pub struct InputGradOp(pub ConvOp);

impl InputGradOp {
    fn run(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        add: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let dy = contiguous(s1, l1, "output gradient", op.y_len())?;
        let w = contiguous(s2, l2, "weight", op.w_len())?;
        let g = &op.g;
        let dx = cpu::input_grad(g, op.isa, dy, w, add);
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.cin, g.h, g.w))))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        add: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        let g = &self.0.g;
        let (dy, w) = (f32_view(s1, l1, "conv2d")?, f32_view(s2, l2, "conv2d")?);
        let add = add.map(|(s, l)| f32_view(s, l, "conv2d")).transpose()?;
        let dx = gpu::input_grad(&s1.device, g, &dy, &w, add.as_ref())?;
        Ok((
            CudaStorage::wrap_cuda_slice(dx, s1.device.clone()),
            Shape::from((g.n, g.cin, g.h, g.w)),
        ))
    }
}

impl CustomOp2 for InputGradOp {
    fn name(&self) -> &'static str {
        "conv2d-fast-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, None)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        self.run_cuda(s1, l1, s2, l2, None)
    }
}

impl CustomOp3 for InputGradOp {
    fn name(&self) -> &'static str {
        "conv2d-fast-input-grad-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let add = contiguous(s3, l3, "added gradient", self.0.x_len())?;
        self.run(s1, l1, s2, l2, Some(add))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.run_cuda(s1, l1, s2, l2, Some((s3, l3)))
    }
}

/// (x, dy) → dw.
pub struct WeightGradOp(pub ConvOp);

impl CustomOp2 for WeightGradOp {
    fn name(&self) -> &'static str {
        "conv2d-fast-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let x = contiguous(s1, l1, "input", op.x_len())?;
        let dy = contiguous(s2, l2, "output gradient", op.y_len())?;
        let g = &op.g;
        let dw = cpu::weight_grad(g, op.isa, x, dy);
        Ok((CpuStorage::F32(dw), Shape::from((g.cout, g.cin, g.k, g.k))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        let g = &self.0.g;
        let (x, dy) = (f32_view(s1, l1, "conv2d")?, f32_view(s2, l2, "conv2d")?);
        let dw = gpu::weight_grad(&s1.device, g, &x, &dy)?;
        Ok((
            CudaStorage::wrap_cuda_slice(dw, s1.device.clone()),
            Shape::from(self.0.w_dims()),
        ))
    }
}
