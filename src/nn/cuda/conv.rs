//! cuDNN convolutions of f32 NCHW tensors: the forward pass, the input gradient (cuDNN's
//! "backward data") and the weight gradient ("backward filter"), for the shapes
//! [`ConvGeom`] describes (3×3 with padding 1 or 1×1 with padding 0, stride 1 or 2).
//!
//! Per device and shape, the descriptors and the three passes' algorithms are made once and
//! kept; the workspace is one buffer per device, grown to the largest any algorithm asked for
//! and kept, so a warmed-up training step allocates nothing here but its outputs. cuDNN handles
//! are not `Send`, so all of this is per thread: a trial trains on one thread.
//!
//! Numerics, chosen so that a GPU trial means what a CPU trial means:
//! - strict fp32 (`CUDNN_FMA_MATH`): no TF32 tensor-core rounding, which cuDNN's default math
//!   would allow on Ampere and later (PyTorch allows it by default too; mixed precision is a
//!   setting of its own);
//! - deterministic algorithms only for the gradients: cuDNN's backward-data `ALGO_0` and
//!   backward-filter `ALGO_0`/`ALGO_3` sum with atomics, in an order that changes from run to
//!   run, so where the heuristics pick one of them `ALGO_1` runs instead. A trial's numbers
//!   then do not depend on what else runs on the card.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::cudnn::safe::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor, TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::cudnn::sys::{
    cudnnConvolutionBwdDataAlgo_t as DataAlgo, cudnnConvolutionBwdFilterAlgo_t as FilterAlgo,
    cudnnConvolutionFwdAlgo_t as FwdAlgo, cudnnConvolutionMode_t, cudnnMathType_t, cudnnTensorFormat_t,
};
use candle_core::cuda_backend::cudarc::cudnn::CudnnError;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::Result;

use crate::nn::cpu::conv::ConvGeom;

/// `out = conv(x, w)`: x (N, C_in, H, W), w (C_out, C_in, k, k) → (N, C_out, H', W').
pub fn forward(dev: &CudaDevice, g: &ConvGeom, x: &CudaView<'_, f32>, w: &CudaView<'_, f32>) -> Result<CudaSlice<f32>> {
    check(g, &[("input", x.len(), x_len(g)), ("weight", w.len(), w_len(g))])?;
    // SAFETY: cuDNN writes every output element (beta = 0 never reads it).
    let mut y = unsafe { dev.alloc::<f32>(y_len(g))? };
    with_plan(dev, g, |p, ws| {
        let op = ConvForward {
            conv: &p.conv,
            x: &p.x,
            w: &p.w,
            y: &p.y,
        };
        // SAFETY: the buffers hold f32 NCHW data of the shapes the descriptors were made from
        // (lengths checked above); the workspace is at least the algorithm's size.
        unsafe { op.launch(p.fwd, ws, (1.0, 0.0), x, w, &mut y) }.map_err(|e| err("forward", g, e))
    })?;
    Ok(y)
}

/// `dx = conv_transpose(dy, w)`, or `dx + add` where `add` (the input's shape) is given: cuDNN
/// adds it in the same pass (beta = 1 over a copy of it).
pub fn input_grad(
    dev: &CudaDevice,
    g: &ConvGeom,
    dy: &CudaView<'_, f32>,
    w: &CudaView<'_, f32>,
    add: Option<&CudaView<'_, f32>>,
) -> Result<CudaSlice<f32>> {
    check(
        g,
        &[("output gradient", dy.len(), y_len(g)), ("weight", w.len(), w_len(g))],
    )?;
    let (mut dx, beta) = match add {
        Some(a) => {
            check(g, &[("added gradient", a.len(), x_len(g))])?;
            (dev.cuda_stream().clone_dtod(a).map_err(candle_core::Error::wrap)?, 1.0)
        }
        // SAFETY: cuDNN writes every element (beta = 0 never reads it).
        None => (unsafe { dev.alloc::<f32>(x_len(g))? }, 0.0),
    };
    with_plan(dev, g, |p, ws| {
        let op = ConvBackwardData {
            conv: &p.conv,
            dx: &p.x,
            w: &p.w,
            dy: &p.y,
        };
        // SAFETY: as in `forward`; dx holds `add` where beta = 1.
        unsafe { op.launch(p.data, ws, (1.0, beta), &mut dx, w, dy) }.map_err(|e| err("input gradient", g, e))
    })?;
    Ok(dx)
}

/// `dw = Σ_n x ⋆ dy`, the weight's gradient.
pub fn weight_grad(
    dev: &CudaDevice,
    g: &ConvGeom,
    x: &CudaView<'_, f32>,
    dy: &CudaView<'_, f32>,
) -> Result<CudaSlice<f32>> {
    check(
        g,
        &[("input", x.len(), x_len(g)), ("output gradient", dy.len(), y_len(g))],
    )?;
    // SAFETY: cuDNN writes every element (beta = 0 never reads it).
    let mut dw = unsafe { dev.alloc::<f32>(w_len(g))? };
    with_plan(dev, g, |p, ws| {
        let op = ConvBackwardFilter {
            conv: &p.conv,
            x: &p.x,
            dw: &p.w,
            dy: &p.y,
        };
        // SAFETY: as in `forward`.
        unsafe { op.launch(p.filter, ws, (1.0, 0.0), x, &mut dw, dy) }.map_err(|e| err("weight gradient", g, e))
    })?;
    Ok(dw)
}

fn x_len(g: &ConvGeom) -> usize {
    g.n * g.cin * g.h * g.w
}
fn w_len(g: &ConvGeom) -> usize {
    g.cout * g.cin * g.k * g.k
}
fn y_len(g: &ConvGeom) -> usize {
    g.n * g.cout * g.hw()
}

/// The lengths against `g` (see [`super::check_lens`]).
fn check(g: &ConvGeom, lens: &[(&str, usize, usize)]) -> Result<()> {
    super::check_lens("conv2d (cuDNN)", g, lens)
}

fn err(pass: &str, g: &ConvGeom, e: CudnnError) -> candle_core::Error {
    candle_core::Error::Msg(format!("conv2d (cuDNN) {pass} of {g:?}: {e:?}"))
}

/// One shape's descriptors and, per pass, the algorithm and the workspace bytes it needs.
struct Plan {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<f32>,
    w: FilterDescriptor<f32>,
    y: TensorDescriptor<f32>,
    fwd: FwdAlgo,
    data: DataAlgo,
    filter: FilterAlgo,
    /// The most workspace any of the three algorithms needs.
    workspace: usize,
}

impl Plan {
    fn new(cudnn: &Arc<Cudnn>, g: &ConvGeom) -> std::result::Result<Plan, CudnnError> {
        let pad = (g.k as i32 - 1) / 2;
        let s = g.stride as i32;
        let mut conv = cudnn.create_conv2d::<f32>(
            [pad, pad],
            [s, s],
            [1, 1],
            cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )?;
        conv.set_math_type(cudnnMathType_t::CUDNN_FMA_MATH)?;
        let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let d = |v: usize| v as i32; // `dims` checked that every size fits
        let x = cudnn.create_4d_tensor::<f32>(nchw, [d(g.n), d(g.cin), d(g.h), d(g.w)])?;
        let w = cudnn.create_4d_filter::<f32>(nchw, [d(g.cout), d(g.cin), d(g.k), d(g.k)])?;
        let y = cudnn.create_4d_tensor::<f32>(nchw, [d(g.n), d(g.cout), d(g.ho), d(g.wo)])?;

        let f = ConvForward {
            conv: &conv,
            x: &x,
            w: &w,
            y: &y,
        };
        let fwd = f.pick_algorithm()?;
        let fwd_ws = f.get_workspace_size(fwd)?;

        let b = ConvBackwardData {
            conv: &conv,
            dx: &x,
            w: &w,
            dy: &y,
        };
        let data = match b.pick_algorithm()? {
            DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 => DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
            a => a,
        };
        let (data, data_ws) = match b.get_workspace_size(data) {
            Ok(bytes) => (data, bytes),
            Err(_) => {
                let a = DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
                (a, b.get_workspace_size(a)?)
            }
        };

        let b = ConvBackwardFilter {
            conv: &conv,
            x: &x,
            dw: &w,
            dy: &y,
        };
        let filter = match b.pick_algorithm()? {
            FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 | FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3 => {
                FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1
            }
            a => a,
        };
        let (filter, filter_ws) = match b.get_workspace_size(filter) {
            Ok(bytes) => (filter, bytes),
            Err(_) => {
                let a = FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;
                (a, b.get_workspace_size(a)?)
            }
        };
        Ok(Plan {
            conv,
            x,
            w,
            y,
            fwd,
            data,
            filter,
            workspace: fwd_ws.max(data_ws).max(filter_ws),
        })
    }
}

/// A device's cuDNN handle (on Candle's stream), its plans and its workspace.
struct DeviceState {
    cudnn: Arc<Cudnn>,
    plans: HashMap<ConvGeom, Plan>,
    workspace: Option<CudaSlice<u8>>,
}

thread_local! {
    static DEVICES: RefCell<HashMap<DeviceId, DeviceState>> = RefCell::new(HashMap::new());
}

/// Runs `f` with `g`'s plan on `dev` and a workspace of at least the plan's size (None where it
/// needs none), making either on first use.
fn with_plan(
    dev: &CudaDevice,
    g: &ConvGeom,
    f: impl FnOnce(&Plan, Option<&mut CudaSlice<u8>>) -> Result<()>,
) -> Result<()> {
    dims(g)?;
    DEVICES.with(|devices| {
        let mut devices = devices.borrow_mut();
        let state = match devices.entry(dev.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(DeviceState {
                cudnn: Cudnn::new(dev.cuda_stream()).map_err(|e| candle_core::Error::Msg(format!("cuDNN: {e:?}")))?,
                plans: HashMap::new(),
                workspace: None,
            }),
        };
        let plan = match state.plans.entry(*g) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Plan::new(&state.cudnn, g).map_err(|e| err("set-up", g, e))?)
            }
        };
        if plan.workspace == 0 {
            return f(plan, None);
        }
        if state.workspace.as_ref().is_none_or(|w| w.len() < plan.workspace) {
            // The old buffer is freed in stream order, after the work that uses it.
            state.workspace = Some(dev.alloc_zeros::<u8>(plan.workspace)?);
        }
        f(plan, state.workspace.as_mut())
    })
}

/// cuDNN takes sizes as i32.
fn dims(g: &ConvGeom) -> Result<()> {
    for v in [g.n, g.cin, g.cout, g.h, g.w, g.k, g.stride] {
        if i32::try_from(v).is_err() {
            candle_core::bail!("conv2d (cuDNN): dimension {v} of {g:?} is too large");
        }
    }
    Ok(())
}
