//! Per-image transforms: normalisation (fitted on the training split) and the random
//! augmentations of He et al. 2015 §4.2 (4-pixel padding with a random 32×32 crop, and a
//! horizontal flip with probability ½).
//!
//! Augmentation acts on the normalised f32 image. What padding holds depends on the
//! normaliser: with `per-pixel-mean` it is 0.0 after normalisation, as the paper pads the
//! mean-subtracted image with zeros (so padding is the mean image); with `per-channel` and
//! `none` it is a u8 0 (black) normalised, as torchvision's `RandomCrop(padding=4)` before
//! `Normalize` does in the common PyTorch recipes.

use super::{Normalize, Split};
use crate::arch::InputShape;
use crate::rng::Rng;

/// A random augmentation, applied per training image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Augment {
    /// Pad every side with this many zero pixels, then crop a random H×W window.
    PadCrop(usize),
    /// Mirror left–right with probability ½.
    HFlip,
}

impl Augment {
    /// Parses "pad-crop:4" or "hflip".
    pub fn parse(s: &str) -> Result<Augment, String> {
        let choices = "valid: \"pad-crop:N\" (e.g. \"pad-crop:4\"), \"hflip\"";
        if s == "hflip" {
            return Ok(Augment::HFlip);
        }
        if let Some(n) = s.strip_prefix("pad-crop:") {
            return match n.parse::<usize>() {
                Ok(p) if p > 0 => Ok(Augment::PadCrop(p)),
                _ => Err(format!(
                    "augment \"{s}\": the padding must be a positive number of pixels ({choices})"
                )),
            };
        }
        if s == "pad-crop" {
            return Err(format!(
                "augment \"pad-crop\" needs a padding, e.g. \"pad-crop:4\" ({choices})"
            ));
        }
        Err(format!("unknown augment \"{s}\" ({choices})"))
    }

    /// Applies this augmentation to a normalised C×H×W image in place; `fill` is the padding
    /// value per channel ([`Normalizer::fill`]) and `tmp` scratch space of the image's size.
    pub(super) fn apply(self, img: &mut [f32], tmp: &mut [f32], fill: &[f32], shape: InputShape, rng: &mut Rng) {
        let (h, w) = (shape.height, shape.width);
        match self {
            Augment::HFlip => {
                if rng.below(2) == 1 {
                    for row in img.chunks_exact_mut(w) {
                        row.reverse();
                    }
                }
            }
            Augment::PadCrop(p) => {
                // Window offset in the padded image: 0..=2p in each direction.
                let dy = rng.below(2 * p as u64 + 1) as isize - p as isize;
                let dx = rng.below(2 * p as u64 + 1) as isize - p as isize;
                if dy == 0 && dx == 0 {
                    return;
                }
                tmp.copy_from_slice(img);
                for (c, &fill) in fill.iter().enumerate().take(shape.channels) {
                    let (src, dst) = (&tmp[c * h * w..(c + 1) * h * w], &mut img[c * h * w..(c + 1) * h * w]);
                    for y in 0..h {
                        let sy = y as isize + dy;
                        let row = &mut dst[y * w..(y + 1) * w];
                        if sy < 0 || sy >= h as isize {
                            row.fill(fill);
                            continue;
                        }
                        let srow = &src[sy as usize * w..(sy as usize + 1) * w];
                        for (x, out) in row.iter_mut().enumerate() {
                            let sx = x as isize + dx;
                            *out = if sx < 0 || sx >= w as isize {
                                fill
                            } else {
                                srow[sx as usize]
                            };
                        }
                    }
                }
            }
        }
    }
}

/// Maps u8 images to normalised f32: `(x - offset[i]) * scale[i]` per element, with the
/// offsets and scales fitted on the training split.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalizer {
    kind: Normalize,
    channels: usize,
    offset: Vec<f32>,
    scale: Vec<f32>,
}

impl Normalizer {
    /// Fits the statistics `kind` needs on `train` (images of `shape`).
    pub fn fit(kind: Normalize, train: &Split, shape: InputShape) -> Normalizer {
        let plane = shape.height * shape.width;
        let per = shape.channels * plane;
        let n = train.len();
        let (offset, scale) = match kind {
            Normalize::None => (vec![0.0; per], vec![1.0 / 255.0; per]),
            Normalize::PerPixelMean => {
                let mut sum = vec![0u64; per];
                for img in train.images.chunks_exact(per) {
                    for (s, &v) in sum.iter_mut().zip(img) {
                        *s += v as u64;
                    }
                }
                let offset = sum
                    .iter()
                    .map(|&s| if n == 0 { 0.0 } else { (s as f64 / n as f64) as f32 })
                    .collect();
                (offset, vec![1.0 / 255.0; per])
            }
            Normalize::PerChannel => {
                let mut offset = Vec::with_capacity(per);
                let mut scale = Vec::with_capacity(per);
                for c in 0..shape.channels {
                    let (mut s, mut s2) = (0u64, 0u64);
                    for img in train.images.chunks_exact(per) {
                        for &v in &img[c * plane..(c + 1) * plane] {
                            s += v as u64;
                            s2 += (v as u64) * (v as u64);
                        }
                    }
                    let count = (n * plane).max(1) as f64;
                    let mean = s as f64 / count;
                    let var = (s2 as f64 / count - mean * mean).max(0.0);
                    // A constant channel carries no information; leave its scale alone rather
                    // than divide by zero.
                    let std = if var > 1e-6 { var.sqrt() } else { 255.0 };
                    offset.extend(std::iter::repeat_n(mean as f32, plane));
                    scale.extend(std::iter::repeat_n((1.0 / std) as f32, plane));
                }
                (offset, scale)
            }
        };
        Normalizer {
            kind,
            channels: shape.channels,
            offset,
            scale,
        }
    }

    pub fn kind(&self) -> Normalize {
        self.kind
    }

    /// The value padding takes in each channel of a normalised image: 0.0 for per-pixel-mean
    /// (the paper pads the mean-subtracted image with zeros), a black u8 pixel normalised
    /// otherwise.
    pub fn fill(&self) -> Vec<f32> {
        let plane = self.offset.len() / self.channels.max(1);
        (0..self.channels)
            .map(|c| match self.kind {
                Normalize::PerPixelMean => 0.0,
                _ => -self.offset[c * plane] * self.scale[c * plane],
            })
            .collect()
    }

    /// Writes one normalised f32 image (C×H×W) from a u8 image.
    pub fn apply(&self, img: &[u8], out: &mut [f32]) {
        for (((o, &v), &m), &s) in out.iter_mut().zip(img).zip(&self.offset).zip(&self.scale) {
            *o = (v as f32 - m) * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(c: usize, h: usize, w: usize) -> InputShape {
        InputShape {
            channels: c,
            height: h,
            width: w,
        }
    }

    fn random_split(n: usize, s: InputShape, seed: u64) -> Split {
        let mut r = Rng::new(seed);
        let per = s.channels * s.height * s.width;
        Split {
            images: (0..n * per).map(|_| r.below(256) as u8).collect(),
            labels: vec![0; n],
        }
    }

    fn normalised(norm: &Normalizer, split: &Split, per: usize) -> Vec<f32> {
        let mut out = vec![0.0; split.images.len()];
        for (img, o) in split.images.chunks_exact(per).zip(out.chunks_exact_mut(per)) {
            norm.apply(img, o);
        }
        out
    }

    #[test]
    fn per_pixel_mean_gives_a_zero_mean_train_set() {
        let s = shape(3, 4, 5);
        let per = 60;
        let train = random_split(37, s, 1);
        let norm = Normalizer::fit(Normalize::PerPixelMean, &train, s);
        let out = normalised(&norm, &train, per);
        for j in 0..per {
            let mean: f64 = out.iter().skip(j).step_by(per).map(|&v| v as f64).sum::<f64>() / 37.0;
            assert!(mean.abs() < 1e-5, "pixel {j}: mean {mean}");
        }
        // Scale 1/255: differences between images survive unchanged in ratio.
        let d_in = train.images[0] as f32 - train.images[per] as f32;
        assert!(((out[0] - out[per]) * 255.0 - d_in).abs() < 1e-3);
    }

    #[test]
    fn per_channel_gives_zero_mean_unit_variance_channels() {
        let s = shape(3, 6, 6);
        let train = random_split(20, s, 2);
        let norm = Normalizer::fit(Normalize::PerChannel, &train, s);
        let out = normalised(&norm, &train, 108);
        for c in 0..3 {
            let vals: Vec<f64> = out
                .chunks_exact(108)
                .flat_map(|img| img[c * 36..(c + 1) * 36].iter().map(|&v| v as f64))
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            assert!(
                mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3,
                "channel {c}: {mean} {var}"
            );
        }
    }

    #[test]
    fn none_scales_to_unit_interval_and_constant_channels_do_not_divide_by_zero() {
        let s = shape(1, 2, 2);
        let train = Split {
            images: vec![7; 8],
            labels: vec![0, 1],
        };
        let mut out = [0.0; 4];
        Normalizer::fit(Normalize::None, &train, s).apply(&[0, 255, 51, 7], &mut out);
        for (o, want) in out.iter().zip([0.0, 1.0, 0.2, 7.0 / 255.0]) {
            assert!((o - want).abs() < 1e-6, "{out:?}");
        }
        Normalizer::fit(Normalize::PerChannel, &train, s).apply(&[7, 7, 7, 7], &mut out);
        assert!(out.iter().all(|v| *v == 0.0), "{out:?}");
    }

    #[test]
    fn padding_is_zero_after_per_pixel_mean_and_black_otherwise() {
        let s = shape(2, 3, 3);
        let train = random_split(10, s, 3);
        let ppm = Normalizer::fit(Normalize::PerPixelMean, &train, s);
        assert_eq!(ppm.fill(), vec![0.0, 0.0]);
        for kind in [Normalize::PerChannel, Normalize::None] {
            let norm = Normalizer::fit(kind, &train, s);
            let mut black = [0.0; 18];
            norm.apply(&[0; 18], &mut black);
            assert_eq!(norm.fill(), vec![black[0], black[9]], "{kind:?}");
        }
        let mut img = vec![5.0; 18];
        let mut padded_somewhere = false;
        for seed in 0..20 {
            img.fill(5.0);
            Augment::PadCrop(1).apply(&mut img, &mut [0.0; 18], &[-1.0, -2.0], s, &mut Rng::new(seed));
            assert!(img[..9].iter().all(|v| *v == 5.0 || *v == -1.0));
            assert!(img[9..].iter().all(|v| *v == 5.0 || *v == -2.0));
            padded_somewhere |= img.contains(&-2.0);
        }
        assert!(padded_somewhere);
    }

    #[test]
    fn parse_accepts_the_documented_forms_and_lists_choices_otherwise() {
        assert_eq!(Augment::parse("pad-crop:4"), Ok(Augment::PadCrop(4)));
        assert_eq!(Augment::parse("hflip"), Ok(Augment::HFlip));
        for bad in ["pad-crop", "pad-crop:0", "pad-crop:x", "vflip"] {
            let e = Augment::parse(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("hflip") && e.contains("pad-crop:"), "{e}");
        }
    }

    #[test]
    fn pad_crop_shifts_the_image_and_fills_with_zero() {
        let s = shape(2, 5, 5);
        let orig: Vec<f32> = (1..=50).map(|v| v as f32).collect();
        let mut tmp = vec![0.0; 50];
        let mut seen_shift = false;
        for seed in 0..50 {
            let mut img = orig.clone();
            Augment::PadCrop(2).apply(&mut img, &mut tmp, &[0.0, 0.0], s, &mut Rng::new(seed));
            // Every pixel is either padding or the original pixel at one common offset.
            let mut offset = None;
            for c in 0..2 {
                for y in 0..5 {
                    for x in 0..5 {
                        let v = img[c * 25 + y * 5 + x];
                        if v == 0.0 {
                            continue;
                        }
                        let src = v as usize - 1 - c * 25;
                        let d = (src / 5) as isize - y as isize;
                        let e = (src % 5) as isize - x as isize;
                        assert!(d.abs() <= 2 && e.abs() <= 2);
                        assert_eq!(*offset.get_or_insert((d, e)), (d, e));
                    }
                }
            }
            seen_shift |= offset.is_some_and(|o| o != (0, 0));
            let zeros = img.iter().filter(|v| **v == 0.0).count();
            if let Some((d, e)) = offset {
                let kept = (5 - d.unsigned_abs()) * (5 - e.unsigned_abs()) * 2;
                assert_eq!(zeros, 50 - kept);
            }
        }
        assert!(seen_shift);
    }

    #[test]
    fn hflip_mirrors_rows_about_half_the_time() {
        let s = shape(1, 2, 3);
        let orig = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut flips = 0;
        for seed in 0..200 {
            let mut img = orig.clone();
            Augment::HFlip.apply(&mut img, &mut [0.0; 6], &[0.0], s, &mut Rng::new(seed));
            if img != orig {
                assert_eq!(img, vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
                flips += 1;
            }
        }
        assert!((70..130).contains(&flips), "{flips} flips in 200");
    }
}
