//! Stride 2 as stride 1: the four even/odd row × column *phase planes* of an input, each the
//! size of the output ([`phases`]), the input as the stride-1 kernels read it ([`source`]), and
//! the inverse for gradients ([`unphase`]).

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::geom::ConvGeom;
use super::scratch::{misalignment, written_by};

/// The input as the kernels read it, and its channel stride: x itself at stride 1, its phase
/// planes at stride 2 (in `store`, `misalign` floats past a 64-byte boundary).
pub fn source<'a>(x: &'a [f32], g: &ConvGeom, store: &'a mut Vec<f32>, misalign: usize) -> (&'a [f32], usize) {
    if g.stride == 1 {
        (x, g.h * g.w)
    } else {
        let range = phases(x, g, store, misalign);
        (&store[range], g.planes() * g.hw())
    }
}

/// The stride-2 input as phase planes: [n][c][plane][ho·wo], plane (py, px) at (r, c) holding
/// x[2r + py][2c + px], or 0 past the edge (the convolution's own zero padding). They are
/// written `misalign` floats past a 64-byte boundary of `buf`; the returned range holds them.
/// Every value is written once, nothing is zeroed first, and `buf`'s memory is reused.
pub fn phases(x: &[f32], g: &ConvGeom, buf: &mut Vec<f32>, misalign: usize) -> Range<usize> {
    let (np, hw) = (g.planes(), g.hw());
    let len = g.n * g.cin * np * hw;
    let total = len + 16;
    let mut v = std::mem::take(buf);
    v.clear();
    v.reserve(total);
    let start = (misalign + 16 - misalignment(v.as_ptr())) % 16;
    let spare = &mut v.spare_capacity_mut()[..total];
    let (head, rest) = spare.split_at_mut(start);
    let (body, tail) = rest.split_at_mut(len);
    head.fill(MaybeUninit::new(0.0));
    tail.fill(MaybeUninit::new(0.0));
    body.par_chunks_mut(np * hw)
        .zip(x.par_chunks(g.h * g.w))
        .for_each(|(o, xc)| split_plane(o, xc, g));
    // SAFETY: head, body (split_plane writes every value of a channel's planes) and tail
    unsafe { v.set_len(total) };
    *buf = v;
    start..start + len
}

/// One channel's phase planes from its h × w plane.
fn split_plane(o: &mut [MaybeUninit<f32>], xc: &[f32], g: &ConvGeom) {
    let (np, hw, wo, w) = (g.planes(), g.hw(), g.wo, g.w);
    for (y, row) in xc.chunks_exact(w).enumerate() {
        let (py, r) = (y % 2, y / 2);
        if py * 2 >= np {
            continue; // odd rows: not read by a 1×1 kernel
        }
        // even columns to plane (py, 0), odd ones to (py, 1)
        let (even, rest) = o[(py * 2) * hw + r * wo..].split_at_mut(wo);
        let pairs = row.chunks_exact(2);
        if let [last] = pairs.remainder() {
            even[w / 2].write(*last);
        }
        if np == 1 {
            even.iter_mut().zip(pairs).for_each(|(e, p)| {
                e.write(p[0]);
            });
        } else {
            let odd = &mut rest[hw - wo..hw];
            if w % 2 == 1 {
                odd[wo - 1].write(0.0); // column w: padding
            }
            for ((e, d), p) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                e.write(p[0]);
                d.write(p[1]);
            }
        }
    }
    if np == 4 && g.h % 2 == 1 {
        // the odd-row planes' last row is row h: padding
        for p in [2, 3] {
            o[p * hw + (g.ho - 1) * wo..(p + 1) * hw].fill(MaybeUninit::new(0.0));
        }
    }
}

/// The inverse of [`phases`] for gradients: x positions no plane holds (a 1×1 kernel's odd
/// rows and columns) get 0.
pub fn unphase(ph: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (np, hw, wo) = (g.planes(), g.hw(), g.wo);
    written_by(g.n * g.cin * g.h * g.w, |out| {
        out.par_chunks_mut(g.h * g.w)
            .zip(ph.par_chunks(np * hw))
            .for_each(|(xc, o)| {
                for (y, row) in xc.chunks_exact_mut(g.w).enumerate() {
                    let (py, r) = (y % 2, y / 2);
                    if py * 2 >= np {
                        row.fill(MaybeUninit::new(0.0));
                        continue;
                    }
                    let even = &o[(py * 2) * hw + r * wo..][..wo];
                    let odd = (np == 4).then(|| &o[(py * 2 + 1) * hw + r * wo..][..wo]);
                    if g.w % 2 == 1 {
                        row[g.w - 1].write(even[g.w / 2]);
                    }
                    let pairs = row.chunks_exact_mut(2);
                    match odd {
                        None => pairs.zip(even).for_each(|(p, e)| {
                            p[0].write(*e);
                            p[1].write(0.0);
                        }),
                        Some(odd) => {
                            for ((p, e), d) in pairs.zip(even).zip(odd) {
                                p[0].write(*e);
                                p[1].write(*d);
                            }
                        }
                    }
                }
            })
    })
}
