//! Which kernel runs each pass of a convolution: the one place that decides. [`ConvPlan::choose`]
//! is a pure function of the shape, the instruction set ([`Isa`], detected once per op) and
//! whether Winograd is allowed; the kernels only run what it picked.
//!
//! The choices, fastest first where several fit:
//! - forward pass and input gradient ([`FwdKernel`]): on AVX2, planes whose rows are whole
//!   8-pixel vectors read zero-bordered copies with no lane masks ([`FwdKernel::Padded`]), and
//!   among them 3×3 stride-1 jobs with enough channels run as Winograd's F(2×2, 3×3)
//!   ([`FwdKernel::Winograd`]); everything else runs the lane-masked tap-list kernel of its
//!   instruction set ([`FwdKernel::Masked`]);
//! - weight gradient ([`DwKernel`]): Winograd's on AVX2 for 3×3 stride-1 convolutions with
//!   enough channels, else the SIMD kernels that vectorise over output channels, else the
//!   portable tap loops on phase planes.

use std::cell::Cell;

use super::geom::ConvGeom;

/// The instruction set a kernel is written for; the tests force each one this machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    /// The kernels to run on this CPU (detected once): [`Isa::preferred`] for what it
    /// supports, or the family `RUNNER_ISA` (avx512, avx2 or scalar) names where the CPU has
    /// it, to time one against another on the same machine.
    pub fn detect() -> Isa {
        static CHOSEN: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let forced = std::env::var("RUNNER_ISA").ok();
            Isa::preferred(
                Isa::Avx512.supported(),
                Isa::Avx2.supported(),
                splits_512_bit_ops(),
                forced.as_deref(),
            )
        })
    }

    /// The policy, as a pure function: the widest family, except on a CPU that splits 512-bit
    /// operations into two 256-bit halves (AMD Zen 4), where the AVX2 family, with its
    /// maskless bordered copies and Winograd's kernels, trained a ResNet-20 1.17× and a
    /// ResNet-56 1.21× faster than the AVX-512 one (2 threads, batch 128). On an Intel Xeon
    /// with full-width units (Sapphire Rapids) it is the other way round: the AVX2 family
    /// trained a ResNet-20 at 0.79× and a ResNet-56 at 0.77× of the AVX-512 one's speed, and
    /// the AVX-512 kernels were faster pass by pass on every CIFAR shape, Winograd's 32- and
    /// 64-channel ones included, so no per-pass mix would help there. `forced` names a family
    /// the CPU has (an unknown or unsupported name is ignored).
    pub fn preferred(avx512: bool, avx2: bool, splits_512: bool, forced: Option<&str>) -> Isa {
        match forced {
            Some("avx512") if avx512 => return Isa::Avx512,
            Some("avx2") if avx2 => return Isa::Avx2,
            Some("scalar") => return Isa::Scalar,
            _ => {}
        }
        match (avx512, avx2) {
            (true, true) if splits_512 => Isa::Avx2,
            (true, _) => Isa::Avx512,
            (false, true) => Isa::Avx2,
            (false, false) => Isa::Scalar,
        }
    }

    /// Whether this CPU runs it.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// Whether this CPU executes 512-bit vector operations as two 256-bit halves: AMD's family 19h
/// (Zen 3, which has no AVX-512, and Zen 4); Zen 5 (family 1Ah) and Intel's have full-width units.
fn splits_512_bit_ops() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let (vendor, signature) = (__cpuid(0), __cpuid(1).eax);
        // "AuthenticAMD", as cpuid leaf 0 spells it in ebx, edx, ecx
        let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
        let family = ((signature >> 8) & 0xf) + ((signature >> 20) & 0xff);
        amd && family == 0x19
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Output channels per tile of the padded kernel (`avx2::fwd_padded`) and of Winograd's
/// products, so that both unpack the same packed weights.
pub const PAD_OT: usize = 6;

/// The fewest input × output channel pairs for which the forward-style passes take Winograd's
/// path. Its transforms cost ~44 operations per 4 tiles per input channel and ~34 per output
/// channel, the products 16 · in · out / 8 FMAs: at 16 → 16 channels the two took about as
/// long as the direct kernel (measured: 0.9–1.0×), at 32 → 32 1.2–1.35× less, at 64 → 64
/// 1.35–1.45× less (single thread, batch 32).
pub const MIN_CHANNEL_PAIRS: usize = 512;

/// The fewest input × output channel pairs for which the weight gradient takes Winograd's
/// path: its products reduce over a block's hundreds of tiles rather than over the input
/// channels, so at 16 → 16 channels it still ran 1.5× the direct weight gradient's rate
/// (single thread; 1.0–1.1× on 2 threads, batch 128).
pub const MIN_DW_CHANNEL_PAIRS: usize = 256;

/// Whether output planes of `ho` × `wo` pixels split into 2×2 tiles, 4 tiles to a vector.
pub fn tiles_whole(ho: usize, wo: usize) -> bool {
    ho.is_multiple_of(2) && wo.is_multiple_of(8)
}

/// Whether a plane's 2×2 tiles come in whole groups of 8 (Winograd's register tile).
pub fn tiles_in_eights(ho: usize, wo: usize) -> bool {
    ((wo / 2) * (ho / 2)).is_multiple_of(8)
}

/// The kernel of a forward-style pass: the forward pass, or the input gradient (the output
/// gradient convolved with the transposed weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwdKernel {
    /// The tap-list kernel with per-tap lane masks, for this instruction set.
    Masked(Isa),
    /// AVX2 on a zero-bordered copy of each image, no masks (`avx2::fwd_padded`).
    Padded,
    /// AVX2 Winograd F(2×2, 3×3) on the same zero-bordered copies (`winograd::WinoJob`).
    Winograd,
}

impl FwdKernel {
    /// Whether it reads zero-bordered copies of the images (and so needs no lane masks).
    pub fn padded(self) -> bool {
        matches!(self, FwdKernel::Padded | FwdKernel::Winograd)
    }

    /// Output channels per register tile: the width weights are packed to.
    pub fn out_tile(self) -> usize {
        match self {
            FwdKernel::Padded | FwdKernel::Winograd => PAD_OT,
            FwdKernel::Masked(Isa::Scalar | Isa::Avx512) => 8,
            FwdKernel::Masked(Isa::Avx2) => 4,
        }
    }
}

/// The kernel of the weight gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DwKernel {
    /// Plain loops over the taps, on phase planes (`scalar::dw_images`).
    Taps,
    /// Vectors of output channels on a pixel-major dy and a zero-bordered x (`dw`), for
    /// AVX2 or AVX-512.
    Channels(Isa),
    /// AVX2 Winograd F(2×2, 3×3) (`winograd::weight_grad`).
    Winograd,
}

impl DwKernel {
    /// Output channels per vector of its partial sums ([out vector][in][tap][lane]).
    pub fn lanes(self) -> usize {
        match self {
            DwKernel::Channels(Isa::Avx512) => 16,
            DwKernel::Channels(_) => 8,
            DwKernel::Taps | DwKernel::Winograd => 1,
        }
    }
}

/// The kernel of each pass of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvPlan {
    pub forward: FwdKernel,
    pub input_grad: FwdKernel,
    pub weight_grad: DwKernel,
}

impl ConvPlan {
    /// The kernels for `g` with instruction set `isa`, Winograd's among them when `winograd`.
    pub fn choose(g: &ConvGeom, isa: Isa, winograd: bool) -> ConvPlan {
        let x86 = cfg!(target_arch = "x86_64");
        // Without lane masks the AVX2 kernel has registers for 2 pixel vectors × 6 output
        // channels of accumulators instead of 2 × 4, and the copy's planes ((h + 2) × (w + 2)
        // floats) never lie a multiple of 4 KiB apart, where the loads of one input value per
        // channel would all map to the same L1 set (a 32×32 plane is exactly 4 KiB).
        let padded = x86 && isa == Isa::Avx2 && g.wo.is_multiple_of(8);
        let three_by_three = g.k == 3 && g.stride == 1 && tiles_whole(g.ho, g.wo);
        let pairs = g.cin * g.cout;
        // the input gradient is the same convolution with the channel counts swapped
        let forward =
            if padded && winograd && three_by_three && tiles_in_eights(g.ho, g.wo) && pairs >= MIN_CHANNEL_PAIRS {
                FwdKernel::Winograd
            } else if padded {
                FwdKernel::Padded
            } else {
                FwdKernel::Masked(isa)
            };
        let weight_grad = match isa {
            Isa::Avx2 if x86 && winograd && three_by_three && pairs >= MIN_DW_CHANNEL_PAIRS => DwKernel::Winograd,
            Isa::Avx2 | Isa::Avx512 => DwKernel::Channels(isa),
            Isa::Scalar => DwKernel::Taps,
        };
        ConvPlan {
            forward,
            input_grad: forward,
            weight_grad,
        }
    }

    /// [`ConvPlan::choose`] with Winograd allowed unless this thread is inside
    /// [`without_winograd`].
    pub fn for_this_thread(g: &ConvGeom, isa: Isa) -> ConvPlan {
        ConvPlan::choose(g, isa, !WINOGRAD_OFF.get())
    }
}

thread_local! {
    /// Set by [`without_winograd`].
    static WINOGRAD_OFF: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the Winograd kernels switched off for the convolutions it runs on this thread
/// (the tests and `runner bench --op conv-tune` compare them with the direct kernels).
pub fn without_winograd<R>(f: impl FnOnce() -> R) -> R {
    let was = WINOGRAD_OFF.replace(true);
    let r = f();
    WINOGRAD_OFF.set(was);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(isa: Isa, (cin, cout, h, w): (usize, usize, usize, usize), k: usize, stride: usize) -> ConvPlan {
        ConvPlan::choose(&ConvGeom::new(128, cin, cout, h, w, k, stride), isa, true)
    }

    #[test]
    fn the_widest_family_runs_except_where_512_bit_operations_split_or_another_is_asked_for() {
        assert_eq!(Isa::preferred(true, true, false, None), Isa::Avx512);
        assert_eq!(Isa::preferred(true, true, true, None), Isa::Avx2, "AMD Zen 4");
        assert_eq!(Isa::preferred(false, true, true, None), Isa::Avx2, "AMD Zen 3");
        assert_eq!(Isa::preferred(false, false, false, None), Isa::Scalar);
        assert_eq!(Isa::preferred(true, true, true, Some("avx512")), Isa::Avx512);
        assert_eq!(Isa::preferred(true, true, false, Some("avx2")), Isa::Avx2);
        assert_eq!(Isa::preferred(true, true, false, Some("scalar")), Isa::Scalar);
        // a family the CPU lacks, or no family at all, leaves the choice as it was
        assert_eq!(Isa::preferred(false, true, false, Some("avx512")), Isa::Avx2);
        assert_eq!(Isa::preferred(true, true, false, Some("neon")), Isa::Avx512);
        assert!(Isa::detect().supported());
    }

    #[test]
    fn portable_and_avx512_kernels_are_the_masked_ones() {
        for (isa, dw) in [
            (Isa::Scalar, DwKernel::Taps),
            (Isa::Avx512, DwKernel::Channels(Isa::Avx512)),
        ] {
            for (shape, k, stride) in [
                ((16, 16, 32, 32), 3, 1),
                ((64, 64, 8, 8), 3, 1),
                ((16, 32, 32, 32), 1, 2),
            ] {
                let p = plan(isa, shape, k, stride);
                assert_eq!(
                    (p.forward, p.input_grad, p.weight_grad),
                    (FwdKernel::Masked(isa), FwdKernel::Masked(isa), dw)
                );
            }
        }
        assert_eq!(FwdKernel::Masked(Isa::Avx512).out_tile(), 8);
        assert_eq!(DwKernel::Channels(Isa::Avx512).lanes(), 16);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_takes_winograd_from_its_channel_thresholds() {
        // 16 → 16: 256 pairs, enough for the weight gradient only
        let p = plan(Isa::Avx2, (16, 16, 32, 32), 3, 1);
        assert_eq!((p.forward, p.weight_grad), (FwdKernel::Padded, DwKernel::Winograd));
        for shape in [(32, 32, 16, 16), (64, 64, 8, 8)] {
            let p = plan(Isa::Avx2, shape, 3, 1);
            assert_eq!(
                (p.forward, p.input_grad, p.weight_grad),
                (FwdKernel::Winograd, FwdKernel::Winograd, DwKernel::Winograd)
            );
        }
        // switched off
        let g = ConvGeom::new(8, 32, 32, 16, 16, 3, 1);
        let p = ConvPlan::choose(&g, Isa::Avx2, false);
        assert_eq!(
            (p.forward, p.weight_grad),
            (FwdKernel::Padded, DwKernel::Channels(Isa::Avx2))
        );
        assert_eq!(without_winograd(|| ConvPlan::for_this_thread(&g, Isa::Avx2)), p);
        assert_eq!(ConvPlan::for_this_thread(&g, Isa::Avx2).forward, FwdKernel::Winograd);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_pads_whole_vector_rows_and_masks_the_rest() {
        // stride 2 and 1×1: padded, never Winograd
        for (shape, k, stride) in [
            ((16, 32, 32, 32), 3, 2),
            ((32, 64, 16, 16), 1, 2),
            ((64, 64, 8, 8), 1, 1),
        ] {
            let p = plan(Isa::Avx2, shape, k, stride);
            assert_eq!(
                (p.forward, p.weight_grad),
                (FwdKernel::Padded, DwKernel::Channels(Isa::Avx2)),
                "{shape:?}"
            );
        }
        // rows that are no whole 8-pixel vectors (8×8 at stride 2 gives 4×4 planes)
        for (shape, stride) in [((64, 64, 7, 7), 1), ((32, 64, 8, 8), 2), ((64, 64, 12, 12), 1)] {
            let p = plan(Isa::Avx2, shape, 3, stride);
            assert_eq!(p.forward, FwdKernel::Masked(Isa::Avx2), "{shape:?}");
            assert_eq!(p.weight_grad, DwKernel::Channels(Isa::Avx2), "{shape:?}");
        }
        // 2×2 tiles that do not come in eights: the padded direct kernel
        assert_eq!(plan(Isa::Avx2, (64, 64, 2, 8), 3, 1).forward, FwdKernel::Padded);
        assert_eq!(
            (FwdKernel::Padded.out_tile(), FwdKernel::Masked(Isa::Avx2).out_tile()),
            (PAD_OT, 4)
        );
    }
}
