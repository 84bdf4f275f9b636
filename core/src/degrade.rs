//! Training degradations (docs/algorithm.md §7), BasicSR-style: seeded pure functions whose
//! probabilities and ranges live in a serialisable [`DegradeConfig`].
//!
//! With probability `p_bicubic` the LR image is the benchmark's MATLAB bicubic downscale; otherwise
//! a moderate Real-ESRGAN-like chain: blur (isotropic or anisotropic Gaussian) -> random resize ->
//! noise (Gaussian, or signal-dependent shot noise) -> JPEG -> final bicubic resize to HR/scale.
//! Every output is rounded to 8 bits, as a real LR file would be.

use crate::error::{Error, Result};
use crate::image::Image;
use crate::resize::{check_scale, downscale_lr, imresize, imresize_to};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DegradeConfig {
    /// Probability of the plain benchmark bicubic downscale.
    pub p_bicubic: f32,
    /// Probability of a blur in the real-world chain, its sigma range (HR pixels) and the share
    /// of anisotropic kernels.
    pub p_blur: f32,
    pub blur_sigma: [f32; 2],
    pub p_aniso: f32,
    /// Random resize factor range (before the final resize).
    pub resize: [f32; 2],
    /// Noise: probability, sigma range in 8-bit levels, share of gray (luma-only) noise and of
    /// shot (signal-dependent) noise.
    pub p_noise: f32,
    pub noise_sigma: [f32; 2],
    pub p_gray_noise: f32,
    pub p_shot_noise: f32,
    /// JPEG: probability and quality range.
    pub p_jpeg: f32,
    pub jpeg_quality: [u8; 2],
}

impl Default for DegradeConfig {
    fn default() -> Self {
        Self {
            p_bicubic: 0.3,
            p_blur: 0.8,
            blur_sigma: [0.2, 2.0],
            p_aniso: 0.3,
            resize: [0.5, 1.5],
            p_noise: 0.8,
            noise_sigma: [1.0, 15.0],
            p_gray_noise: 0.4,
            p_shot_noise: 0.3,
            p_jpeg: 0.8,
            jpeg_quality: [50, 95],
        }
    }
}

impl DegradeConfig {
    /// Only the benchmark protocol's bicubic downscale.
    pub fn bicubic_only() -> Self {
        Self {
            p_bicubic: 1.0,
            ..Self::default()
        }
    }
}

/// LR image (HR size / scale, 8-bit levels) for `hr` (RGB, a multiple of `scale` in size).
pub fn degrade(hr: &Image, scale: u32, cfg: &DegradeConfig, seed: u64) -> Result<Image> {
    check_scale(scale)?;
    let s = scale as usize;
    if !hr.width.is_multiple_of(s) || !hr.height.is_multiple_of(s) || hr.channels != 3 {
        return Err(Error::BadParam(format!(
            "degrade needs an RGB image a multiple of {s} in size, got {}x{}x{}",
            hr.width, hr.height, hr.channels
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    if rng.random::<f32>() < cfg.p_bicubic {
        return downscale_lr(hr, scale);
    }
    let mut img = hr.clone();
    if rng.random::<f32>() < cfg.p_blur {
        let sx = rng.random_range(cfg.blur_sigma[0]..=cfg.blur_sigma[1]);
        let (sy, theta) = if rng.random::<f32>() < cfg.p_aniso {
            (
                rng.random_range(cfg.blur_sigma[0]..=cfg.blur_sigma[1]),
                rng.random_range(0.0..std::f32::consts::PI),
            )
        } else {
            (sx, 0.0)
        };
        img = convolve(&img, &gaussian_kernel(sx, sy, theta));
    }
    // Random resize relative to the final LR size's scale 1/s.
    let r = rng.random_range(cfg.resize[0]..=cfg.resize[1]);
    let f = (r / scale as f32).min(1.0) as f64;
    let w = ((img.width as f64 * f).round() as usize).max(1);
    let h = ((img.height as f64 * f).round() as usize).max(1);
    img = imresize_to(
        &img,
        w,
        h,
        w as f64 / img.width as f64,
        h as f64 / img.height as f64,
        false,
    );
    if rng.random::<f32>() < cfg.p_noise {
        let sigma = rng.random_range(cfg.noise_sigma[0]..=cfg.noise_sigma[1]) / 255.0;
        let gray = rng.random::<f32>() < cfg.p_gray_noise;
        let shot = rng.random::<f32>() < cfg.p_shot_noise;
        add_noise(&mut img, sigma, gray, shot, &mut rng);
    }
    if rng.random::<f32>() < cfg.p_jpeg {
        let q = rng.random_range(cfg.jpeg_quality[0]..=cfg.jpeg_quality[1]);
        img = jpeg_round_trip(&img, q)?;
    }
    let (ow, oh) = (hr.width / s, hr.height / s);
    let out = imresize_to(
        &img,
        ow,
        oh,
        ow as f64 / img.width as f64,
        oh as f64 / img.height as f64,
        false,
    );
    Ok(out.quantized(255.0))
}

/// Normalised 2-D Gaussian with std (sx, sy) rotated by theta; radius 3 sigma.
pub fn gaussian_kernel(sx: f32, sy: f32, theta: f32) -> (Vec<f32>, usize) {
    let r = (3.0 * sx.max(sy)).ceil().max(1.0) as isize;
    let n = (2 * r + 1) as usize;
    let (c, s) = (theta.cos(), theta.sin());
    let mut k = Vec::with_capacity(n * n);
    for y in -r..=r {
        for x in -r..=r {
            let (x, y) = (x as f32, y as f32);
            let u = c * x + s * y;
            let v = -s * x + c * y;
            k.push((-(u * u / (2.0 * sx * sx) + v * v / (2.0 * sy * sy))).exp());
        }
    }
    let sum: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    (k, n)
}

/// Correlate every channel with a square kernel, reflect-101 borders.
pub fn convolve(img: &Image, kernel: &(Vec<f32>, usize)) -> Image {
    let (k, n) = kernel;
    let r = (*n / 2) as isize;
    let mut out = Image::zeros(img.width, img.height, img.channels);
    for ch in 0..img.channels {
        let src = img.plane(ch);
        let dst = out.plane_mut(ch);
        for y in 0..img.height as isize {
            for x in 0..img.width as isize {
                let mut acc = 0.0;
                for j in -r..=r {
                    let sy = crate::image::reflect101(y + j, img.height) * img.width;
                    for i in -r..=r {
                        let sx = crate::image::reflect101(x + i, img.width);
                        acc += k[((j + r) * *n as isize + i + r) as usize] * src[sy + sx];
                    }
                }
                dst[y as usize * img.width + x as usize] = acc;
            }
        }
    }
    out
}

fn add_noise(img: &mut Image, sigma: f32, gray: bool, shot: bool, rng: &mut ChaCha8Rng) {
    let n = img.pixels();
    let draw = |rng: &mut ChaCha8Rng| -> f32 { StandardNormal.sample(rng) };
    let shared: Vec<f32> = if gray {
        (0..n).map(|_| draw(rng)).collect()
    } else {
        vec![]
    };
    for c in 0..img.channels {
        let p = img.plane_mut(c);
        for i in 0..n {
            let e = if gray { shared[i] } else { draw(rng) };
            // Shot noise: std grows with sqrt(signal) (Poisson-like), equal to sigma at mid-gray.
            let sd = if shot {
                sigma * (p[i].max(0.0) / 0.5).sqrt()
            } else {
                sigma
            };
            p[i] = (p[i] + sd * e).clamp(0.0, 1.0);
        }
    }
}

/// Encode as JPEG at `quality` and decode again.
pub fn jpeg_round_trip(img: &Image, quality: u8) -> Result<Image> {
    use image::codecs::jpeg::JpegEncoder;
    use image::ImageDecoder;
    let rgb = img.to_rgb();
    let px = rgb.to_interleaved_u8();
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, quality)
        .encode(
            &px,
            rgb.width as u32,
            rgb.height as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::InvalidImage(format!("jpeg encode: {e}")))?;
    let dec = image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(&buf))
        .map_err(|e| Error::InvalidImage(format!("jpeg decode: {e}")))?;
    let mut out = vec![0u8; dec.total_bytes() as usize];
    dec.read_image(&mut out)
        .map_err(|e| Error::InvalidImage(format!("jpeg decode: {e}")))?;
    Image::from_interleaved_u8(rgb.width, rgb.height, 3, &out)
}

/// A blurred version of `hr` at the same size (down then up by `scale`): the "negative" target of
/// prompt guidance (docs/algorithm.md §4).
pub fn down_up(hr: &Image, scale: u32) -> Result<Image> {
    let lr = downscale_lr(hr, scale)?;
    Ok(imresize(&lr, scale as f64, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_image(w: usize, h: usize) -> Image {
        let mut d = Vec::new();
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    d.push((((x * (c + 1) + y * 3) % 32) as f32 / 31.0).clamp(0.0, 1.0));
                }
            }
        }
        Image::new(w, h, 3, d).unwrap()
    }

    #[test]
    fn seeded_and_pure() {
        let hr = test_image(64, 48);
        let cfg = DegradeConfig {
            p_bicubic: 0.0,
            ..Default::default()
        };
        let a = degrade(&hr, 4, &cfg, 7).unwrap();
        let b = degrade(&hr, 4, &cfg, 7).unwrap();
        let c = degrade(&hr, 4, &cfg, 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!((a.width, a.height), (16, 12));
        // 8-bit levels only.
        assert!(a
            .data
            .iter()
            .all(|v| ((v * 255.0).round() - v * 255.0).abs() < 1e-4));
    }

    #[test]
    fn bicubic_only_is_the_benchmark_downscale() {
        let hr = test_image(32, 32);
        let lr = degrade(&hr, 2, &DegradeConfig::bicubic_only(), 1).unwrap();
        assert_eq!(lr, downscale_lr(&hr, 2).unwrap());
    }

    #[test]
    fn gaussian_kernel_sums_to_one_and_is_symmetric() {
        let (k, n) = gaussian_kernel(1.0, 1.0, 0.0);
        assert_eq!(n, 7);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(k[0], k[n * n - 1]);
        // Centre over its right neighbour: exp(1/2).
        assert!((k[24] / k[25] - 0.5f32.exp()).abs() < 1e-4);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(degrade(&test_image(30, 32), 4, &DegradeConfig::default(), 0).is_err());
        assert!(degrade(&test_image(32, 32), 3, &DegradeConfig::default(), 0).is_err());
    }
}
