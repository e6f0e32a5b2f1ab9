//! The ops on a device (cuDNN and our kernels on a GPU, our kernels on the CPU) checked against
//! Candle's ops on the CPU, then timed against Candle's own on the same device: `runner bench
//! --op conv` and `--op batchnorm` with `--device cuda:N` print these tables ([`conv_report`],
//! [`batchnorm_report`]). A wrong pass is flagged FAIL, never just fast.

use candle_core::{DType, Device, Result, Tensor, Var};

use super::conv::CASES;
use super::timing::{alternate, median};
use crate::nn::ops::batchnorm::{batch_norm, batch_norm_slow};
use crate::nn::ops::conv::{conv2d, conv2d_slow};

/// Timed runs per measurement (after [`WARM_UP`] untimed ones); the median is reported.
const RUNS: usize = 20;
const WARM_UP: usize = 3;
/// The largest scaled error (max |a − e| / max(1, max |e|)) that still counts as correct:
/// sums of up to 64·9 products forward and of batch·H·W products for the weight gradient and
/// the batch statistics, in another order than the oracle's.
const TOLERANCE: f32 = 1e-4;

/// Convolution shapes besides the CIFAR stages: the stem (3 channels in), odd sizes with stride 2.
const ODD: [(&str, usize, usize, usize, usize, usize); 3] = [
    ("3x3 3->16 @32", 3, 16, 32, 3, 1),
    ("3x3/2 16->32 @33", 16, 32, 33, 3, 2),
    ("1x1/2 16->32 @31", 16, 32, 31, 1, 2),
];

/// The convolution on `device` against the CPU oracle (y, dx, dw of L = Σ conv(x, w) · r) and
/// timed against Candle's on `device`, for every CIFAR ResNet shape and a few odd ones, at
/// `batch` images.
pub fn conv_report(device: &Device, batch: usize) -> Result<String> {
    let mut t = Table::new(format!("conv2d on {device:?} vs Candle's, batch {batch}"), "y, dx, dw");
    let cases = CASES
        .iter()
        .map(|c| (c.name, c.cin, c.cout, c.h, c.k, c.stride))
        .chain(ODD);
    for (name, cin, cout, h, k, stride) in cases {
        let x = Tensor::randn(0f32, 1., (batch, cin, h, h), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 0.2, (cout, cin, k, k), &Device::Cpu)?;
        let values = |op: fn(&Tensor, &Tensor, usize, usize) -> Result<Tensor>, dev: &Device| {
            let (xv, wv) = (
                Var::from_tensor(&x.to_device(dev)?)?,
                Var::from_tensor(&w.to_device(dev)?)?,
            );
            let y = op(xv.as_tensor(), wv.as_tensor(), stride, k / 2)?;
            values_and_grads(&y, &[&xv, &wv])
        };
        let error = scaled_errors(&values(conv2d, device)?, &values(conv2d_slow, &Device::Cpu)?)?;
        let (xv, wv) = (
            Var::from_tensor(&x.to_device(device)?)?,
            Var::from_tensor(&w.to_device(device)?)?,
        );
        let ops = [conv2d, conv2d_slow];
        t.row(name, error, device, |v, backward| {
            let y = ops[v](xv.as_tensor(), wv.as_tensor(), stride, k / 2)?;
            if backward {
                y.sum_all()?.backward()?;
            }
            Ok(())
        })?;
    }
    Ok(t.finish())
}

/// Batch-norm shapes (channels, H = W): the CIFAR stages and an odd one.
const BN_SHAPES: [(usize, usize); 4] = [(16, 32), (32, 16), (64, 8), (3, 7)];

/// Batch normalisation (train and eval mode, with and without ReLU) on `device` against Candle's
/// `BatchNorm` on the CPU (y, dx, dγ, dβ and the running statistics after the step) and timed
/// against it on `device`, at `batch` images.
pub fn batchnorm_report(device: &Device, batch: usize) -> Result<String> {
    let mut t = Table::new(
        format!("batch_norm on {device:?} vs Candle's, batch {batch}"),
        "y, dx, dgamma, dbeta, running mean and var",
    );
    type Bn = fn(&Tensor, &Tensor, &Tensor, &Var, &Var, bool, bool) -> Result<Tensor>;
    for (c, h) in BN_SHAPES {
        let x = (Tensor::randn(0f32, 2., (batch, c, h, h), &Device::Cpu)? + 0.5)?;
        let gamma = Tensor::randn(1f32, 0.2, c, &Device::Cpu)?;
        let beta = Tensor::randn(0f32, 0.2, c, &Device::Cpu)?;
        for (train, relu) in [(true, false), (true, true), (false, true)] {
            if train && batch * h * h < 2 {
                continue;
            }
            let vars = |dev: &Device| -> Result<[Var; 5]> {
                let var = |t: &Tensor| Var::from_tensor(&t.to_device(dev)?);
                let rm = Var::from_tensor(&Tensor::full(0.1f32, c, dev)?)?;
                let rv = Var::from_tensor(&Tensor::full(1.5f32, c, dev)?)?;
                Ok([var(&x)?, var(&gamma)?, var(&beta)?, rm, rv])
            };
            let values = |op: Bn, dev: &Device| -> Result<Vec<Tensor>> {
                let [xv, g, b, rm, rv] = vars(dev)?;
                let y = op(xv.as_tensor(), g.as_tensor(), b.as_tensor(), &rm, &rv, train, relu)?;
                let mut out = values_and_grads(&y, &[&xv, &g, &b])?;
                out.extend([
                    rm.as_tensor().to_device(&Device::Cpu)?,
                    rv.as_tensor().to_device(&Device::Cpu)?,
                ]);
                Ok(out)
            };
            let error = scaled_errors(&values(batch_norm, device)?, &values(batch_norm_slow, &Device::Cpu)?)?;
            let [xv, g, b, rm, rv] = vars(device)?;
            let ops: [Bn; 2] = [batch_norm, batch_norm_slow];
            let mode = if train { "train" } else { "eval" };
            let name = format!("{c}x{h}x{h} {mode}{}", if relu { "+relu" } else { "" });
            t.row(&name, error, device, |v, backward| {
                let y = ops[v](xv.as_tensor(), g.as_tensor(), b.as_tensor(), &rm, &rv, train, relu)?;
                if backward {
                    y.sum_all()?.backward()?;
                }
                Ok(())
            })?;
        }
    }
    Ok(t.finish())
}

/// y and the gradients of `inputs` (flattened, on the CPU) of L = Σ y · r, with r_i = sin(i):
/// the same on every device, no random state shared between the two runs.
pub(super) fn values_and_grads(y: &Tensor, inputs: &[&Var]) -> Result<Vec<Tensor>> {
    let n = y.elem_count();
    let r = Tensor::arange(0u32, n as u32, &Device::Cpu)?
        .to_dtype(DType::F32)?
        .sin()?
        .reshape(y.dims())?
        .to_device(y.device())?;
    let grads = (y * r)?.sum_all()?.backward()?;
    let mut out = vec![y.flatten_all()?.to_device(&Device::Cpu)?];
    for v in inputs {
        match grads.get(v.as_tensor()) {
            Some(g) => out.push(g.flatten_all()?.to_device(&Device::Cpu)?),
            None => candle_core::bail!("device bench: no gradient reached an input"),
        }
    }
    Ok(out)
}

/// The largest [`scaled_error`] over the tensors, pairwise.
fn scaled_errors(actual: &[Tensor], expected: &[Tensor]) -> Result<f32> {
    let mut error = if actual.len() == expected.len() {
        0f32
    } else {
        f32::INFINITY
    };
    for (a, e) in actual.iter().zip(expected) {
        error = error.max(scaled_error(a, e)?);
    }
    Ok(error)
}

/// max |a − e| / max(1, max |e|): the error against the tensor's own scale, so that sums of
/// many terms near zero are not judged by their relative error.
fn scaled_error(a: &Tensor, e: &Tensor) -> Result<f32> {
    let (a, e) = (a.to_vec1::<f32>()?, e.to_vec1::<f32>()?);
    if a.len() != e.len() {
        return Ok(f32::INFINITY);
    }
    let scale = e.iter().fold(1f32, |m, v| m.max(v.abs()));
    Ok(a.iter().zip(&e).map(|(a, e)| (a - e).abs()).fold(0f32, f32::max) / scale)
}

/// A checked and timed table: a header, a row per case, a verdict.
struct Table {
    s: String,
    failures: usize,
}

impl Table {
    fn new(title: String, checked: &str) -> Table {
        let mut s = format!("{title}, median of {RUNS} runs (ms)\n");
        s += &format!(
            "error: max over {checked} of max|a-e|/max(1,max|e|), ours on the device (a) vs Candle's on the CPU (e); \
             f+b: forward and backward from the sum\n"
        );
        s += &format!(
            "{:<20} {:>9} {:>4} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6}\n",
            "shape", "error", "ok", "fwd", "candle", "speed", "f+b", "candle", "speed"
        );
        Table { s, failures: 0 }
    }

    /// A row: `error`, then `run(variant, backward)` timed for ours (variant 0) and Candle's
    /// (1) in turn, forward alone and with the backward pass, the device synchronised before
    /// each clock reading.
    fn row(&mut self, name: &str, error: f32, device: &Device, run: impl Fn(usize, bool) -> Result<()>) -> Result<()> {
        self.failures += usize::from(error >= TOLERANCE || error.is_nan());
        let sync = |_: usize| device.synchronize();
        let time = |backward| -> Result<(f64, f64)> {
            let mut t = alternate(2, WARM_UP, RUNS, sync, |v| {
                run(v, backward)?;
                device.synchronize()
            })?;
            Ok((median(&mut t[0]), median(&mut t[1])))
        };
        let ((f, fc), (b, bc)) = (time(false)?, time(true)?);
        self.s += &format!(
            "{:<20} {:>9.2e} {:>4} | {:>8.3} {:>8.3} {:>5.2}x | {:>8.3} {:>8.3} {:>5.2}x\n",
            name,
            error,
            if error < TOLERANCE { "ok" } else { "FAIL" },
            f * 1e3,
            fc * 1e3,
            fc / f,
            b * 1e3,
            bc * 1e3,
            bc / b,
        );
        Ok(())
    }

    fn finish(mut self) -> String {
        self.s += &match self.failures {
            0 => "all cases correct\n".to_string(),
            n => format!("FAIL: {n} case(s) beyond tolerance {TOLERANCE:e}\n"),
        };
        self.s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_error_is_against_the_largest_value() -> Result<()> {
        let e = Tensor::new(&[0.0f32, 10.0], &Device::Cpu)?;
        let a = Tensor::new(&[0.5f32, 10.0], &Device::Cpu)?;
        assert_eq!(scaled_error(&a, &e)?, 0.05);
        let short = Tensor::new(&[0.0f32], &Device::Cpu)?;
        assert_eq!(scaled_error(&short, &e)?, f32::INFINITY);
        assert_eq!(scaled_errors(std::slice::from_ref(&a), &[a.clone(), e])?, f32::INFINITY);
        Ok(())
    }

    fn rows(table: &str) -> usize {
        table.lines().filter(|l| l.contains(" | ")).count() - 1
    }

    /// The whole tables on one image (two for the batch norm): every case runs, and the CPU ops
    /// pass the check the GPU's are held to.
    #[test]
    fn reports_cover_every_case_and_pass_on_the_cpu() -> Result<()> {
        let table = conv_report(&Device::Cpu, 1)?;
        assert_eq!(rows(&table), CASES.len() + ODD.len(), "{table}");
        assert!(
            !table.contains("FAIL") && table.contains("all cases correct"),
            "{table}"
        );
        let table = batchnorm_report(&Device::Cpu, 2)?;
        assert_eq!(rows(&table), 3 * BN_SHAPES.len(), "{table}");
        assert!(
            !table.contains("FAIL") && table.contains("all cases correct"),
            "{table}"
        );
        Ok(())
    }

    /// A result 1% off is caught.
    #[test]
    fn a_wrong_result_is_beyond_tolerance() -> Result<()> {
        let x = Tensor::randn(0f32, 1., (1, 4, 8, 8), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 0.2, (4, 4, 3, 3), &Device::Cpu)?;
        let a = conv2d(&x, &w, 1, 1)?.flatten_all()?;
        let e = conv2d_slow(&(&x * 1.01)?, &w, 1, 1)?.flatten_all()?;
        assert!(scaled_error(&a, &e)? >= TOLERANCE);
        Ok(())
    }
}
