//! The embedded synthetic data set: 10 classes of 3×32×32 images generated from the seed, so
//! the quick grid runs with no files.
//!
//! A class is a shape and a colour family: five shapes (disc, ring, square at any rotation,
//! horizontal grating, vertical grating) × two hue families (warm around 20°, cool around
//! 200°). Each image draws the object at a random position, size, rotation, phase, saturation
//! and opacity over a greyish gradient background with small random blobs as clutter, then
//! adds pixel noise. Colour alone separates only the two families, so a network has to learn
//! the shapes; small, faint, noisy objects (and hues far from their family's centre) make some
//! images ambiguous, so 100% is out of reach. Every class is symmetric under a left–right flip,
//! so the usual `hflip` augmentation keeps labels right.
//!
//! Image `i` has label `i % 10` (balanced splits) and is drawn from its own stream
//! `Rng::derive(seed, split, i)`, so generation is parallel and still deterministic.

use rayon::prelude::*;

use super::Split;
use crate::rng::Rng;

pub(super) const CLASSES: usize = 10;
const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;

const SHAPES: [&str; 5] = ["disc", "ring", "square", "h-grating", "v-grating"];
const FAMILIES: [(&str, f32); 2] = [("warm", 20.0), ("cool", 200.0)];

pub(super) fn class_names() -> Vec<String> {
    (0..CLASSES)
        .map(|c| format!("{} {}", FAMILIES[c / SHAPES.len()].0, SHAPES[c % SHAPES.len()]))
        .collect()
}

/// `n` images with labels `0, 1, …, 9, 0, 1, …`; `split` names the stream ("synthetic-train").
pub(super) fn generate(n: usize, seed: u64, split: &str) -> Split {
    let mut images = vec![0u8; n * 3 * PLANE];
    images.par_chunks_mut(3 * PLANE).enumerate().for_each(|(i, out)| {
        draw(i % CLASSES, &mut Rng::derive(seed, split, i as u64), out);
    });
    Split {
        images,
        labels: (0..n).map(|i| (i % CLASSES) as u32).collect(),
    }
}

fn uniform(r: &mut Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * r.uniform() as f32
}

/// Hue (degrees), saturation, value in [0, 1] → RGB in [0, 1].
fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = h.rem_euclid(360.0) / 60.0;
    let c = v * s;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r + m, g + m, b + m]
}

/// Anti-aliased coverage of a pixel by a shape whose signed distance (pixels) is `d`.
fn coverage(d: f32) -> f32 {
    (0.5 - d).clamp(0.0, 1.0)
}

/// Draws one image of class `class` into `out` (3×32×32).
fn draw(class: usize, r: &mut Rng, out: &mut [u8]) {
    let shape = class % SHAPES.len();
    let family = FAMILIES[class / SHAPES.len()].1;

    // Background: a grey level with a faint tint and a linear gradient.
    let level = uniform(r, 0.25, 0.75);
    let tint: [f32; 3] = std::array::from_fn(|_| uniform(r, -0.08, 0.08));
    let (gx, gy) = (uniform(r, -0.2, 0.2) / SIDE as f32, uniform(r, -0.2, 0.2) / SIDE as f32);
    let mut img = [[0f32; PLANE]; 3];
    for y in 0..SIDE {
        for x in 0..SIDE {
            let g = level + gx * (x as f32 - 16.0) + gy * (y as f32 - 16.0);
            for c in 0..3 {
                img[c][y * SIDE + x] = g + tint[c];
            }
        }
    }

    // Clutter: small soft blobs of any colour, which look a little like tiny discs.
    for _ in 0..r.below(3) {
        let (bx, by, br) = (uniform(r, 0.0, 32.0), uniform(r, 0.0, 32.0), uniform(r, 1.5, 3.0));
        let col = hsv(uniform(r, 0.0, 360.0), uniform(r, 0.2, 0.9), uniform(r, 0.3, 1.0));
        let alpha = uniform(r, 0.3, 0.7);
        paint(&mut img, col, (bx, by, br), |x, y| {
            let d2 = (x - bx).powi(2) + (y - by).powi(2);
            alpha * (1.0 - d2 / (br * br)).max(0.0)
        });
    }

    // The object.
    let rad = uniform(r, 5.0, 11.0);
    let (cx, cy) = (uniform(r, 7.0, 25.0), uniform(r, 7.0, 25.0));
    let hue = family + 40.0 * r.normal() as f32;
    let col = hsv(hue, uniform(r, 0.45, 1.0), uniform(r, 0.45, 1.0));
    let alpha = uniform(r, 0.55, 1.0);
    let theta = match shape {
        2 => uniform(r, 0.0, std::f32::consts::FRAC_PI_2),
        3 => uniform(r, -0.25, 0.25),
        4 => std::f32::consts::FRAC_PI_2 + uniform(r, -0.25, 0.25),
        _ => 0.0,
    };
    let (sin, cos) = theta.sin_cos();
    let wavelength = uniform(r, 3.5, 6.0);
    let phase = uniform(r, 0.0, std::f32::consts::TAU);
    let ring_half_width = (0.2 * rad).max(1.0);
    // A square's corners reach 0.8·√2 ≈ 1.13 radii from the centre.
    paint(&mut img, col, (cx, cy, 1.2 * rad), |x, y| {
        let (dx, dy) = (x - cx, y - cy);
        let len = (dx * dx + dy * dy).sqrt();
        let a = match shape {
            0 => coverage(len - rad),
            1 => coverage((len - 0.75 * rad).abs() - ring_half_width),
            2 => {
                let (u, v) = (cos * dx + sin * dy, -sin * dx + cos * dy);
                coverage(u.abs().max(v.abs()) - 0.8 * rad)
            }
            _ => {
                // Stripes run along θ: the intensity varies across them.
                let across = -sin * dx + cos * dy;
                let stripe = (0.5 + 0.9 * (std::f32::consts::TAU * across / wavelength + phase).sin()).clamp(0.0, 1.0);
                coverage(len - rad) * stripe
            }
        };
        alpha * a
    });

    // Pixel noise, roughly Gaussian (a sum of four uniforms), with a per-image strength.
    let sigma = uniform(r, 4.0, 24.0) / 255.0;
    // Irwin–Hall with 4 terms: mean 2, standard deviation 1/√3.
    let k = sigma * 3f32.sqrt() / 65536.0;
    for (c, plane) in img.iter().enumerate() {
        for (p, &v) in plane.iter().enumerate() {
            let bits = r.next_u64();
            let sum = (bits & 0xffff) + (bits >> 16 & 0xffff) + (bits >> 32 & 0xffff) + (bits >> 48);
            let noise = (sum as f32 - 2.0 * 65536.0) * k;
            out[c * PLANE + p] = ((v + noise) * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Blends `col` over the image with per-pixel opacity `alpha(x, y)` (at pixel centres), which
/// is zero outside the disc `(cx, cy, r)`.
fn paint(img: &mut [[f32; PLANE]; 3], col: [f32; 3], (cx, cy, r): (f32, f32, f32), alpha: impl Fn(f32, f32) -> f32) {
    let span = |c: f32| {
        (
            (c - r - 1.0).max(0.0) as usize,
            ((c + r + 1.0).max(0.0) as usize).min(SIDE),
        )
    };
    let ((x0, x1), (y0, y1)) = (span(cx), span(cy));
    for y in y0..y1 {
        for x in x0..x1 {
            let a = alpha(x as f32 + 0.5, y as f32 + 0.5);
            if a > 0.0 {
                let p = y * SIDE + x;
                for c in 0..3 {
                    img[c][p] += a * (col[c] - img[c][p]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_seed_and_split() {
        let a = generate(30, 4, "synthetic-train");
        assert_eq!(a, generate(30, 4, "synthetic-train"));
        assert_ne!(a.images, generate(30, 5, "synthetic-train").images);
        assert_ne!(a.images, generate(30, 4, "synthetic-test").images);
        // A prefix of a larger set is the smaller set: image i depends only on (seed, split, i).
        let b = generate(50, 4, "synthetic-train");
        assert_eq!(a.images[..], b.images[..a.images.len()]);
    }

    #[test]
    fn classes_are_balanced() {
        let s = generate(1003, 1, "synthetic-train");
        let mut counts = [0usize; CLASSES];
        for &l in &s.labels {
            counts[l as usize] += 1;
        }
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(hi - lo <= 1 && counts.iter().sum::<usize>() == 1003, "{counts:?}");
        assert_eq!(s.images.len(), 1003 * 3 * PLANE);
    }

    #[test]
    fn images_use_the_range_and_differ_within_a_class() {
        let s = generate(20, 2, "synthetic-train");
        let per = 3 * PLANE;
        let (first, same_class) = (&s.images[..per], &s.images[10 * per..11 * per]);
        assert_eq!(s.labels[0], s.labels[10]);
        assert_ne!(first, same_class);
        let min = *s.images.iter().min().unwrap();
        let max = *s.images.iter().max().unwrap();
        assert!(max - min > 150, "range {min}..{max}");
    }

    /// The families differ in colour: the mean of (red − blue) over the object classes of the
    /// warm family exceeds that of the cool family.
    #[test]
    fn colour_families_differ_in_hue() {
        let s = generate(400, 3, "synthetic-train");
        let per = 3 * PLANE;
        let mut warmth = [0f64; 2];
        for (img, &l) in s.images.chunks_exact(per).zip(&s.labels) {
            let red: f64 = img[..PLANE].iter().map(|&v| v as f64).sum();
            let blue: f64 = img[2 * PLANE..].iter().map(|&v| v as f64).sum();
            warmth[l as usize / SHAPES.len()] += red - blue;
        }
        assert!(warmth[0] > warmth[1] + 1e5, "{warmth:?}");
    }

    #[test]
    fn hsv_primaries() {
        assert_eq!(hsv(0.0, 1.0, 1.0), [1.0, 0.0, 0.0]);
        assert_eq!(hsv(120.0, 1.0, 1.0), [0.0, 1.0, 0.0]);
        assert_eq!(hsv(240.0, 1.0, 0.5), [0.0, 0.0, 0.5]);
        assert_eq!(hsv(-120.0, 0.0, 0.3), [0.3, 0.3, 0.3]);
    }
}
