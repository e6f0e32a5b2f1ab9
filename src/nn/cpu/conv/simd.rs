//! The vector primitives the SIMD convolution kernels are written over ([`Simd`]), so that one
//! algorithm serves both vector widths: the lane-masked forward tile (`masked`) and the weight
//! gradient over output-channel vectors (`dw`). `avx2::Avx2` (8 lanes) and `avx512::Avx512`
//! (16 lanes) implement it with their intrinsics.
//!
//! Every primitive is `#[inline(always)]` and carries no target features of its own: the
//! generic kernels (also `#[inline(always)]`) are inlined into each instruction set's
//! `#[target_feature]` functions, and the intrinsics with them. A closure is a function of its
//! own, compiled without those features unless LLVM inlines it, so no generic kernel calls a
//! primitive inside one: work inside a closure (`dw_images`'s per-thread buffers) goes through
//! a `#[target_feature]` function ([`Simd::dw_tiles`], [`Simd::transpose`]). The forward tiles
//! do too ([`Simd::fwd_tile`]): inlined into `fwd_unit` before LLVM had optimised each tile
//! alone, the 3-vector tile spilled its accumulators to the stack every iteration (3× slower).

use super::dw::DwTiles;
use super::geom::Masks;
use super::job::Job;

/// One instruction set's f32 vectors. The kernels call only these, so results are the same
/// bit for bit as when the loops were written out per instruction set.
///
/// Every method needs the instruction set's target features: call them only from functions
/// compiled with them, on a CPU that has them.
///
/// # Safety
/// The kernels compute pointer offsets from [`Simd::LANES`] and rely on the masked loads and
/// stores not touching masked-off lanes: an implementation must hold exactly `LANES` f32
/// values per vector and keep to what each method's documentation says.
pub unsafe trait Simd: Sized {
    /// f32 lanes per vector.
    const LANES: usize;
    /// A vector of [`Simd::LANES`] f32 values.
    type V: Copy;
    /// A lane mask as [`Simd::load_masked`] and [`Simd::store_masked`] take it.
    type Mask: Copy;

    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    /// Loads from a pointer aligned to the vector's size.
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn loadu(p: *const f32) -> Self::V;
    unsafe fn storeu(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// a·b + c, rounded once.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;

    /// A mask with no lane set (to initialise arrays of masks).
    unsafe fn no_lanes() -> Self::Mask;
    /// The lanes of `kind`'s masks for vector `v` of [`Simd::LANES`] pixels.
    unsafe fn mask(masks: &Masks, kind: usize, v: usize) -> Self::Mask;
    /// The lanes of `m` from `p`, zero elsewhere; masked-off lanes are neither read nor
    /// faulted on.
    unsafe fn load_masked(m: Self::Mask, p: *const f32) -> Self::V;
    /// The lanes of `m` to `p`; masked-off lanes are not touched.
    unsafe fn store_masked(p: *mut f32, m: Self::Mask, v: Self::V);

    /// How many pixel vectors of a plane of `nv` the masked forward pass covers in tiles of 3
    /// and of 2 (the rest, at most one, in a tile of 1).
    fn tile_split(nv: usize) -> (usize, usize);
    /// `masked::fwd_tile` compiled with this instruction set's features.
    #[allow(clippy::too_many_arguments)]
    unsafe fn fwd_tile<const P: usize, const OT: usize>(
        job: &Job,
        src: *const f32,
        wp: *const f32,
        v0: usize,
        out: (*mut f32, Option<*const f32>),
        ch0: usize,
        nvalid: usize,
    );

    /// dy's `cout` planes of `hw` pixels → `hw` rows of `op` floats (channels past `cout`
    /// zero). `out` must be aligned to the vector's size.
    unsafe fn transpose(dy: *const f32, cout: usize, hw: usize, out: *mut f32, op: usize);
    /// Every register tile of one image of the weight gradient, in this instruction set's
    /// tile shapes (see [`DwTiles`]).
    unsafe fn dw_tiles(t: &DwTiles<'_, Self>, part_v: &mut [f32]);
}
