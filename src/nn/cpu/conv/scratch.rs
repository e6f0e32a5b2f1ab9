//! The convolution's buffers: each thread's reused scratch memory ([`Scratch`] for phase
//! planes, [`with_padded_copy`] for zero-bordered image copies, [`with_dy_rows`] for the
//! pixel-major copy of dy in an [`Aligned`] buffer), the copy of one image into a padded one
//! ([`pad_image`]), output buffers that are never zeroed ([`written_by`]) and where a pointer
//! lies against a cache line ([`misalignment`]).

use std::mem::MaybeUninit;

use super::geom::ConvGeom;

/// How many floats `p` lies past a 64-byte boundary.
pub fn misalignment(p: *const f32) -> usize {
    (p as usize / 4) % 16
}

/// One image's `cin` planes into `xp`'s padded planes (interior only).
pub fn pad_image(x: &[f32], g: &ConvGeom, xp: &mut [f32]) {
    let (wp, ps) = (g.w + 2, (g.h + 2) * (g.w + 2));
    for (c, plane) in x.chunks_exact(g.h * g.w).enumerate() {
        for (y, row) in plane.chunks_exact(g.w).enumerate() {
            xp[c * ps + (y + 1) * wp + 1..][..g.w].copy_from_slice(row);
        }
    }
}

/// A 64-byte aligned buffer of at least `len` floats, whose values are whatever the last user
/// left: every user writes what it reads.
pub struct Aligned {
    v: Vec<f32>,
    start: usize,
}

impl Aligned {
    const fn empty() -> Aligned {
        Aligned {
            v: Vec::new(),
            start: 0,
        }
    }
    /// Grows the buffer (zeroed) if it holds fewer than `len` floats.
    fn reserve(&mut self, len: usize) {
        if self.v.len() < self.start + len {
            self.v = vec![0f32; len + 16];
            self.start = (16 - (self.v.as_ptr() as usize / 4) % 16) % 16;
        }
    }
    pub fn as_ptr(&self) -> *const f32 {
        self.v[self.start..].as_ptr()
    }
    pub fn as_mut_ptr(&mut self) -> *mut f32 {
        self.v[self.start..].as_mut_ptr()
    }
}

thread_local! {
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    /// This thread's zero-bordered image copy (see [`with_padded_copy`]).
    static PADDED: std::cell::RefCell<PaddedCopy> = const { std::cell::RefCell::new(((0, 0, 0, 0), Vec::new())) };
    /// This thread's pixel-major copy of dy for the SIMD weight gradients.
    static DY_ROWS: std::cell::RefCell<Aligned> = const { std::cell::RefCell::new(Aligned::empty()) };
}

/// The (channels, planes, rows, columns) a padded copy's border was laid out for, and the copy.
type PaddedCopy = ((usize, usize, usize, usize), Vec<f32>);

/// Runs `f` on this thread's copy buffer for images of `shape` = (channels, planes per channel,
/// rows, columns): blocks of planes of (rows + 2) × (columns + 2) floats whose one-value border
/// is zero, as long as callers write only the interiors. It is kept between images and calls
/// and laid out (zeroed) again only when the shape changes, so the kernels' hot paths neither
/// allocate nor zero. `f` must not start rayon work (it would reenter the buffer).
pub fn with_padded_copy<R>(shape: (usize, usize, usize, usize), f: impl FnOnce(&mut [f32]) -> R) -> R {
    PADDED.with_borrow_mut(|(key, xp)| {
        if *key != shape {
            let (c, planes, h, w) = shape;
            *key = shape;
            xp.clear();
            xp.resize(c * planes * (h + 2) * (w + 2), 0.0);
        }
        f(xp)
    })
}

/// Runs `f` on this thread's aligned buffer of at least `len` floats (see [`Aligned`]).
pub fn with_dy_rows<R>(len: usize, f: impl FnOnce(&mut Aligned) -> R) -> R {
    DY_ROWS.with_borrow_mut(|a| {
        a.reserve(len);
        f(a)
    })
}

/// This thread's buffer for phase planes, kept between calls (returned on drop): a fresh
/// 8 MB allocation per call cost page faults that took longer than the split itself.
pub struct Scratch(pub Vec<f32>);

impl Scratch {
    pub fn take() -> Scratch {
        Scratch(SCRATCH.take())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        SCRATCH.set(std::mem::take(&mut self.0));
    }
}

/// A buffer of `len` floats that `fill` writes completely, so it is never zeroed first (a
/// pass over 8 MB at batch 128, when the allocator hands back reused memory).
pub fn written_by(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: `fill` initialised all `len` elements (callers write every output value)
    unsafe { v.set_len(len) };
    v
}
