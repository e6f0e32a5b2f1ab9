//! Times the fast convolution against Candle's on the CIFAR ResNet shapes: forward, input
//! gradient and weight gradient, each as Candle's backward pass would compute it.
//!
//! The host is shared and noisy, so ours and Candle's run alternately within each repetition
//! (both see the same noise), the median of several repetitions is reported, and a
//! register-only FMA loop measures the machine's peak before and after the table.

use std::time::Instant;

use candle_core::{Device, Tensor};

use super::{conv2d, ConvOp, Geom, InputGradOp, Isa, WeightGradOp};
use crate::Result;

/// One shape to time: `cin` → `cout` channels on `h`×`h` maps.
struct Case {
    name: &'static str,
    cin: usize,
    cout: usize,
    h: usize,
    k: usize,
    stride: usize,
}

const CASES: [Case; 7] = [
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

/// A table of ms and GFLOP/s for ours and Candle's, per shape and pass, at batch `batch`.
pub fn bench_report(batch: usize) -> Result<String> {
    if batch == 0 {
        return Err(crate::Error::Usage("conv bench: batch must be at least 1".into()));
    }
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
    for c in &CASES {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (batch, c.cin, c.h, c.h), &dev)?;
        let w = Tensor::randn(0f32, 0.1, (c.cout, c.cin, c.k, c.k), &dev)?;
        let pad = c.k / 2;
        let g = Geom::new(batch, c.cin, c.cout, c.h, c.h, c.k, c.stride);
        let dy = Tensor::randn(0f32, 1.0, (batch, c.cout, g.ho, g.wo), &dev)?;
        let op = ConvOp { g, isa };
        let flop = 2.0 * (batch * c.cout * c.cin * c.k * c.k * g.hw()) as f64;
        type Pass<'a> = Box<dyn Fn() -> candle_core::Result<Tensor> + 'a>;
        let passes: [(&str, Pass, Pass); 3] = [
            (
                "fwd",
                Box::new(|| conv2d(&x, &w, c.stride, pad)),
                Box::new(|| x.conv2d(&w, pad, c.stride, 1, 1)),
            ),
            (
                "dx",
                Box::new(|| dy.apply_op2_no_bwd(&w, &InputGradOp(op))),
                Box::new(|| {
                    // as Candle's backward computes it
                    let out_size = (g.ho - 1) * c.stride + c.k - 2 * pad;
                    dy.conv_transpose2d(&w, pad, c.h - out_size, c.stride, 1)
                }),
            ),
            (
                "dw",
                Box::new(|| x.apply_op2_no_bwd(&dy, &WeightGradOp(op))),
                Box::new(|| {
                    let gw = x.transpose(0, 1)?.conv2d(&dy.transpose(0, 1)?, pad, 1, c.stride, 1)?;
                    gw.transpose(0, 1)?.narrow(2, 0, c.k)?.narrow(3, 0, c.k)?.contiguous()
                }),
            ),
        ];
        for (pass, ours, theirs) in &passes {
            ours()?;
            theirs()?;
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..REPS {
                a.push(time(ours)?);
                b.push(time(theirs)?);
            }
            let (ta, tb) = (median(&mut a), median(&mut b));
            ours_total += ta;
            candle_total += tb;
            out += &format!(
                "{:<18} {:<6} {:>9.2} {:>7.1} {:>9.2} {:>7.1} {:>6.1}x\n",
                c.name,
                pass,
                ta * 1e3,
                flop / ta / 1e9,
                tb * 1e3,
                flop / tb / 1e9,
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

/// Seconds one call takes.
fn time(f: &dyn Fn() -> candle_core::Result<Tensor>) -> candle_core::Result<f64> {
    let t = Instant::now();
    let y = f()?;
    let s = t.elapsed().as_secs_f64();
    drop(y);
    Ok(s)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }

    #[cfg(target_os = "linux")]
    extern "C" {
        // from the C library std already links; a dependency for one test-only call is not worth it
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }

    /// Nanoseconds this thread has run on a CPU (Linux): immune to time spent descheduled.
    #[cfg(target_os = "linux")]
    fn cpu_ns() -> u64 {
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: `ts` is a valid timespec for the call to fill in
        unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.sec as u64 * 1_000_000_000 + ts.nsec as u64
    }

    #[test]
    #[ignore = "a tuning aid"]
    fn phase_split() {
        let g = Geom::new(128, 16, 32, 32, 32, 3, 2);
        let x = vec![1f32; 128 * 16 * 1024];
        let mut buf = super::super::Scratch::take();
        let buf = &mut buf.0;
        for _ in 0..5 {
            let t = Instant::now();
            let r = super::super::phases(&x, &g, buf, 0);
            let a = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let y = super::super::unphase(&buf[r], &g);
            println!(
                "phases {:.2} ms, unphase {:.2} ms ({})",
                a * 1e3,
                t.elapsed().as_secs_f64() * 1e3,
                y.len()
            );
        }
    }

    /// Wall-clock speed-up of 2 threads over 1, alternating, per pass.
    #[test]
    #[ignore = "a tuning aid"]
    fn scaling() {
        let batch = 128;
        let isa = Isa::detect();
        let pools: Vec<_> = [1, 2]
            .iter()
            .map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap())
            .collect();
        for c in &CASES[..3] {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (batch, c.cin, c.h, c.h), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.1, (c.cout, c.cin, c.k, c.k), &dev).unwrap();
            let g = Geom::new(batch, c.cin, c.cout, c.h, c.h, c.k, c.stride);
            let dy = Tensor::randn(0f32, 1.0, (batch, c.cout, g.ho, g.wo), &dev).unwrap();
            let op = ConvOp { g, isa };
            let flop = 2.0 * (batch * c.cout * c.cin * c.k * c.k * g.hw()) as f64;
            let mut line = format!("{:<18}", c.name);
            for pass in 0..3 {
                let run = || match pass {
                    0 => conv2d(&x, &w, c.stride, c.k / 2).unwrap(),
                    1 => dy.apply_op2_no_bwd(&w, &InputGradOp(op)).unwrap(),
                    _ => x.apply_op2_no_bwd(&dy, &WeightGradOp(op)).unwrap(),
                };
                let mut t = [Vec::new(), Vec::new()];
                for _ in 0..7 {
                    for (i, p) in pools.iter().enumerate() {
                        let s = Instant::now();
                        p.install(run);
                        t[i].push(s.elapsed().as_secs_f64());
                    }
                }
                let (a, b) = (median(&mut t[0]), median(&mut t[1]));
                line += &format!(
                    " {} 1t {:5.1} 2t {:5.1} GF/s",
                    ["fwd", "dx", "dw"][pass],
                    flop / a / 1e9,
                    flop / b / 1e9
                );
            }
            println!("{line}");
        }
    }

    /// Single-threaded kernel efficiency against a single-threaded FMA loop, both in CPU time,
    /// for tuning on a busy host: `cargo test --release --lib conv::bench::tests::tune -- --ignored --nocapture`
    /// (`TUNE=16->16` runs only the shapes whose name contains it). Passes marked (d) run with
    /// the Winograd path switched off; the rate is the direct convolution's FLOPs over the time.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    #[ignore = "a tuning aid: run it in release mode"]
    fn tune() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        pool.install(|| {
            let t = cpu_ns();
            let f = fma_loop(20_000_000);
            let peak = f / (cpu_ns() - t) as f64;
            println!("single-thread FMA peak {peak:.1} GFLOP/s (CPU time)");
            let batch = 32;
            let isa = Isa::detect();
            let only = std::env::var("TUNE").unwrap_or_default();
            for c in CASES.iter().filter(|c| c.name.contains(&only)) {
                let dev = Device::Cpu;
                let x = Tensor::randn(0f32, 1.0, (batch, c.cin, c.h, c.h), &dev).unwrap();
                let w = Tensor::randn(0f32, 0.1, (c.cout, c.cin, c.k, c.k), &dev).unwrap();
                let g = Geom::new(batch, c.cin, c.cout, c.h, c.h, c.k, c.stride);
                let dy = Tensor::randn(0f32, 1.0, (batch, c.cout, g.ho, g.wo), &dev).unwrap();
                let op = ConvOp { g, isa };
                let flop = 2.0 * (batch * c.cout * c.cin * c.k * c.k * g.hw()) as f64;
                let mut line = format!("{:<18}", c.name);
                for (pass, direct) in [(0, false), (0, true), (1, false), (1, true), (2, false), (2, true)] {
                    let run = || match pass {
                        0 => conv2d(&x, &w, c.stride, c.k / 2).unwrap(),
                        1 => dy.apply_op2_no_bwd(&w, &InputGradOp(op)).unwrap(),
                        _ => x.apply_op2_no_bwd(&dy, &WeightGradOp(op)).unwrap(),
                    };
                    let run = || match direct {
                        true => super::super::winograd::direct(run),
                        false => run(),
                    };
                    run();
                    let mut best = u64::MAX;
                    for _ in 0..5 {
                        let t = cpu_ns();
                        run();
                        best = best.min(cpu_ns() - t);
                    }
                    let gf = flop / best as f64;
                    line += &format!(
                        " {:>4} {:6.1} GF/s {:3.0}%",
                        ["fwd", "dx", "dw"][pass].to_string() + if direct { "(d)" } else { "" },
                        gf,
                        100.0 * gf / peak
                    );
                }
                println!("{line}");
            }
        });
    }

    /// `cargo test --release --lib conv::bench -- --ignored --nocapture`
    #[test]
    #[ignore = "a benchmark: run it in release mode"]
    fn bench() {
        let batch = std::env::var("CONV_BENCH_BATCH")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(128);
        match super::bench_report(batch) {
            Ok(r) => println!("{r}"),
            Err(e) => panic!("bench failed: {e}"),
        }
    }
}
