//! Times the fast convolution against Candle's on the CIFAR ResNet shapes: forward, input
//! gradient and weight gradient, each as Candle's backward pass would compute it
//! (`runner bench --op conv`, [`report`]); and three tuning aids for the kernels: the speed-up
//! of all threads over one ([`threads_report`], `--op conv-threads`), single-threaded kernel
//! efficiency in CPU time with and without Winograd ([`tune_report`], `--op conv-tune`) and
//! the stride-2 phase split ([`phases_report`], `--op conv-phases`).
//!
//! The host is shared and noisy, so ours and Candle's run alternately within each repetition
//! (both see the same noise, see [`super::timing`]), the median of several repetitions is
//! reported, and a register-only FMA loop measures the machine's peak before and after the
//! table.

use std::time::Instant;

use candle_core::{Device, Tensor};

use super::timing::{alternate, median};
use crate::nn::cpu::conv::phases::{phases, unphase};
use crate::nn::cpu::conv::plan::without_winograd;
use crate::nn::cpu::conv::scratch::Scratch;
use crate::nn::cpu::conv::{ConvGeom, Isa};
use crate::nn::ops::conv::{conv2d, ConvOp, InputGradOp, WeightGradOp};
use crate::Result;

/// One shape to time: `cin` → `cout` channels on `h`×`h` maps.
pub(super) struct Case {
    pub(super) name: &'static str,
    pub(super) cin: usize,
    pub(super) cout: usize,
    pub(super) h: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
}

pub(super) const CASES: [Case; 7] = [
    Case {
        name: "3x3 16->16 @32",
        cin: 16,
        cout: 16,
        h: 32,
        k: 3,
        stride: 1,
    },
    Case {
        name: "3x3 32->32 @16",
        cin: 32,
        cout: 32,
        h: 16,
        k: 3,
        stride: 1,
    },
    Case {
        name: "3x3 64->64 @8",
        cin: 64,
        cout: 64,
        h: 8,
        k: 3,
        stride: 1,
    },
    Case {
        name: "3x3/2 16->32 @32",
        cin: 16,
        cout: 32,
        h: 32,
        k: 3,
        stride: 2,
    },
    Case {
        name: "3x3/2 32->64 @16",
        cin: 32,
        cout: 64,
        h: 16,
        k: 3,
        stride: 2,
    },
    Case {
        name: "1x1/2 16->32 @32",
        cin: 16,
        cout: 32,
        h: 32,
        k: 1,
        stride: 2,
    },
    Case {
        name: "1x1/2 32->64 @16",
        cin: 32,
        cout: 64,
        h: 16,
        k: 1,
        stride: 2,
    },
];

/// Repetitions timed per measurement (after one warm-up), of which the median is reported.
const REPS: usize = 7;

/// The three passes of a case.
const PASSES: [&str; 3] = ["fwd", "dx", "dw"];

/// A case's tensors at `batch` images and its direct convolution's floating-point operations.
struct Inputs {
    x: Tensor,
    w: Tensor,
    dy: Tensor,
    op: ConvOp,
    flop: f64,
}

impl Case {
    fn inputs(&self, batch: usize, isa: Isa) -> Result<Inputs> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (batch, self.cin, self.h, self.h), &dev)?;
        let w = Tensor::randn(0f32, 0.1, (self.cout, self.cin, self.k, self.k), &dev)?;
        let g = ConvGeom::new(batch, self.cin, self.cout, self.h, self.h, self.k, self.stride);
        let dy = Tensor::randn(0f32, 1.0, (batch, self.cout, g.ho, g.wo), &dev)?;
        let flop = 2.0 * (batch * self.cout * self.cin * self.k * self.k * g.hw()) as f64;
        Ok(Inputs {
            x,
            w,
            dy,
            op: ConvOp { g, isa },
            flop,
        })
    }
}

impl Inputs {
    /// Pass `pass` (0 forward, 1 input gradient, 2 weight gradient) of our op.
    fn ours(&self, c: &Case, pass: usize) -> candle_core::Result<Tensor> {
        match pass {
            0 => conv2d(&self.x, &self.w, c.stride, c.k / 2),
            1 => self.dy.apply_op2_no_bwd(&self.w, &InputGradOp(self.op)),
            _ => self.x.apply_op2_no_bwd(&self.dy, &WeightGradOp(self.op)),
        }
    }

    /// The same pass as Candle computes it.
    fn candle(&self, c: &Case, pass: usize) -> candle_core::Result<Tensor> {
        let (pad, g) = (c.k / 2, &self.op.g);
        match pass {
            0 => self.x.conv2d(&self.w, pad, c.stride, 1, 1),
            1 => {
                // as Candle's backward computes it
                let out_size = (g.ho - 1) * c.stride + c.k - 2 * pad;
                self.dy.conv_transpose2d(&self.w, pad, c.h - out_size, c.stride, 1)
            }
            _ => {
                let gw = self
                    .x
                    .transpose(0, 1)?
                    .conv2d(&self.dy.transpose(0, 1)?, pad, 1, c.stride, 1)?;
                gw.transpose(0, 1)?.narrow(2, 0, c.k)?.narrow(3, 0, c.k)?.contiguous()
            }
        }
    }
}

/// The cases whose name contains `only` (all for "").
fn cases(only: &str) -> Result<Vec<&'static Case>> {
    let picked: Vec<&Case> = CASES.iter().filter(|c| c.name.contains(only)).collect();
    if picked.is_empty() {
        let names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        return Err(crate::Error::Usage(format!(
            "conv bench: no shape contains `{only}`; the shapes are {}",
            names.join(", ")
        )));
    }
    Ok(picked)
}

fn check_batch(batch: usize) -> Result<()> {
    match batch {
        0 => Err(crate::Error::Usage("conv bench: batch must be at least 1".into())),
        _ => Ok(()),
    }
}

/// A table of ms and GFLOP/s for ours and Candle's, per shape (those whose name contains
/// `only`) and pass, at batch `batch`.
pub fn report(batch: usize, only: &str) -> Result<String> {
    check_batch(batch)?;
    let isa = Isa::detect();
    let threads = candle_core::utils::get_num_threads();
    let mut out = String::new();
    let peak_before = fma_peak(threads);
    out +=
        &format!("conv2d bench: batch {batch}, {threads} threads, kernels {isa:?}; median of {REPS} (ms, GFLOP/s)\n");
    out += &format!("FMA peak before: {peak_before:.0} GFLOP/s\n");
    out += &format!(
        "{:<18} {:<6} {:>9} {:>7} {:>9} {:>7} {:>7}\n",
        "shape", "pass", "ours ms", "GF/s", "candle", "GF/s", "speedup"
    );
    let (mut ours_total, mut candle_total) = (0.0, 0.0);
    for c in cases(only)? {
        let t = c.inputs(batch, isa)?;
        for (p, pass) in PASSES.iter().enumerate() {
            let mut times = alternate(
                2,
                1,
                REPS,
                |_| Ok(()),
                |v| match v {
                    0 => t.ours(c, p),
                    _ => t.candle(c, p),
                },
            )?;
            let (ta, tb) = (median(&mut times[0]), median(&mut times[1]));
            ours_total += ta;
            candle_total += tb;
            out += &format!(
                "{:<18} {:<6} {:>9.2} {:>7.1} {:>9.2} {:>7.1} {:>6.1}x\n",
                c.name,
                pass,
                ta * 1e3,
                t.flop / ta / 1e9,
                tb * 1e3,
                t.flop / tb / 1e9,
                tb / ta
            );
        }
    }
    out += &format!(
        "{:<18} {:<6} {:>9.2} {:>7} {:>9.2} {:>7} {:>6.1}x\n",
        "all",
        "",
        ours_total * 1e3,
        "",
        candle_total * 1e3,
        "",
        candle_total / ours_total
    );
    out += &format!("FMA peak after: {:.0} GFLOP/s\n", fma_peak(threads));
    Ok(out)
}

/// A rayon pool of `threads` threads.
fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| crate::Error::Other(format!("conv bench: no thread pool of {threads}: {e}")))
}

/// A tuning aid: GFLOP/s of our kernels on one thread and on all of rayon's, alternating, per
/// shape and pass (wall clock, median of [`REPS`]).
pub fn threads_report(batch: usize, only: &str) -> Result<String> {
    check_batch(batch)?;
    let isa = Isa::detect();
    let all = rayon::current_num_threads();
    let pools = [pool(1)?, pool(all)?];
    let mut out =
        format!("conv2d threads: batch {batch}, kernels {isa:?}, 1 vs {all} threads; median of {REPS} (GFLOP/s)\n");
    for c in cases(only)? {
        let t = c.inputs(batch, isa)?;
        let mut line = format!("{:<18}", c.name);
        for (p, pass) in PASSES.iter().enumerate() {
            let mut times = alternate(2, 1, REPS, |_| Ok(()), |v| pools[v].install(|| t.ours(c, p)))?;
            let (a, b) = (median(&mut times[0]), median(&mut times[1]));
            line += &format!(
                " {pass} 1t {:5.1} {all}t {:5.1} GF/s",
                t.flop / a / 1e9,
                t.flop / b / 1e9
            );
        }
        out += &line;
        out += "\n";
    }
    Ok(out)
}

/// A tuning aid for a busy host: single-threaded kernel efficiency against a single-threaded
/// FMA loop, both in CPU time (best of 5 after a warm-up: CPU time is immune to time spent
/// descheduled, so the least is the kernel's own). Passes marked (d) run with the Winograd
/// kernels switched off; the rate is the direct convolution's FLOPs over the time. The
/// measurements in `cpu::conv::winograd` were taken at batch 32.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn tune_report(batch: usize, only: &str) -> Result<String> {
    check_batch(batch)?;
    let picked = cases(only)?;
    pool(1)?.install(|| {
        let t0 = cpu_ns();
        let f = fma_loop(20_000_000);
        let peak = f / (cpu_ns() - t0) as f64;
        let mut out = format!("single-thread FMA peak {peak:.1} GFLOP/s (CPU time), batch {batch}\n");
        let isa = Isa::detect();
        for c in picked {
            let t = c.inputs(batch, isa)?;
            let mut line = format!("{:<18}", c.name);
            for (p, direct) in [(0, false), (0, true), (1, false), (1, true), (2, false), (2, true)] {
                let run = || match direct {
                    true => without_winograd(|| t.ours(c, p)),
                    false => t.ours(c, p),
                };
                run()?;
                let mut best = u64::MAX;
                for _ in 0..5 {
                    let t0 = cpu_ns();
                    run()?;
                    best = best.min(cpu_ns() - t0);
                }
                let gf = t.flop / best as f64;
                line += &format!(
                    " {:>4} {:6.1} GF/s {:3.0}%",
                    PASSES[p].to_string() + if direct { "(d)" } else { "" },
                    gf,
                    100.0 * gf / peak
                );
            }
            out += &line;
            out += "\n";
        }
        Ok(out)
    })
}

/// [`tune_report`] needs Linux's per-thread CPU clock and the x86 kernels.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn tune_report(_batch: usize, _only: &str) -> Result<String> {
    Err(crate::Error::Usage("--op conv-tune needs Linux on x86-64".into()))
}

/// A tuning aid: the time of the stride-2 phase split and of its inverse, per stride-2 shape
/// (those whose name contains `only`), median of [`REPS`] alternating.
pub fn phases_report(batch: usize, only: &str) -> Result<String> {
    check_batch(batch)?;
    let mut out = format!("stride-2 phase planes: batch {batch}; median of {REPS} (ms)\n");
    for c in cases(only)?.into_iter().filter(|c| c.stride == 2) {
        let g = ConvGeom::new(batch, c.cin, c.cout, c.h, c.h, c.k, c.stride);
        let x = vec![1f32; batch * c.cin * c.h * c.h];
        let mut store = Scratch::take();
        let buf = &mut store.0;
        let mut planes = Vec::new();
        let r = phases(&x, &g, &mut planes, 0);
        let mut times = alternate(
            2,
            1,
            REPS,
            |_| Ok::<(), crate::Error>(()),
            |v| {
                match v {
                    0 => {
                        phases(&x, &g, buf, 0);
                    }
                    _ => {
                        unphase(&planes[r.clone()], &g);
                    }
                }
                Ok(())
            },
        )?;
        let (a, b) = (median(&mut times[0]), median(&mut times[1]));
        out += &format!("{:<18} phases {:6.2} ms, unphase {:6.2} ms\n", c.name, a * 1e3, b * 1e3);
    }
    Ok(out)
}

/// GFLOP/s of a register-only FMA loop on `threads` threads at once: the most any kernel here
/// could reach right now.
pub fn fma_peak(threads: usize) -> f64 {
    const ITERS: usize = 20_000_000;
    let t = Instant::now();
    let flop: f64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads).map(|_| s.spawn(|| fma_loop(ITERS))).collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    flop / t.elapsed().as_secs_f64() / 1e9
}

/// Runs `iters` rounds of independent FMA chains; returns the floating-point operations done.
fn fma_loop(iters: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if Isa::Avx512.supported() {
            // SAFETY: AVX-512F is present (checked above)
            return unsafe { fma_avx512(iters) };
        }
        if Isa::Avx2.supported() {
            // SAFETY: AVX2 and FMA are present (checked above)
            return unsafe { fma_avx2(iters) };
        }
    }
    // A portable estimate: 8 independent scalar chains.
    let mut acc = [1.0f32; 8];
    let (m, a) = (std::hint::black_box(0.999_999f32), std::hint::black_box(1e-7f32));
    for _ in 0..iters {
        for v in &mut acc {
            *v = v.mul_add(m, a);
        }
    }
    std::hint::black_box(acc);
    (iters * 8 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn fma_avx512(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    // 12 chains: enough to cover the FMA latency (4 cycles) on two ports
    let mut acc = [_mm512_set1_ps(1.0); 12];
    let m = _mm512_set1_ps(std::hint::black_box(0.999_999));
    let a = _mm512_set1_ps(std::hint::black_box(1e-7));
    for _ in 0..iters / 4 {
        for _ in 0..4 {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, m, a);
            }
        }
    }
    std::hint::black_box(&acc);
    ((iters / 4) * 4 * 12 * 16 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    // 12 chains, as for AVX-512, in 16 ymm registers
    let mut acc = [_mm256_set1_ps(1.0); 12];
    let m = _mm256_set1_ps(std::hint::black_box(0.999_999));
    let a = _mm256_set1_ps(std::hint::black_box(1e-7));
    for _ in 0..iters / 4 {
        for _ in 0..4 {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, m, a);
            }
        }
    }
    std::hint::black_box(&acc);
    ((iters / 4) * 4 * 12 * 8 * 2) as f64
}

/// Nanoseconds this thread has run on a CPU (Linux): immune to time spent descheduled.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill in
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
