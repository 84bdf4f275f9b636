//! Image-quality metrics of the standard SR protocol (docs/algorithm.md §8), computed on the luma
//! Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 (RGB in [0, 1], Y in [16, 235]) after shaving
//! `shave` pixels from every border; grayscale images are scored on their gray level (0..255).
//!
//! - PSNR-Y in dB (peak 255; higher is better).
//! - SSIM-Y in [-1, 1] (11x11 Gaussian window, sigma 1.5, 'valid' region, K1 = .01, K2 = .03).
//! - GMSD (Xue et al. 2014) in [0, ~0.35], lower is better: 2x2 mean + stride 2, Prewitt /3
//!   gradients, c = 170, std of the gradient-magnitude similarity map.
//! - HF ratio: mean squared 4-neighbour Laplacian of SR over that of HR; < 1 is blurrier than HR.
//! - Pattern (docs/tradeoff.md, as scripts/pattern_ratio.py): the luma's power in five bands of
//!   period from 2 to 5 px, along columns and along rows (each line's mean removed, averaged over
//!   the lines), SR over HR, the largest of the ten ratios; unshaved. Above 1 the output has more
//!   energy at some fine scale than the photo (a grain or hatching), which the HF ratio counts as
//!   detail. Measured on Pillow's 8-bit luma, as the script does: the two agree to 1e-4 (to six
//!   digits on PNGs; the HR decoders differ on JPEGs).
//!
//! Borders inside the filters use OpenCV's reflect-101, so the numbers match `sr_score.py`.

use crate::image::{reflect101, Image};
use serde::{Deserialize, Serialize};

/// A single-channel f64 plane.
#[derive(Clone, Debug)]
pub struct Plane {
    pub w: usize,
    pub h: usize,
    pub v: Vec<f64>,
}

impl Plane {
    fn at(&self, x: isize, y: isize) -> f64 {
        self.v[reflect101(y, self.h) * self.w + reflect101(x, self.w)]
    }

    pub fn shave(&self, s: usize) -> Plane {
        assert!(
            self.w > 2 * s && self.h > 2 * s,
            "image too small to shave {s}"
        );
        let (w, h) = (self.w - 2 * s, self.h - 2 * s);
        let mut v = Vec::with_capacity(w * h);
        for y in 0..h {
            v.extend_from_slice(&self.v[(y + s) * self.w + s..(y + s) * self.w + s + w]);
        }
        Plane { w, h, v }
    }

    /// OpenCV `filter2D` (correlation, anchor at kernel centre k/2, reflect-101 borders).
    fn filter(&self, k: &[f64], kw: usize, kh: usize) -> Plane {
        let (ax, ay) = ((kw / 2) as isize, (kh / 2) as isize);
        let mut v = vec![0.0; self.w * self.h];
        for y in 0..self.h as isize {
            for x in 0..self.w as isize {
                let mut acc = 0.0;
                for j in 0..kh as isize {
                    for i in 0..kw as isize {
                        acc += k[(j * kw as isize + i) as usize] * self.at(x + i - ax, y + j - ay);
                    }
                }
                v[y as usize * self.w + x as usize] = acc;
            }
        }
        Plane {
            w: self.w,
            h: self.h,
            v,
        }
    }

    fn map2(&self, o: &Plane, f: impl Fn(f64, f64) -> f64) -> Plane {
        Plane {
            w: self.w,
            h: self.h,
            v: self.v.iter().zip(&o.v).map(|(a, b)| f(*a, *b)).collect(),
        }
    }
}

/// Y of an RGB image in [0, 1]; `gray` rescales to the 0..255 gray level instead.
pub fn luma(img: &Image, gray: bool) -> Plane {
    let rgb = img.to_rgb();
    let (r, g, b) = (rgb.plane(0), rgb.plane(1), rgb.plane(2));
    let v = (0..img.pixels())
        .map(|i| {
            // Same arithmetic as the reference: 8-bit values, then the BT.601 formula.
            let (r, g, b) = (
                r[i] as f64 * 255.0,
                g[i] as f64 * 255.0,
                b[i] as f64 * 255.0,
            );
            let y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
            if gray {
                (y - 16.0) * 255.0 / 219.0
            } else {
                y
            }
        })
        .collect();
    Plane {
        w: img.width,
        h: img.height,
        v,
    }
}

/// 8-bit luma as Pillow's `convert("L")` computes it (ITU-R 601-2 weights in 16-bit fixed point,
/// rounded): the plane scripts/pattern_ratio.py measures the pattern on.
pub fn pil_luma(img: &Image) -> Plane {
    let rgb = img.to_rgb();
    let (r, g, b) = (rgb.plane(0), rgb.plane(1), rgb.plane(2));
    let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u32;
    let v = (0..img.pixels())
        .map(|i| ((q(r[i]) * 19595 + q(g[i]) * 38470 + q(b[i]) * 7471 + 0x8000) >> 16) as f64)
        .collect();
    Plane {
        w: img.width,
        h: img.height,
        v,
    }
}

pub fn psnr(a: &Plane, b: &Plane) -> f64 {
    let mse =
        a.v.iter()
            .zip(&b.v)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            / a.v.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

fn gaussian_window(n: usize, sigma: f64) -> Vec<f64> {
    let c = (n / 2) as f64;
    let g: Vec<f64> = (0..n)
        .map(|i| (-(i as f64 - c).powi(2) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = g.iter().sum();
    let g: Vec<f64> = g.iter().map(|v| v / s).collect();
    let mut k = vec![0.0; n * n];
    for j in 0..n {
        for i in 0..n {
            k[j * n + i] = g[j] * g[i];
        }
    }
    k
}

pub fn ssim(a: &Plane, b: &Plane) -> f64 {
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let win = gaussian_window(11, 1.5);
    let f = |p: &Plane| p.filter(&win, 11, 11).shave(5);
    let (mu1, mu2) = (f(a), f(b));
    let s11 = f(&a.map2(a, |x, y| x * y));
    let s22 = f(&b.map2(b, |x, y| x * y));
    let s12 = f(&a.map2(b, |x, y| x * y));
    let mut acc = 0.0;
    for i in 0..mu1.v.len() {
        let (m1, m2) = (mu1.v[i], mu2.v[i]);
        let v1 = s11.v[i] - m1 * m1;
        let v2 = s22.v[i] - m2 * m2;
        let cov = s12.v[i] - m1 * m2;
        acc +=
            ((2.0 * m1 * m2 + c1) * (2.0 * cov + c2)) / ((m1 * m1 + m2 * m2 + c1) * (v1 + v2 + c2));
    }
    acc / mu1.v.len() as f64
}

/// GMSD of distorted `a` against reference `b` (Y in 0..255).
pub fn gmsd(a: &Plane, b: &Plane) -> f64 {
    let k2 = [0.25; 4];
    let down = |p: &Plane| {
        let f = p.filter(&k2, 2, 2);
        let (w, h) = (p.w.div_ceil(2), p.h.div_ceil(2));
        let mut v = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                v.push(f.v[2 * y * p.w + 2 * x]);
            }
        }
        Plane { w, h, v }
    };
    let (a, b) = (down(a), down(b));
    let hx = [
        1.0 / 3.0,
        0.0,
        -1.0 / 3.0,
        1.0 / 3.0,
        0.0,
        -1.0 / 3.0,
        1.0 / 3.0,
        0.0,
        -1.0 / 3.0,
    ];
    let hy = [
        1.0 / 3.0,
        1.0 / 3.0,
        1.0 / 3.0,
        0.0,
        0.0,
        0.0,
        -1.0 / 3.0,
        -1.0 / 3.0,
        -1.0 / 3.0,
    ];
    let mag = |p: &Plane| {
        p.filter(&hx, 3, 3)
            .map2(&p.filter(&hy, 3, 3), |x, y| (x * x + y * y).sqrt())
    };
    let (ma, mb) = (mag(&a), mag(&b));
    let c = 170.0;
    let gms: Vec<f64> =
        ma.v.iter()
            .zip(&mb.v)
            .map(|(x, y)| (2.0 * x * y + c) / (x * x + y * y + c))
            .collect();
    let mean = gms.iter().sum::<f64>() / gms.len() as f64;
    (gms.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gms.len() as f64).sqrt()
}

fn laplacian_energy(p: &Plane) -> f64 {
    let k = [0.0, 1.0, 0.0, 1.0, -4.0, 1.0, 0.0, 1.0, 0.0];
    let l = p.filter(&k, 3, 3);
    l.v.iter().map(|v| v * v).sum::<f64>() / l.v.len() as f64
}

/// Laplacian energy of `a` (SR) over that of `b` (HR).
pub fn hf_ratio(a: &Plane, b: &Plane) -> f64 {
    laplacian_energy(a) / laplacian_energy(b).max(1e-12)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub psnr_y: f64,
    pub ssim_y: f64,
    pub gmsd: f64,
    pub hf_ratio: f64,
    #[serde(default)]
    pub pattern: f64,
}

/// All five metrics of `sr` against `hr` (same size, RGB in [0, 1]; quantise `sr` to 8 bits
/// first to score what a saved file would hold).
pub fn score(sr: &Image, hr: &Image, shave: usize, gray: bool) -> Scores {
    assert_eq!(
        (sr.width, sr.height),
        (hr.width, hr.height),
        "SR and HR sizes differ"
    );
    let pattern = pattern(&pil_luma(sr), &pil_luma(hr));
    let ys = luma(sr, gray).shave(shave);
    let yh = luma(hr, gray).shave(shave);
    Scores {
        psnr_y: psnr(&ys, &yh),
        ssim_y: ssim(&ys, &yh),
        gmsd: gmsd(&ys, &yh),
        hf_ratio: hf_ratio(&ys, &yh),
        pattern,
    }
}

/// The pattern measure's bands in cycles per pixel, (low, high]: periods 2-2.5, 2.5-2.9,
/// 2.9-3.3, 3.3-4 and 4-5 px.
pub const PATTERN_BANDS: [(f64, f64); 5] = [
    (0.4, 0.5),
    (0.35, 0.4),
    (0.3, 0.35),
    (0.25, 0.3),
    (0.2, 0.25),
];

/// The DFT bins k (frequency k / len) of a line of `len` samples in each of PATTERN_BANDS; a band
/// too narrow for any bin at this length is empty.
pub fn band_bins(len: usize) -> Vec<Vec<usize>> {
    PATTERN_BANDS
        .iter()
        .map(|&(lo, hi)| {
            (1..=len / 2)
                .filter(|&k| {
                    let f = k as f64 / len as f64;
                    f > lo && f <= hi
                })
                .collect()
        })
        .collect()
}

/// Power |DFT_k|^2 summed over each band's bins, of every line (its mean removed) of `p` along x
/// (`along_x`) or along y, averaged over the lines.
fn band_power(p: &Plane, along_x: bool) -> [f64; 5] {
    let (len, lines) = if along_x { (p.w, p.h) } else { (p.h, p.w) };
    let bins = band_bins(len);
    let all: Vec<usize> = bins.iter().flatten().copied().collect();
    // cos/sin tables [bin][i], by the exact phase k i mod len.
    let table = |f: fn(f64) -> f64| -> Vec<Vec<f64>> {
        all.iter()
            .map(|&k| {
                (0..len)
                    .map(|i| f(2.0 * std::f64::consts::PI * ((k * i) % len) as f64 / len as f64))
                    .collect()
            })
            .collect()
    };
    let (cos, sin) = (table(f64::cos), table(f64::sin));
    let mut power = vec![0.0; all.len()];
    let mut line = vec![0.0; len];
    for j in 0..lines {
        for (i, v) in line.iter_mut().enumerate() {
            *v = if along_x {
                p.v[j * p.w + i]
            } else {
                p.v[i * p.w + j]
            };
        }
        let mean = line.iter().sum::<f64>() / len as f64;
        line.iter_mut().for_each(|v| *v -= mean);
        for (b, pw) in power.iter_mut().enumerate() {
            let re: f64 = line.iter().zip(&cos[b]).map(|(v, c)| v * c).sum();
            let im: f64 = line.iter().zip(&sin[b]).map(|(v, s)| v * s).sum();
            *pw += re * re + im * im;
        }
    }
    let mut out = [0.0; 5];
    let mut at = 0;
    for (o, b) in out.iter_mut().zip(&bins) {
        *o = power[at..at + b.len()].iter().sum::<f64>() / lines.max(1) as f64;
        at += b.len();
    }
    out
}

/// The pattern ratio of `sr` against `hr` (same size, unshaved luma): the largest over the bands
/// and the two axes of SR's band power over HR's.
pub fn pattern(sr: &Plane, hr: &Plane) -> f64 {
    let mut worst: f64 = 0.0;
    for along_x in [false, true] {
        let (s, h) = (band_power(sr, along_x), band_power(hr, along_x));
        for (a, b) in s.iter().zip(&h) {
            worst = worst.max(a / b.max(1e-12));
        }
    }
    worst
}

impl Scores {
    pub fn mean(all: &[Scores]) -> Scores {
        let n = all.len().max(1) as f64;
        Scores {
            psnr_y: all.iter().map(|s| s.psnr_y).sum::<f64>() / n,
            ssim_y: all.iter().map(|s| s.ssim_y).sum::<f64>() / n,
            gmsd: all.iter().map(|s| s.gmsd).sum::<f64>() / n,
            hf_ratio: all.iter().map(|s| s.hf_ratio).sum::<f64>() / n,
            pattern: all.iter().map(|s| s.pattern).sum::<f64>() / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(w: usize, h: usize, f: impl Fn(usize, usize) -> f64) -> Plane {
        Plane {
            w,
            h,
            v: (0..w * h).map(|i| f(i % w, i / w)).collect(),
        }
    }

    /// Pillow's luma of pure red, green, blue and one mixed colour (as `Image.convert("L")`
    /// printed them: 76, 150, 29, 124).
    #[test]
    fn pil_luma_matches_pillow() {
        let px = [
            [255.0, 0.0, 0.0],
            [0.0, 255.0, 0.0],
            [0.0, 0.0, 255.0],
            [200.0, 100.0, 50.0],
        ];
        let mut data = vec![0.0f32; 12];
        for (i, p) in px.iter().enumerate() {
            for c in 0..3 {
                data[c * 4 + i] = p[c] / 255.0;
            }
        }
        let img = Image::new(4, 1, 3, data).unwrap();
        assert_eq!(pil_luma(&img).v, vec![76.0, 150.0, 29.0, 124.0]);
    }

    /// The pattern ratio by hand: a photo of a 4-px cosine along x (amplitude 2) and a 3-px
    /// one along y (amplitude 1); an output with the 4-px one at 3 has 9/4 of its power in the
    /// 4-5 px band along x and the same elsewhere: 2.25. A blurrier output (both halved) has 1/4.
    /// A band an output fills where the photo has nothing is only bounded by the floor.
    #[test]
    fn pattern_by_hand() {
        let img = |a: f64, b: f64| {
            plane(48, 36, |x, y| {
                let t = std::f64::consts::TAU;
                100.0 + a * (t * x as f64 / 4.0).cos() + b * (t * y as f64 / 3.0).cos()
            })
        };
        let hr = img(2.0, 1.0);
        assert!((pattern(&hr, &hr) - 1.0).abs() < 1e-9);
        let p = pattern(&img(3.0, 1.0), &hr);
        assert!((p - 2.25).abs() < 1e-9, "{p}");
        let p = pattern(&img(1.0, 0.5), &hr);
        assert!((p - 0.25).abs() < 1e-9, "{p}");
        // A 2-px grain on a photo with no fine detail at all.
        let flat = plane(48, 36, |_, _| 100.0);
        let grain = plane(48, 36, |x, _| 100.0 + if x % 2 == 0 { 1.0 } else { -1.0 });
        assert!(pattern(&grain, &flat) > 1e9);
        // 48 px: bins 10..12 (4-5 px) ... 20..24 (2-2.5 px), each band has some.
        assert!(band_bins(48).iter().all(|b| !b.is_empty()));
        assert_eq!(band_bins(48)[4], vec![10, 11, 12]);
    }

    #[test]
    fn psnr_by_hand() {
        // Every pixel off by 5: MSE 25, PSNR = 10 log10(65025 / 25) = 34.1514 dB.
        let a = plane(8, 8, |x, y| (x * y) as f64);
        let b = plane(8, 8, |x, y| (x * y) as f64 + 5.0);
        assert!((psnr(&a, &b) - 34.151_403_521_958_5).abs() < 1e-9);
        assert!(psnr(&a, &a).is_infinite());
    }

    #[test]
    fn luma_of_white_and_gray() {
        let white = Image::new(1, 1, 3, vec![1.0, 1.0, 1.0]).unwrap();
        assert!((luma(&white, false).v[0] - 235.0).abs() < 1e-9);
        assert!((luma(&white, true).v[0] - 255.0).abs() < 1e-9);
    }

    #[test]
    fn ssim_identical_and_constant_offset() {
        let a = plane(16, 16, |x, y| ((x * 7 + y * 3) % 17) as f64 * 10.0);
        assert!((ssim(&a, &a) - 1.0).abs() < 1e-12);
        // A constant offset d changes only the luminance term: (2 m (m + d) + C1) / (m^2 + (m+d)^2 + C1).
        let flat = plane(16, 16, |_, _| 100.0);
        let off = plane(16, 16, |_, _| 110.0);
        let c1 = (0.01f64 * 255.0).powi(2);
        let expect = (2.0 * 100.0 * 110.0 + c1) / (100.0f64.powi(2) + 110.0f64.powi(2) + c1);
        assert!((ssim(&off, &flat) - expect).abs() < 1e-9);
    }

    #[test]
    fn gmsd_and_hf_ratio_basics() {
        let a = plane(20, 20, |x, y| ((x * 13 + y * 7) % 11) as f64 * 20.0);
        assert!(gmsd(&a, &a).abs() < 1e-12);
        assert!((hf_ratio(&a, &a) - 1.0).abs() < 1e-12);
        // Doubling the contrast quadruples the Laplacian energy.
        let b = plane(20, 20, |x, y| ((x * 13 + y * 7) % 11) as f64 * 40.0);
        assert!((hf_ratio(&b, &a) - 4.0).abs() < 1e-9);
        // A flat image has no gradients: GMS = 1 everywhere where the reference is flat too.
        let flat = plane(20, 20, |_, _| 50.0);
        assert!(gmsd(&flat, &flat).abs() < 1e-12);
        assert!(gmsd(&flat, &a) > 0.0);
    }

    #[test]
    fn laplacian_by_hand() {
        // A single bright pixel in the middle of 5x5 zeros: Laplacian -4v at the centre, v at the
        // four neighbours, 0 elsewhere: energy = (16 + 4) v^2 / 25.
        let p = plane(5, 5, |x, y| if x == 2 && y == 2 { 3.0 } else { 0.0 });
        assert!((laplacian_energy(&p) - 20.0 * 9.0 / 25.0).abs() < 1e-12);
    }
}
