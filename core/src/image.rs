//! Planar float images: `data[c * h * w + y * w + x]`, values nominally in [0, 1].
//!
//! Everything in core that touches pixels (resizing, degradations, tiling, metrics) works on this
//! one type; decoding and encoding files is the binaries' job (the web and native differ there).

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<f32>,
}

impl Image {
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<f32>) -> Result<Self> {
        if width == 0 || height == 0 || channels == 0 {
            return Err(Error::InvalidImage(format!(
                "empty image ({width}x{height}x{channels})"
            )));
        }
        if data.len() != width * height * channels {
            return Err(Error::InvalidImage(format!(
                "{} values for a {width}x{height}x{channels} image",
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            channels,
            data,
        })
    }

    pub fn zeros(width: usize, height: usize, channels: usize) -> Self {
        Self {
            width,
            height,
            channels,
            data: vec![0.0; width * height * channels],
        }
    }

    /// From interleaved 8-bit samples (RGB8, L8, RGBA8 ...).
    pub fn from_interleaved_u8(
        width: usize,
        height: usize,
        channels: usize,
        px: &[u8],
    ) -> Result<Self> {
        Self::from_interleaved(width, height, channels, px, |v| v as f32 / 255.0)
    }

    /// From interleaved 16-bit samples.
    pub fn from_interleaved_u16(
        width: usize,
        height: usize,
        channels: usize,
        px: &[u16],
    ) -> Result<Self> {
        Self::from_interleaved(width, height, channels, px, |v| v as f32 / 65535.0)
    }

    fn from_interleaved<T: Copy>(
        width: usize,
        height: usize,
        channels: usize,
        px: &[T],
        f: impl Fn(T) -> f32,
    ) -> Result<Self> {
        if px.len() != width * height * channels {
            return Err(Error::InvalidImage(format!(
                "{} samples for a {width}x{height}x{channels} image",
                px.len()
            )));
        }
        let n = width * height;
        let mut data = vec![0.0; n * channels];
        for (i, chunk) in px.chunks_exact(channels).enumerate() {
            for (c, &v) in chunk.iter().enumerate() {
                data[c * n + i] = f(v);
            }
        }
        Self::new(width, height, channels, data)
    }

    /// Interleaved 8-bit samples, rounded and clamped.
    pub fn to_interleaved_u8(&self) -> Vec<u8> {
        self.to_interleaved(|v| quantize(v, 255.0) as u8)
    }

    /// Interleaved 16-bit samples, rounded and clamped.
    pub fn to_interleaved_u16(&self) -> Vec<u16> {
        self.to_interleaved(|v| quantize(v, 65535.0) as u16)
    }

    fn to_interleaved<T: Copy + Default>(&self, f: impl Fn(f32) -> T) -> Vec<T> {
        let n = self.width * self.height;
        let mut out = vec![T::default(); n * self.channels];
        for c in 0..self.channels {
            for i in 0..n {
                out[i * self.channels + c] = f(self.data[c * n + i]);
            }
        }
        out
    }

    pub fn plane(&self, c: usize) -> &[f32] {
        let n = self.width * self.height;
        &self.data[c * n..(c + 1) * n]
    }

    pub fn plane_mut(&mut self, c: usize) -> &mut [f32] {
        let n = self.width * self.height;
        &mut self.data[c * n..(c + 1) * n]
    }

    pub fn pixels(&self) -> usize {
        self.width * self.height
    }

    /// Copy of the rectangle (x, y, w, h); it must lie inside the image.
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Image {
        assert!(
            x + w <= self.width && y + h <= self.height,
            "crop outside image"
        );
        let mut out = Image::zeros(w, h, self.channels);
        for c in 0..self.channels {
            let src = self.plane(c);
            let dst = out.plane_mut(c);
            for r in 0..h {
                let s = (y + r) * self.width + x;
                dst[r * w..(r + 1) * w].copy_from_slice(&src[s..s + w]);
            }
        }
        out
    }

    /// Pad to (w, h) by mirroring (reflect-101) the right and bottom edges.
    pub fn pad_reflect(&self, w: usize, h: usize) -> Image {
        assert!(w >= self.width && h >= self.height);
        let mut out = Image::zeros(w, h, self.channels);
        for c in 0..self.channels {
            let src = self.plane(c);
            let dst = out.plane_mut(c);
            for y in 0..h {
                let sy = reflect101(y as isize, self.height);
                for x in 0..w {
                    dst[y * w + x] = src[sy * self.width + reflect101(x as isize, self.width)];
                }
            }
        }
        out
    }

    /// Round every sample to the nearest of `levels + 1` levels in [0, 1] (8-bit: 255).
    pub fn quantized(&self, levels: f32) -> Image {
        let mut out = self.clone();
        out.data
            .iter_mut()
            .for_each(|v| *v = quantize(*v, levels) / levels);
        out
    }

    /// Keep the first three channels (drops alpha); a one-channel image is replicated to RGB.
    pub fn to_rgb(&self) -> Image {
        match self.channels {
            3 => self.clone(),
            1 | 2 => {
                let p = self.plane(0);
                let mut data = Vec::with_capacity(p.len() * 3);
                for _ in 0..3 {
                    data.extend_from_slice(p);
                }
                Image::new(self.width, self.height, 3, data).expect("sizes match")
            }
            _ => Image::new(
                self.width,
                self.height,
                3,
                self.data[..3 * self.pixels()].to_vec(),
            )
            .expect("sizes match"),
        }
    }

    /// Map [0, 1] to [-1, 1] (the model's range) or back.
    pub fn to_signed(&self) -> Vec<f32> {
        self.data.iter().map(|v| v * 2.0 - 1.0).collect()
    }
}

/// RGB in [0, 1] (+ alpha) to rounded 8-bit RGBA (as canvases take it); opaque without alpha.
pub fn to_rgba(rgb: &Image, alpha: Option<&Image>) -> Vec<u8> {
    let n = rgb.width * rgb.height;
    let mut out = vec![255u8; 4 * n];
    for c in 0..3 {
        for (i, &v) in rgb.plane(c).iter().enumerate() {
            out[4 * i + c] = quantize(v, 255.0) as u8;
        }
    }
    if let Some(a) = alpha {
        set_alpha(&mut out, a);
    }
    out
}

/// Write a one-channel alpha in [0, 1] into the 4th byte of every RGBA pixel.
pub fn set_alpha(rgba: &mut [u8], alpha: &Image) {
    for (px, &v) in rgba.chunks_exact_mut(4).zip(alpha.plane(0)) {
        px[3] = quantize(v, 255.0) as u8;
    }
}

/// round(clamp(v) * levels), ties to even as numpy does.
#[inline]
pub fn quantize(v: f32, levels: f32) -> f32 {
    (v.clamp(0.0, 1.0) * levels).round_ties_even()
}

/// The largest per-value difference of two images of one shape (for tests).
#[cfg(test)]
pub(crate) fn max_diff(a: &Image, b: &Image) -> f32 {
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Reflect-101 (OpenCV's default border: ... 2 1 | 0 1 2 ... n-1 | n-2 ...).
#[inline]
pub fn reflect101(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let n = n as isize;
    let period = 2 * (n - 1);
    let mut i = i.rem_euclid(period);
    if i >= n {
        i = period - i;
    }
    i as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_round_trip() {
        let px: Vec<u8> = (0..2 * 3 * 3).map(|v| (v * 13) as u8).collect();
        let im = Image::from_interleaved_u8(2, 3, 3, &px).unwrap();
        assert_eq!(im.data[0], 0.0);
        assert_eq!(im.plane(1)[0], 13.0 / 255.0);
        assert_eq!(im.to_interleaved_u8(), px);
    }

    #[test]
    fn reflect_indices() {
        let got: Vec<usize> = (-3..7).map(|i| reflect101(i, 4)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }

    #[test]
    fn empty_is_an_error() {
        assert!(Image::new(0, 4, 3, vec![]).is_err());
        assert!(Image::new(2, 2, 3, vec![0.0; 5]).is_err());
    }
}
