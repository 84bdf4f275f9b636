//! The grain cut at inference (docs/realistic-training.md, "The grain is error"): every colour
//! plane y of the whole result becomes y - P_H y P_W, P_N the projector that keeps the frequencies
//! |f| >= [`GRAIN_CORNER`] cycles/px of a length-N signal. What it takes is the 2-D spectrum where
//! both frequencies are that high at once: the adversarial generator's 2-px grain, which is error
//! (cutting it raises PSNR and leaves GMSD and the detail below the corner as they were).
//! Horizontal and vertical lines and 2-px stripes along one axis keep all of their energy.
//!
//! It runs on the whole image after the tiles (a cut per tile would seam), by FFT, on the
//! whole-sample mirror extension (reflect-101, length 2N - 2) of every row and column, so that
//! the borders do not ring as a circular cut would; the 2-px checkerboard stays one Nyquist bin of
//! that extension, so it is taken whole. Away from the borders it is the training cut
//! ([`crate::adversarial::cut_grain`], circular on crops). The cut is linear and idempotent.

use crate::image::{reflect101, Image};
use rustfft::{num_complex::Complex, FftPlanner};

/// The frequency above which, on both axes at once, an output's luma holds the 2-px grain
/// (scripts/pattern_ratio.py's checkerboard corner, in cycles per pixel).
pub const GRAIN_CORNER: f64 = 0.4;

/// Whether bin `k` of a length-`n` DFT lies at |f| >= [`GRAIN_CORNER`].
pub fn in_band(k: usize, n: usize) -> bool {
    let f = if 2 * k < n { k } else { n - k };
    f as f64 / n as f64 >= GRAIN_CORNER - 1e-12
}

/// `img` with the grain cut from every plane (see the module). Values are not clamped: the cut
/// of an image in [0, 1] may step out of it by the grain's amplitude.
pub fn cut_grain(img: &Image) -> Image {
    let (w, h) = (img.width, img.height);
    let mut out = img.clone();
    // A side of 1 px has no frequency but 0, so nothing lies in the corner.
    if w < 2 || h < 2 {
        return out;
    }
    let mut rows = Pass::new(w);
    let mut cols = Pass::new(h);
    let mut column = vec![0f32; h];
    for c in 0..img.channels {
        // y P_W: the high band of every row.
        let mut corner = img.plane(c).to_vec();
        for row in corner.chunks_exact_mut(w) {
            rows.high(row);
        }
        // P_H (y P_W): the high band of every column of that.
        for x in 0..w {
            for (r, v) in column.iter_mut().enumerate() {
                *v = corner[r * w + x];
            }
            cols.high(&mut column);
            for (r, v) in column.iter().enumerate() {
                corner[r * w + x] = *v;
            }
        }
        for (o, k) in out.plane_mut(c).iter_mut().zip(&corner) {
            *o -= k;
        }
    }
    out
}

/// One axis: the FFTs of the mirror extension of a length-`n` line.
struct Pass {
    fwd: std::sync::Arc<dyn rustfft::Fft<f32>>,
    inv: std::sync::Arc<dyn rustfft::Fft<f32>>,
    buf: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
}

impl Pass {
    fn new(n: usize) -> Self {
        let m = 2 * n - 2;
        let mut planner = FftPlanner::new();
        let (fwd, inv) = (planner.plan_fft_forward(m), planner.plan_fft_inverse(m));
        let scratch_len = fwd
            .get_inplace_scratch_len()
            .max(inv.get_inplace_scratch_len());
        Self {
            fwd,
            inv,
            buf: vec![Complex::default(); m],
            scratch: vec![Complex::default(); scratch_len],
        }
    }

    /// `line` <- its part at |f| >= the corner (of its mirror extension, restricted).
    fn high(&mut self, line: &mut [f32]) {
        let (n, m) = (line.len(), self.buf.len());
        for (i, b) in self.buf.iter_mut().enumerate() {
            *b = Complex::new(line[reflect101(i as isize, n)], 0.0);
        }
        self.fwd
            .process_with_scratch(&mut self.buf, &mut self.scratch);
        for (k, b) in self.buf.iter_mut().enumerate() {
            if !in_band(k, m) {
                *b = Complex::default();
            }
        }
        self.inv
            .process_with_scratch(&mut self.buf, &mut self.scratch);
        for (d, b) in line.iter_mut().zip(&self.buf) {
            *d = b.re / m as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::max_diff;

    fn image(w: usize, h: usize, mut f: impl FnMut(usize, usize, usize) -> f32) -> Image {
        let mut d = Vec::with_capacity(3 * w * h);
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    d.push(f(x, y, c));
                }
            }
        }
        Image::new(w, h, 3, d).unwrap()
    }

    fn sign(i: usize) -> f32 {
        if i % 2 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    #[test]
    fn takes_the_checkerboard_and_keeps_the_rest() {
        // Odd and even sides, square and not: the mirror extension keeps the checkerboard whole.
        for (w, h) in [(24, 24), (37, 20), (19, 31)] {
            let smooth = |x: usize, y: usize, c: usize| {
                0.5 + 0.2 * ((x as f32 * 0.21 + c as f32).sin() * (y as f32 * 0.13).cos())
            };
            let base = image(w, h, smooth);
            let grain = image(w, h, |x, y, c| smooth(x, y, c) + 0.05 * sign(x + y));
            let cut = cut_grain(&grain);
            assert!(
                max_diff(&cut, &base) < 2e-3,
                "{w}x{h}: {}",
                max_diff(&cut, &base)
            );
            // 2-px stripes along one axis are not in the corner, at any phase of either border.
            let stripes = image(w, h, |x, _, c| 0.5 + 0.1 * sign(x + c));
            assert!(max_diff(&cut_grain(&stripes), &stripes) < 1e-5);
            let stripes = image(w, h, |_, y, _| 0.5 + 0.1 * sign(y));
            assert!(max_diff(&cut_grain(&stripes), &stripes) < 1e-5);
            // A projector: a second cut takes nothing more.
            assert!(max_diff(&cut_grain(&cut), &cut) < 1e-5);
            // The smooth image loses next to nothing; flat images nothing.
            assert!(max_diff(&cut_grain(&base), &base) < 2e-3);
            let flat = image(w, h, |_, _, c| 0.25 * c as f32);
            assert!(max_diff(&cut_grain(&flat), &flat) < 1e-5);
        }
    }

    #[test]
    fn white_noise_loses_the_corner_share_of_its_power() {
        // Both frequencies >= 0.4 cycles/px: a fifth of each axis, a 25th of the plane.
        let (w, h) = (64, 48);
        let mut s = 12345u64;
        let noise = image(w, h, |_, _, _| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        });
        let cut = cut_grain(&noise);
        let power = |x: &Image| x.data.iter().map(|v| v * v).sum::<f32>();
        let taken = 1.0 - power(&cut) / power(&noise);
        assert!((0.025..0.06).contains(&taken), "{taken}");
    }

    #[test]
    fn lines_of_one_pixel_pass_through() {
        let row = image(9, 1, |x, _, _| sign(x));
        assert_eq!(cut_grain(&row), row);
        let col = image(1, 9, |_, y, _| sign(y));
        assert_eq!(cut_grain(&col), col);
    }

    #[test]
    fn agrees_with_the_training_cut_away_from_the_borders() {
        use burn::backend::Flex;
        use burn::tensor::{Tensor, TensorData};
        // A 64-px periodic image (so the circular training cut sees no seam) with a grain: the
        // two cuts differ only where the mirror extension bends, near the borders. The training
        // cut takes the unshuffled [1, 12, h / 2, w / 2] tensor.
        let (w, h) = (64, 64);
        let img = image(w, h, |x, y, c| {
            let t = 2.0 * std::f32::consts::PI / 64.0;
            0.5 + 0.2 * (x as f32 * t * 3.0).cos() * (y as f32 * t * 5.0 + c as f32).sin()
                + 0.1 * (x as f32 * t * 20.0).sin()
                + 0.05 * sign(x + y)
        });
        let dev = Default::default();
        let t = Tensor::<Flex, 4>::from_data(TensorData::new(img.data.clone(), [1, 3, h, w]), &dev);
        let trained = crate::adversarial::cut_grain(crate::space::unshuffle(t, 2));
        let back: Vec<f32> = crate::space::shuffle(trained, 2)
            .into_data()
            .to_vec()
            .unwrap();
        let want = Image::new(w, h, 3, back).unwrap();
        let got = cut_grain(&img);
        let inner = |x: &Image| x.crop(16, 16, 32, 32);
        let d = max_diff(&inner(&got), &inner(&want));
        assert!(d < 1e-4, "{d}");
    }
}
