//! Portable kernels, correct on every CPU: plain loops over the same tap lists the SIMD kernels
//! walk, with each tap's valid rows and columns computed instead of masked.

use std::ops::Range;

use super::job::{DwJob, Job};

/// The output positions r in 0..n whose neighbour r + d is inside 0..n too.
fn valid(n: usize, d: isize) -> Range<usize> {
    let lo = (-d).clamp(0, n as isize) as usize;
    let hi = (n as isize - d).clamp(lo as isize, n as isize) as usize;
    lo..hi
}

/// One image × one output tile of a [`Job`].
///
/// # Safety
/// `out` must be valid for writes of this unit's planes (see `run_job`).
pub(super) unsafe fn fwd_unit(job: &Job, img: usize, tile: usize, out: *mut f32) {
    let (ho, wo, ot, nt) = (job.ho, job.wo, job.out_tile, job.taps.len());
    let hw = ho * wo;
    let src = &job.src[img * job.src_img..];
    let mut acc = vec![0f32; hw];
    for c in 0..ot.min(job.nout - tile * ot) {
        acc.fill(0.0);
        for (j, tap) in job.taps.iter().enumerate() {
            let (rows, cols) = (valid(ho, tap.dy), valid(wo, tap.dx));
            for i in 0..job.nin {
                let wv = job.wp[((tile * nt + j) * job.nin + i) * ot + c];
                let base = (i * job.src_ch) as isize + tap.off;
                for r in rows.clone() {
                    let q = r * wo + cols.start;
                    let s0 = (base + q as isize) as usize;
                    let srow = &src[s0..s0 + cols.len()];
                    let arow = &mut acc[q..q + cols.len()];
                    arow.iter_mut().zip(srow).for_each(|(a, s)| *a += wv * s);
                }
            }
        }
        if let Some(b) = job.bias {
            let b = b[tile * ot + c];
            acc.iter_mut().for_each(|a| *a += b);
        }
        let at = img * job.out_img + (tile * ot + c) * job.out_ch;
        if let Some(add) = job.add {
            acc.iter_mut().zip(&add[at..at + hw]).for_each(|(a, s)| *a += s);
        }
        if job.relu {
            acc.iter_mut().for_each(|a| *a = a.max(0.0));
        }
        let o = out.add(at);
        std::ptr::copy_nonoverlapping(acc.as_ptr(), o, hw);
    }
}

/// Adds the weight gradient of images `imgs` to `part` ([out][in][tap]).
pub(super) fn dw_images(job: &DwJob, imgs: Range<usize>, part: &mut [f32]) {
    let (ho, wo, nt) = (job.ho, job.wo, job.taps.len());
    let hw = ho * wo;
    for img in imgs {
        let src = &job.src[img * job.src_img..];
        for o in 0..job.nout {
            let d = &job.dy[img * job.dy_img + o * job.dy_ch..][..hw];
            for i in 0..job.nin {
                for (t, tap) in job.taps.iter().enumerate() {
                    let (rows, cols) = (valid(ho, tap.dy), valid(wo, tap.dx));
                    let base = (i * job.src_ch) as isize + tap.off;
                    let mut s = 0f32;
                    for r in rows {
                        let q = r * wo + cols.start;
                        let s0 = (base + q as isize) as usize;
                        let srow = &src[s0..s0 + cols.len()];
                        s += d[q..q + cols.len()].iter().zip(srow).map(|(a, b)| a * b).sum::<f32>();
                    }
                    part[(o * job.nin + i) * nt + t] += s;
                }
            }
        }
    }
}
