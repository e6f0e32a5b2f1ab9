//! The fused residual op measured against the composed one: a correctness check and a timing table.
//!
//! [`report`] runs on any device. On the CPU it is the fused-vs-composed benchmark; on a GPU it
//! also checks the CUDA kernels against the CPU reference before timing them (a wrong kernel is
//! flagged FAIL, never just fast). `runner bench --op residual` prints it.

use candle_core::{Device, Result, Tensor, Var};

use super::device::values_and_grads;
use super::timing::{alternate, median};
use crate::nn::ops::residual::{residual, residual_slow, Addend};

/// Timed runs per measurement (after [`WARM_UP`] untimed ones), the fused and the composed op
/// taking turns; the median is reported.
const RUNS: usize = 20;
const WARM_UP: usize = 3;
/// The largest relative error (|a − e| / max(1, |e|)) that still counts as correct.
const TOLERANCE: f32 = 1e-5;

/// One residual addition of a CIFAR ResNet: branch (c_out, h_out, w_out), x (c_in, h, w).
struct Case {
    branch: (usize, usize, usize),
    x: (usize, usize, usize),
    shortcut: Addend,
}

/// The additions of every CIFAR ResNet stage: the identity in each stage, option A between stages.
const CASES: [Case; 5] = [
    Case {
        branch: (16, 32, 32),
        x: (16, 32, 32),
        shortcut: Addend::Identity,
    },
    Case {
        branch: (32, 16, 16),
        x: (32, 16, 16),
        shortcut: Addend::Identity,
    },
    Case {
        branch: (64, 8, 8),
        x: (64, 8, 8),
        shortcut: Addend::Identity,
    },
    Case {
        branch: (32, 16, 16),
        x: (16, 32, 32),
        shortcut: Addend::SubsamplePad,
    },
    Case {
        branch: (64, 8, 8),
        x: (32, 16, 16),
        shortcut: Addend::SubsamplePad,
    },
];

type Op = fn(&Tensor, &Tensor, Addend, bool) -> Result<Tensor>;

/// The fused op's error and timings on `device` for every CIFAR stage shape at `batch` images,
/// with and without ReLU, as a plain-text table.
///
/// Conventions, also printed with the table:
/// - error: max over out, d_branch and d_x of |a − e| / max(1, |e|), the op on `device` (a) against
///   [`residual_slow`] on the CPU (e), upstream gradient r_i = sin(i);
/// - times: median of [`RUNS`] in ms, the fused and the composed op alternating, the device
///   synchronised before each clock reading;
///   "fwd+bwd" is the forward plus `backward()` from the output (upstream gradient ones);
/// - GB/s: bytes that must move / fused time, f32. Forward: branch, the x elements actually used
///   (for option A the subsampled quarter) and out. Backward: grad, out (with ReLU, for the mask),
///   d_branch and, for option A, all of d_x (its zeros are written too); the identity's d_x is
///   d_branch itself, and without ReLU the backward moves nothing.
pub fn report(device: &Device, batch: usize) -> Result<String> {
    let mut s = format!("fused residual op vs composed, device {device:?}, batch {batch}, median of {RUNS} runs\n");
    s += "error: max |a-e|/max(1,|e|) over out, d_branch, d_x vs CPU residual_slow; GB/s: fused op, \
          bytes = read branch + used x + write out (bwd: read grad [+ out] + write d_branch [+ d_x for A])\n";
    s += &format!(
        "{:<22} {:<4} {:>9} {:>4} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} | {:>7} {:>7}\n",
        "shape",
        "relu",
        "error",
        "ok",
        "fwd ms",
        "comp ms",
        "speed",
        "f+b ms",
        "comp ms",
        "speed",
        "fwd GB/s",
        "f+b GB/s"
    );
    let mut failures = 0;
    for case in &CASES {
        for relu in [false, true] {
            let row = measure(device, batch, case, relu)?;
            failures += usize::from(row.error >= TOLERANCE);
            let shape = match case.shortcut {
                Addend::Identity => dims(case.branch),
                Addend::SubsamplePad => format!("{}->{}", dims(case.x), dims(case.branch)),
            };
            s += &format!(
                "{:<22} {:<4} {:>9.2e} {:>4} | {:>9.3} {:>9.3} {:>5.2}x | {:>9.3} {:>9.3} {:>5.2}x | {:>8.1} {:>8.1}\n",
                shape,
                if relu { "yes" } else { "no" },
                row.error,
                if row.error < TOLERANCE { "ok" } else { "FAIL" },
                row.fused_fwd * 1e3,
                row.slow_fwd * 1e3,
                row.slow_fwd / row.fused_fwd,
                row.fused_both * 1e3,
                row.slow_both * 1e3,
                row.slow_both / row.fused_both,
                row.fwd_bytes / row.fused_fwd / 1e9,
                (row.fwd_bytes + row.bwd_bytes) / row.fused_both / 1e9,
            );
        }
    }
    s += &if failures == 0 {
        "all cases correct\n".to_string()
    } else {
        format!("FAIL: {failures} case(s) beyond tolerance {TOLERANCE:e}\n")
    };
    Ok(s)
}

fn dims((c, h, w): (usize, usize, usize)) -> String {
    format!("{c}x{h}x{w}")
}

/// One table row; times in seconds.
struct Row {
    error: f32,
    fused_fwd: f64,
    slow_fwd: f64,
    fused_both: f64,
    slow_both: f64,
    fwd_bytes: f64,
    bwd_bytes: f64,
}

fn measure(device: &Device, batch: usize, case: &Case, relu: bool) -> Result<Row> {
    let (c_out, h_out, w_out) = case.branch;
    let (c_in, h, w) = case.x;
    let b_shape = (batch, c_out, h_out, w_out);
    let x_shape = (batch, c_in, h, w);
    let b = Tensor::randn(0f32, 1., b_shape, &Device::Cpu)?;
    let x = Tensor::randn(0f32, 1., x_shape, &Device::Cpu)?;

    // out, d_branch and d_x of L = Σ op(b, x) · r, on `dev`
    let values = |op: Op, dev: &Device| {
        let (bv, xv) = (
            Var::from_tensor(&b.to_device(dev)?)?,
            Var::from_tensor(&x.to_device(dev)?)?,
        );
        let y = op(bv.as_tensor(), xv.as_tensor(), case.shortcut, relu)?;
        values_and_grads(&y, &[&bv, &xv])
    };
    let expected = values(residual_slow, &Device::Cpu)?;
    let on_device = |t: &Tensor| t.to_device(device);
    let actual = values(residual, device)?;
    let mut error = 0f32;
    for (a, e) in actual.iter().zip(&expected) {
        error = error.max(relative_error(a, e)?);
    }

    let (bv, xv) = (Var::from_tensor(&on_device(&b)?)?, Var::from_tensor(&on_device(&x)?)?);
    let (bt, xt) = (bv.as_tensor(), xv.as_tensor());
    // fused and composed in turn; NVRTC compilation, allocator pools and caches all settle
    // in the warm-up
    let ops: [Op; 2] = [residual, residual_slow];
    let sync = |_: usize| device.synchronize();
    let mut fwd = alternate(2, WARM_UP, RUNS, sync, |v| {
        ops[v](bt, xt, case.shortcut, relu).map(drop)?;
        device.synchronize()
    })?;
    let mut both = alternate(2, WARM_UP, RUNS, sync, |v| {
        ops[v](bt, xt, case.shortcut, relu)?.backward().map(drop)?;
        device.synchronize()
    })?;

    let f32_bytes = |n: usize| (4 * n) as f64;
    let out_len = batch * c_out * h_out * w_out;
    let x_used = match case.shortcut {
        Addend::Identity => batch * c_in * h * w,
        Addend::SubsamplePad => batch * c_in * h_out * w_out,
    };
    // The backward's traffic: identity without ReLU passes the gradient on with no pass at all;
    // identity with ReLU writes d_branch once (it is d_x too); option A writes all of d_x.
    let bwd_len = match (case.shortcut, relu) {
        (Addend::Identity, false) => 0,
        (Addend::Identity, true) => 3 * out_len,
        (Addend::SubsamplePad, _) => out_len * (2 + usize::from(relu)) + batch * c_in * h * w,
    };
    Ok(Row {
        error,
        fused_fwd: median(&mut fwd[0]),
        slow_fwd: median(&mut fwd[1]),
        fused_both: median(&mut both[0]),
        slow_both: median(&mut both[1]),
        fwd_bytes: f32_bytes(out_len + x_used + out_len),
        bwd_bytes: f32_bytes(bwd_len),
    })
}

/// max |a − e| / max(1, |e|): relative for large values, absolute near zero where a relative
/// error means nothing.
fn relative_error(a: &Tensor, e: &Tensor) -> Result<f32> {
    let (a, e) = (a.to_vec1::<f32>()?, e.to_vec1::<f32>()?);
    if a.len() != e.len() {
        return Ok(f32::INFINITY);
    }
    Ok(a.iter()
        .zip(&e)
        .map(|(a, e)| (a - e).abs() / e.abs().max(1.0))
        .fold(0f32, f32::max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_is_absolute_below_one() -> Result<()> {
        let e = Tensor::new(&[0.0f32, 10.0], &Device::Cpu)?;
        let a = Tensor::new(&[0.5f32, 11.0], &Device::Cpu)?;
        assert_eq!(relative_error(&a, &e)?, 0.5);
        let a = Tensor::new(&[0.25f32, 14.0], &Device::Cpu)?;
        assert!((relative_error(&a, &e)? - 0.4).abs() < 1e-6);
        Ok(())
    }

    /// The full table on a tiny batch: every case runs, and the CPU op passes its own check.
    #[test]
    fn report_covers_every_case_and_passes_on_the_cpu() -> Result<()> {
        let table = report(&Device::Cpu, 1)?;
        assert_eq!(
            table.lines().filter(|l| l.contains(" | ")).count(),
            1 + 2 * CASES.len(),
            "{table}"
        );
        assert!(!table.contains("FAIL"), "{table}");
        assert!(table.contains("16x32x32->32x16x16"), "{table}");
        Ok(())
    }
}
