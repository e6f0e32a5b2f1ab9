//! The shape of one convolution and what follows from it alone: [`ConvGeom`] (sizes, phase
//! planes per channel), its kernel taps ([`Tap`], and [`KTap`] as the kernels walk them) and
//! the per-tap lane masks of the masked kernels ([`Masks`]). No buffers, no kernels.

/// The shape of one convolution. Every kernel works on planes of the output's size
/// (`ho` × `wo`): for stride 1 the input itself, for stride 2 its phase planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeom {
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub ho: usize,
    pub wo: usize,
}

/// One kernel tap in plane coordinates: weight index `t` = ky·k + kx reads input plane `plane`
/// at (row + dy, column + dx) of the output position.
#[derive(Debug, Clone, Copy)]
pub struct Tap {
    pub t: usize,
    pub plane: usize,
    pub dy: isize,
    pub dx: isize,
}

impl ConvGeom {
    pub fn new(n: usize, cin: usize, cout: usize, h: usize, w: usize, k: usize, stride: usize) -> ConvGeom {
        // (h + 2p − k)/s + 1 is ⌈h/s⌉ for both (k, p) = (3, 1) and (1, 0)
        ConvGeom {
            n,
            cin,
            cout,
            h,
            w,
            k,
            stride,
            ho: h.div_ceil(stride),
            wo: w.div_ceil(stride),
        }
    }

    pub fn hw(&self) -> usize {
        self.ho * self.wo
    }

    /// Planes per input channel: 1 at stride 1; at stride 2 the phases (even/odd row × even/odd
    /// column, index 2·py + px), of which a 1×1 kernel only ever reads the even/even one.
    pub fn planes(&self) -> usize {
        if self.stride == 1 || self.k == 1 {
            1
        } else {
            4
        }
    }

    pub fn taps(&self) -> Vec<Tap> {
        let pad = (self.k / 2) as isize;
        let mut taps = Vec::with_capacity(self.k * self.k);
        for ky in 0..self.k {
            for kx in 0..self.k {
                // input row = s·r + ky − pad; at stride 2 that is phase (ky − pad) mod 2, row r + ⌊(ky − pad)/2⌋
                let (ry, rx) = (ky as isize - pad, kx as isize - pad);
                let tap = if self.stride == 1 {
                    Tap {
                        t: ky * self.k + kx,
                        plane: 0,
                        dy: ry,
                        dx: rx,
                    }
                } else {
                    Tap {
                        t: ky * self.k + kx,
                        plane: (ry.rem_euclid(2) * 2 + rx.rem_euclid(2)) as usize,
                        dy: ry.div_euclid(2),
                        dx: rx.div_euclid(2),
                    }
                };
                taps.push(tap);
            }
        }
        taps
    }
}

/// A tap as the kernels see it: `off` is added to the pixel index within an input channel's
/// block of planes; `kind` picks the lane masks for its (dy, dx).
#[derive(Debug, Clone, Copy)]
pub struct KTap {
    pub off: isize,
    pub plane: usize,
    pub kind: usize,
    pub dy: isize,
    pub dx: isize,
}

pub fn ktap(hw: usize, wo: usize, plane: usize, dy: isize, dx: isize) -> KTap {
    KTap {
        off: (plane * hw) as isize + dy * wo as isize + dx,
        plane,
        kind: mask_kind(dy, dx),
        dy,
        dx,
    }
}

fn mask_kind(dy: isize, dx: isize) -> usize {
    ((dy + 1) * 3 + (dx + 1)) as usize
}

/// The centre tap's masks: which lanes of a pixel vector lie inside the plane.
pub const CENTRE: usize = 4;

/// For each (dy, dx) in {−1, 0, 1}² and each 16-pixel vector of a `ho` × `wo` plane, the lanes
/// whose pixel is inside the plane and whose neighbour at (dy, dx) is too.
///
/// Vector v covers pixels 16·v − `shift` ..: a grid shifted so that the loads a kernel makes
/// most are 64-byte aligned (a misaligned 64-byte load straddles two cache lines and costs two
/// loads; the weight gradient ran ~1.4× faster on aligned buffers).
pub struct Masks {
    pub nv: usize,
    pub shift: usize,
    bits: Vec<u16>,
}

impl Masks {
    pub fn new(ho: usize, wo: usize, shift: usize) -> Masks {
        let hw = ho * wo;
        let nv = (hw + shift).div_ceil(16);
        let mut bits = vec![0u16; 9 * nv];
        for dy in -1..=1isize {
            for dx in -1..=1isize {
                let kind = mask_kind(dy, dx);
                for q in 0..hw {
                    let (r, c) = ((q / wo) as isize, (q % wo) as isize);
                    if (0..ho as isize).contains(&(r + dy)) && (0..wo as isize).contains(&(c + dx)) {
                        let l = q + shift;
                        bits[kind * nv + l / 16] |= 1 << (l % 16);
                    }
                }
            }
        }
        Masks { nv, shift, bits }
    }

    /// No masks, for kernels that read zero-bordered copies (making them anyway took ~0.2% of
    /// a training step, on one thread).
    pub fn none() -> Masks {
        Masks {
            nv: 0,
            shift: 0,
            bits: Vec::new(),
        }
    }

    #[inline(always)]
    pub fn get(&self, kind: usize, v: usize) -> u16 {
        self.bits[kind * self.nv + v]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stride_two_taps_read_the_right_phase() {
        // input row 2r + ky − 1: ky = 0 reads the odd rows one up, ky = 1 the even rows, ky = 2 the odd rows
        let g = ConvGeom::new(1, 1, 1, 8, 8, 3, 2);
        let taps = g.taps();
        let (t0, t4, t8) = (taps[0], taps[4], taps[8]);
        assert_eq!((t0.plane, t0.dy, t0.dx), (3, -1, -1));
        assert_eq!((t4.plane, t4.dy, t4.dx), (0, 0, 0));
        assert_eq!((t8.plane, t8.dy, t8.dx), (3, 0, 0));
    }
}
