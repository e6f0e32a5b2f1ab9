//! What a kernel is asked to do: a forward-style convolution over every image ([`Job`]) with
//! its weights packed for the kernel's register tile ([`pack`]), or a weight gradient
//! ([`DwJob`]) summed over runs of [`images_per_run`] images whose partial sums are added in
//! run order ([`add_in_order`]).

use rayon::prelude::*;

use super::geom::{ConvGeom, KTap, Masks};

/// One forward-style convolution: out[o][q] = Σ_taps Σ_i W[o][i][tap] · src[i][q + tap.off],
/// over every image, for planes of `ho` × `wo` pixels.
pub struct Job<'a> {
    pub src: &'a [f32],
    /// Floats between images and between input channels of `src`.
    pub src_img: usize,
    pub src_ch: usize,
    pub nin: usize,
    pub taps: &'a [KTap],
    /// Weights packed by [`pack`]: [out tile][tap][input channel][out_tile lanes].
    pub wp: &'a [f32],
    pub nout: usize,
    pub out_tile: usize,
    pub out_img: usize,
    pub out_ch: usize,
    pub ho: usize,
    pub wo: usize,
    pub masks: &'a Masks,
    /// Added to each output channel's values as they are stored, then `relu` applied
    /// (inference with BatchNorm folded in, see `ops::conv::conv2d_bias`).
    pub bias: Option<&'a [f32]>,
    /// Added to the values as they are stored (after the bias, before the ReLU): values laid
    /// out as the output (a residual unit's shortcut in inference, the shortcut's gradient in
    /// a unit's input gradient).
    pub add: Option<&'a [f32]>,
    pub relu: bool,
}

/// The weight gradient: dW[o][i][t] = Σ_images Σ_q dy[o][q] · src[i][q + taps[t].off].
pub struct DwJob<'a> {
    pub src: &'a [f32],
    pub src_img: usize,
    pub src_ch: usize,
    pub nin: usize,
    pub dy: &'a [f32],
    /// Floats between images and between output channels of `dy`.
    pub dy_img: usize,
    pub dy_ch: usize,
    /// Output channels of `dy`, each one plane.
    pub nout: usize,
    pub taps: &'a [KTap],
    pub ho: usize,
    pub wo: usize,
}

/// Packs weights for a [`Job`] over the taps `ts` (weight indices): [out tile][j][in][lane].
/// `transpose` swaps the roles of w's two channel axes (the input gradient's weights).
pub fn pack(w: &[f32], g: &ConvGeom, ts: &[usize], transpose: bool, ot: usize) -> Vec<f32> {
    let kk = g.k * g.k;
    let (nout, nin) = if transpose { (g.cin, g.cout) } else { (g.cout, g.cin) };
    let mut wp = vec![0f32; nout.div_ceil(ot) * ts.len() * nin * ot];
    // in parallel over output tiles: on one thread this was ~0.3% of a training step
    wp.par_chunks_mut(ts.len() * nin * ot)
        .enumerate()
        .for_each(|(tile, part)| {
            for o in tile * ot..((tile + 1) * ot).min(nout) {
                for (j, &t) in ts.iter().enumerate() {
                    for i in 0..nin {
                        let (co, ci) = if transpose { (i, o) } else { (o, i) };
                        part[(j * nin + i) * ot + o % ot] = w[(co * g.cin + ci) * kk + t];
                    }
                }
            }
        });
    wp
}

/// Images per partial sum of the weight gradient for planes of `hw` pixels: about
/// [`DW_PIXELS`] output pixels, so that a run's work is ~hw·DW_PIXELS/hw times its partial
/// sum's size (zeroed, then added up), within 4..=16 images.
pub fn images_per_run(hw: usize) -> usize {
    (DW_PIXELS / hw.max(1)).clamp(4, 16)
}

const DW_PIXELS: usize = 2048;

/// The sum of `partials` (each `len` floats), added in their order, in parallel over pieces
/// of the sum (on one thread, with the reordering after it, ~0.4% of a training step).
pub fn add_in_order(partials: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut total = vec![0f32; len];
    total.par_chunks_mut(4096).enumerate().for_each(|(k, t)| {
        for p in partials {
            t.iter_mut().zip(&p[k * 4096..]).for_each(|(t, v)| *t += v);
        }
    });
    total
}
