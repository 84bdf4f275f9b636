//! MATLAB-style bicubic `imresize` (Keys cubic, a = -0.5; antialiased when shrinking; symmetric
//! padding), the resampler of the standard SR benchmark protocol (docs/algorithm.md §8).
//!
//! For a scale s the output index x (1-based) samples the input at u = x/s + (1 - 1/s)/2 with the
//! kernel s·k(s·d) when s < 1 (antialiasing) and k(d) otherwise. Rows are resized first, then
//! columns; `quantize` rounds to 8-bit levels after each pass as MATLAB does on uint8 images, which
//! makes the result match `sr_score.py make-lr` pixel for pixel.

use crate::error::{Error, Result};
use crate::image::Image;

fn cubic(x: f64) -> f64 {
    let ax = x.abs();
    let ax2 = ax * ax;
    let ax3 = ax2 * ax;
    if ax <= 1.0 {
        1.5 * ax3 - 2.5 * ax2 + 1.0
    } else if ax <= 2.0 {
        -0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0
    } else {
        0.0
    }
}

/// Per output index: `taps` (input index, weight) pairs, weights normalised to sum 1.
pub(crate) struct Contributions {
    pub(crate) taps: usize,
    pub(crate) index: Vec<usize>,
    pub(crate) weight: Vec<f64>,
}

pub(crate) fn contributions(in_len: usize, out_len: usize, scale: f64) -> Contributions {
    let antialias = scale < 1.0;
    let kw = if antialias { 4.0 / scale } else { 4.0 };
    let taps = kw.ceil() as usize + 2;
    let mut index = Vec::with_capacity(out_len * taps);
    let mut weight = Vec::with_capacity(out_len * taps);
    let period = 2 * in_len as i64;
    for x in 1..=out_len {
        let u = x as f64 / scale + 0.5 * (1.0 - 1.0 / scale);
        let left = (u - kw / 2.0).floor();
        let start = weight.len();
        for p in 0..taps {
            let ind = left + p as f64; // 1-based
            let d = u - ind;
            let w = if antialias {
                scale * cubic(scale * d)
            } else {
                cubic(d)
            };
            // Symmetric padding: [0 .. n-1, n-1 .. 0] repeated.
            let m = (ind as i64 - 1).rem_euclid(period);
            let i = if m < in_len as i64 { m } else { period - 1 - m };
            index.push(i as usize);
            weight.push(w);
        }
        let sum: f64 = weight[start..].iter().sum();
        weight[start..].iter_mut().for_each(|w| *w /= sum);
    }
    Contributions {
        taps,
        index,
        weight,
    }
}

/// Resize one plane along both axes (rows pass then columns pass).
pub(crate) fn resize_plane(
    src: &[f32],
    w: usize,
    rows: &Contributions,
    cols: &Contributions,
    out_h: usize,
    out_w: usize,
    quantize_passes: bool,
) -> Vec<f32> {
    // Quantised mode works on 8-bit levels (0..255) in f64, like MATLAB on uint8, so that exact
    // ties round the same way (half to even, as numpy's reference does).
    let (pre, post) = if quantize_passes {
        (255.0, 1.0 / 255.0)
    } else {
        (1.0, 1.0)
    };
    let round = |v: f64| -> f64 {
        if quantize_passes {
            v.round_ties_even().clamp(0.0, 255.0)
        } else {
            v
        }
    };
    let src: Vec<f64> = src
        .iter()
        .map(|&v| {
            if quantize_passes {
                (v as f64 * pre).round()
            } else {
                v as f64
            }
        })
        .collect();
    // Pass 1: height.
    let mut mid = vec![0f64; out_h * w];
    for oy in 0..out_h {
        let base = oy * rows.taps;
        let row = &mut mid[oy * w..(oy + 1) * w];
        for p in 0..rows.taps {
            let wt = rows.weight[base + p];
            if wt == 0.0 {
                continue;
            }
            let s = &src[rows.index[base + p] * w..rows.index[base + p] * w + w];
            for (m, &v) in row.iter_mut().zip(s) {
                *m += wt * v;
            }
        }
    }
    mid.iter_mut().for_each(|v| *v = round(*v));
    // Pass 2: width.
    let mut out = vec![0f32; out_h * out_w];
    for oy in 0..out_h {
        let row = &mid[oy * w..(oy + 1) * w];
        for ox in 0..out_w {
            let base = ox * cols.taps;
            let mut acc = 0f64;
            for p in 0..cols.taps {
                acc += cols.weight[base + p] * row[cols.index[base + p]];
            }
            out[oy * out_w + ox] = (round(acc) * post) as f32;
        }
    }
    out
}

/// Resize to (out_w, out_h), the same scale factor `scale` used for both axes, as MATLAB's
/// `imresize(img, scale)` (output size ceil(size * scale)) when the sizes agree.
pub fn imresize_to(
    img: &Image,
    out_w: usize,
    out_h: usize,
    scale_w: f64,
    scale_h: f64,
    quantize_passes: bool,
) -> Image {
    let rows = contributions(img.height, out_h, scale_h);
    let cols = contributions(img.width, out_w, scale_w);
    let mut data = Vec::with_capacity(out_w * out_h * img.channels);
    for c in 0..img.channels {
        data.extend(resize_plane(
            img.plane(c),
            img.width,
            &rows,
            &cols,
            out_h,
            out_w,
            quantize_passes,
        ));
    }
    Image::new(out_w, out_h, img.channels, data).expect("sizes match")
}

/// MATLAB `imresize(img, scale, 'bicubic')`: output size ceil(size * scale).
pub fn imresize(img: &Image, scale: f64, quantize_passes: bool) -> Image {
    let out_w = (img.width as f64 * scale).ceil() as usize;
    let out_h = (img.height as f64 * scale).ceil() as usize;
    imresize_to(
        img,
        out_w.max(1),
        out_h.max(1),
        scale,
        scale,
        quantize_passes,
    )
}

/// The benchmark's LR image: HR (already a multiple of `scale`) shrunk by 1/scale with 8-bit rounding.
pub fn downscale_lr(hr: &Image, scale: u32) -> Result<Image> {
    check_scale(scale)?;
    if !hr.width.is_multiple_of(scale as usize) || !hr.height.is_multiple_of(scale as usize) {
        return Err(Error::BadParam(format!(
            "{}x{} is not a multiple of the scale {scale}",
            hr.width, hr.height
        )));
    }
    Ok(imresize(hr, 1.0 / scale as f64, true))
}

/// Alpha is upscaled on its own with bicubic, clamped to [0, 1] (a mask, not an image to
/// hallucinate into): what `flowmapsr upscale` and the browser both do.
pub fn upscale_alpha(alpha: &Image, scale: u32) -> Image {
    let mut up = upscale(alpha, scale);
    up.data.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    up
}

/// Bicubic upscale by an integer factor in float (no rounding): the source x0 of the bridge.
pub fn upscale(lr: &Image, scale: u32) -> Image {
    imresize(lr, scale as f64, false)
}

pub fn check_scale(scale: u32) -> Result<()> {
    match scale {
        2 | 4 | 8 => Ok(()),
        s => Err(Error::BadScale(s)),
    }
}

/// Crop an image to a multiple of `scale` (top-left kept), as the protocol does with HR images.
pub fn crop_to_multiple(img: &Image, scale: u32) -> Image {
    let s = scale as usize;
    img.crop(0, 0, img.width - img.width % s, img.height - img.height % s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant() {
        let im = Image::new(7, 5, 1, vec![0.25; 35]).unwrap();
        for s in [0.5, 0.25, 2.0, 3.0] {
            let r = imresize(&im, s, false);
            assert!(r.data.iter().all(|v| (v - 0.25).abs() < 1e-6), "scale {s}");
        }
    }

    #[test]
    fn kernel_weights_by_hand() {
        // Upscaling x2: output 1 samples u = 1/2 + 1/4 = 0.75, left = floor(0.75 - 2) = -2,
        // taps at 1-based -2..3 → d = 2.75, 1.75, 0.75, -0.25, -1.25, -2.25.
        let c = contributions(4, 8, 2.0);
        let expect = [0.0, cubic(1.75), cubic(0.75), cubic(0.25), cubic(1.25), 0.0];
        let sum: f64 = expect.iter().sum();
        assert_eq!(c.taps, expect.len());
        for (w, e) in c.weight[..c.taps].iter().zip(expect) {
            assert!((w - e / sum).abs() < 1e-12);
        }
        // Symmetric padding: 1-based -2 → 0-based -3 → mirrored to index 2; 0 → index 0.
        assert_eq!(&c.index[..6], &[2, 1, 0, 0, 1, 2]);
    }

    #[test]
    fn downscale_then_size() {
        let im = Image::zeros(12, 8, 3);
        let lr = downscale_lr(&im, 4).unwrap();
        assert_eq!((lr.width, lr.height), (3, 2));
        assert!(downscale_lr(&Image::zeros(10, 8, 3), 4).is_err());
        assert!(downscale_lr(&im, 3).is_err());
    }
}
