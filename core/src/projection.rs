//! LR-consistency projection: y' = y + Dᵀ (D Dᵀ)⁻¹ (lr − D y).
//!
//! D is the benchmark's degradation, the MATLAB bicubic 1/s downscale of resize.rs (no rounding).
//! y' is the image nearest to y (in L2) whose downscale is exactly `lr`: the part of the network's
//! output that D cannot see (its null space, where the synthesised detail lives) is kept, and only
//! what contradicts the input is corrected (the consistency enforcing of Bahat & Michaeli, CVPR
//! 2020; the range/null-space split of DDNM). It costs no network call, so NFE is unchanged.
//!
//! D = D_h ⊗ D_w is separable, hence (D Dᵀ)⁻¹ = (D_h D_hᵀ)⁻¹ ⊗ (D_w D_wᵀ)⁻¹: each axis needs one
//! small banded SPD solve (Cholesky), and the whole projection costs about four resize passes.

use crate::error::{Error, Result};
use crate::image::Image;
use crate::resize::{check_scale, contributions, resize_plane, Contributions};

/// When the front ends (CLI, server, web page) apply the projection. It assumes the input is a
/// clean bicubic downscale; a lossily coded input (JPEG, lossy WebP) is not, and projecting onto
/// it restores its coding noise at the input's resolution (Set5 with JPEG-coded LR, x4: -0.18 dB
/// at quality 40, -0.05 dB at 92; docs/training.md). `Auto` therefore applies it to losslessly
/// stored inputs only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Policy {
    #[default]
    Auto,
    On,
    Off,
}

impl Policy {
    /// Whether to project an input whose file was (`lossy_input`) lossily coded.
    pub fn applies(self, lossy_input: bool) -> bool {
        match self {
            Policy::Auto => !lossy_input,
            Policy::On => true,
            Policy::Off => false,
        }
    }
}

/// Whether encoded image bytes are lossily coded: JPEG, or WebP with a lossy ("VP8 ") bitstream.
/// PNG, lossless WebP ("VP8L") and anything unrecognised count as lossless.
pub fn lossy_encoding(bytes: &[u8]) -> bool {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return true;
    }
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WEBP" {
        return false;
    }
    // RIFF chunks after the header: fourcc, little-endian size, data padded to an even length.
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let tag = &bytes[at..at + 4];
        if tag == b"VP8 " {
            return true;
        }
        if tag == b"VP8L" {
            return false;
        }
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        at = at
            .saturating_add(8)
            .saturating_add(size.saturating_add(size & 1));
    }
    false
}

/// One axis of D (out = the LR length, in = the HR length) and the Cholesky factor of D Dᵀ.
struct Axis {
    d: Contributions,
    lr_len: usize,
    hr_len: usize,
    chol: BandCholesky,
}

impl Axis {
    fn new(hr_len: usize, lr_len: usize) -> Result<Self> {
        let d = contributions(hr_len, lr_len, lr_len as f64 / hr_len as f64);
        // Column k of D: the LR rows that read HR pixel k (padding can repeat an index).
        let mut cols: Vec<Vec<(usize, f64)>> = vec![Vec::new(); hr_len];
        for o in 0..lr_len {
            for p in 0..d.taps {
                let (k, w) = (d.index[o * d.taps + p], d.weight[o * d.taps + p]);
                if w != 0.0 {
                    cols[k].push((o, w));
                }
            }
        }
        let band = cols
            .iter()
            .flat_map(|c| {
                c.iter()
                    .flat_map(move |a| c.iter().map(move |b| a.0.abs_diff(b.0)))
            })
            .max()
            .unwrap_or(0);
        let mut gram = vec![0f64; lr_len * (band + 1)];
        for c in &cols {
            for &(i, wi) in c {
                for &(j, wj) in c {
                    if j <= i {
                        gram[i * (band + 1) + (i - j)] += wi * wj;
                    }
                }
            }
        }
        Ok(Self {
            chol: BandCholesky::new(gram, lr_len, band)?,
            d,
            lr_len,
            hr_len,
        })
    }
}

/// Cholesky factor L (G = L Lᵀ) of a symmetric positive-definite band matrix, stored by rows:
/// `l[i * (b + 1) + k]` = L[i][i − k].
struct BandCholesky {
    l: Vec<f64>,
    n: usize,
    b: usize,
}

impl BandCholesky {
    /// `g` holds the lower band of G in the same layout as `l`.
    fn new(g: Vec<f64>, n: usize, b: usize) -> Result<Self> {
        let mut l = g;
        let at = |i: usize, j: usize| i * (b + 1) + (i - j);
        for i in 0..n {
            for j in i.saturating_sub(b)..=i {
                let mut s = l[at(i, j)];
                for m in i.saturating_sub(b).max(j.saturating_sub(b))..j {
                    s -= l[at(i, m)] * l[at(j, m)];
                }
                if i == j {
                    if s <= 0.0 || !s.is_finite() {
                        return Err(Error::BadParam(
                            "LR projection: the downscale operator is singular".into(),
                        ));
                    }
                    l[at(i, i)] = s.sqrt();
                } else {
                    l[at(i, j)] = s / l[at(j, j)];
                }
            }
        }
        Ok(Self { l, n, b })
    }

    /// Solve G X = R in place for an n x m row-major R (all m columns at once).
    fn solve(&self, r: &mut [f64], m: usize) {
        let (n, b) = (self.n, self.b);
        let at = |i: usize, j: usize| i * (b + 1) + (i - j);
        // L Z = R, then Lᵀ X = Z.
        for i in 0..n {
            for j in i.saturating_sub(b)..i {
                let f = self.l[at(i, j)];
                let (head, tail) = r.split_at_mut(i * m);
                tail[..m]
                    .iter_mut()
                    .zip(&head[j * m..(j + 1) * m])
                    .for_each(|(a, z)| *a -= f * z);
            }
            let inv = 1.0 / self.l[at(i, i)];
            r[i * m..(i + 1) * m].iter_mut().for_each(|a| *a *= inv);
        }
        for i in (0..n).rev() {
            let inv = 1.0 / self.l[at(i, i)];
            r[i * m..(i + 1) * m].iter_mut().for_each(|a| *a *= inv);
            for j in i.saturating_sub(b)..i {
                let f = self.l[at(i, j)];
                let (head, tail) = r.split_at_mut(i * m);
                head[j * m..(j + 1) * m]
                    .iter_mut()
                    .zip(&tail[..m])
                    .for_each(|(a, x)| *a -= f * x);
            }
        }
    }
}

/// Project `sr` (the upscaled image, `scale` times the size of `lr`, same channels) onto the
/// images whose bicubic 1/`scale` downscale is `lr`; values are clamped to [0, 1] afterwards
/// (which can move the result off the exact set by the clipped amount, nothing else).
pub fn project(sr: &Image, lr: &Image, scale: u32) -> Result<Image> {
    let mut out = project_unclamped(sr, lr, scale)?;
    out.data.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    Ok(out)
}

/// [`project`] without the final clamp (exactly consistent up to rounding).
pub fn project_unclamped(sr: &Image, lr: &Image, scale: u32) -> Result<Image> {
    check_scale(scale)?;
    let s = scale as usize;
    if sr.width != lr.width * s || sr.height != lr.height * s || sr.channels != lr.channels {
        return Err(Error::BadParam(format!(
            "LR projection: a {}x{}x{} result does not match a {}x{}x{} input at x{scale}",
            sr.width, sr.height, sr.channels, lr.width, lr.height, lr.channels
        )));
    }
    let rows = Axis::new(sr.height, lr.height)?;
    let cols = Axis::new(sr.width, lr.width)?;
    let (h, w, hh, ww) = (rows.lr_len, cols.lr_len, rows.hr_len, cols.hr_len);
    let mut out = sr.clone();
    for c in 0..sr.channels {
        let down = resize_plane(sr.plane(c), ww, &rows.d, &cols.d, h, w, false);
        // R = lr − D y (h x w), then (D_h D_hᵀ)⁻¹ R (D_w D_wᵀ)⁻¹.
        let mut r: Vec<f64> = lr
            .plane(c)
            .iter()
            .zip(&down)
            .map(|(&a, &b)| a as f64 - b as f64)
            .collect();
        rows.chol.solve(&mut r, w);
        let mut rt = transpose(&r, h, w);
        cols.chol.solve(&mut rt, h);
        let r = transpose(&rt, w, h);
        // Dᵀ R = D_hᵀ R D_w: scatter along the columns (h x W), then along the rows (H x W).
        let mut t = vec![0f64; h * ww];
        for i in 0..h {
            let (src, dst) = (&r[i * w..(i + 1) * w], &mut t[i * ww..(i + 1) * ww]);
            for (o, &v) in src.iter().enumerate() {
                for p in 0..cols.d.taps {
                    dst[cols.d.index[o * cols.d.taps + p]] +=
                        cols.d.weight[o * cols.d.taps + p] * v;
                }
            }
        }
        let plane = out.plane_mut(c);
        let mut delta = vec![0f64; hh * ww];
        for o in 0..h {
            for p in 0..rows.d.taps {
                let (k, wt) = (
                    rows.d.index[o * rows.d.taps + p],
                    rows.d.weight[o * rows.d.taps + p],
                );
                if wt == 0.0 {
                    continue;
                }
                delta[k * ww..(k + 1) * ww]
                    .iter_mut()
                    .zip(&t[o * ww..(o + 1) * ww])
                    .for_each(|(d, &v)| *d += wt * v);
            }
        }
        plane
            .iter_mut()
            .zip(&delta)
            .for_each(|(y, &d)| *y = (*y as f64 + d) as f32);
    }
    Ok(out)
}

/// The n x n matrix (row-major) of one axis' range projector Dᵀ (D Dᵀ)⁻¹ D, for an HR length
/// `hr_len` divisible by `scale`. For D = D_h ⊗ D_w the 2-D one is R_h ⊗ R_w, so the part of an
/// image y that the projection overwrites is R_h y R_wᵀ (both symmetric): training uses it to
/// weight the error the projection will correct apart from the error it keeps.
pub fn range_projector(hr_len: usize, scale: u32) -> Result<Vec<f32>> {
    check_scale(scale)?;
    let s = scale as usize;
    if hr_len == 0 || !hr_len.is_multiple_of(s) {
        return Err(Error::BadParam(format!(
            "range projector: length {hr_len} is not a positive multiple of {scale}"
        )));
    }
    let ax = Axis::new(hr_len, hr_len / s)?;
    let (m, n) = (ax.lr_len, ax.hr_len);
    // Dense D (m x n); padding can send two taps to one pixel, so accumulate.
    let mut d = vec![0f64; m * n];
    for o in 0..m {
        for p in 0..ax.d.taps {
            d[o * n + ax.d.index[o * ax.d.taps + p]] += ax.d.weight[o * ax.d.taps + p];
        }
    }
    let mut x = d.clone();
    ax.chol.solve(&mut x, n); // (D Dᵀ)⁻¹ D
    let mut r = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            r[i * n + j] = (0..m).map(|o| d[o * n + i] * x[o * n + j]).sum::<f64>() as f32;
        }
    }
    Ok(r)
}

fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0f64; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::max_diff;
    use crate::resize::imresize;

    fn noise(w: usize, h: usize, c: usize, k: usize) -> Image {
        let d = (0..w * h * c)
            .map(|i| ((i * k + 7) % 101) as f32 / 100.0)
            .collect();
        Image::new(w, h, c, d).unwrap()
    }

    #[test]
    fn band_cholesky_by_hand() {
        // G = [[4, 2, 0], [2, 5, 1], [0, 1, 2]] = L Lᵀ, L = [[2, 0, 0], [1, 2, 0], [0, 0.5, √1.75]].
        let g = vec![4.0, 0.0, 5.0, 2.0, 2.0, 1.0];
        let ch = BandCholesky::new(g, 3, 1).unwrap();
        let want = [2.0, 0.0, 2.0, 1.0, 1.75f64.sqrt(), 0.5];
        for (a, b) in ch.l.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{:?}", ch.l);
        }
        // G x = (6, 8, 3) has x = (1, 1, 1).
        let mut r = vec![6.0, 8.0, 3.0];
        ch.solve(&mut r, 1);
        assert!(r.iter().all(|v| (v - 1.0).abs() < 1e-12), "{r:?}");
        // A singular matrix is an error, not NaNs.
        assert!(BandCholesky::new(vec![1.0, 0.0, 1.0, 1.0], 2, 1).is_err());
    }

    #[test]
    fn result_downscales_to_the_input() {
        for (w, h, s) in [(9, 5, 2), (7, 4, 4), (3, 2, 8), (1, 1, 4)] {
            let lr = noise(w, h, 3, 13);
            let sr = noise(w * s as usize, h * s as usize, 3, 29);
            let p = project_unclamped(&sr, &lr, s).unwrap();
            let down = imresize(&p, 1.0 / s as f64, false);
            assert!(max_diff(&down, &lr) < 1e-5, "{w}x{h} x{s}");
            // Already consistent: unchanged (idempotent).
            let again = project_unclamped(&p, &lr, s).unwrap();
            assert!(max_diff(&again, &p) < 1e-5, "{w}x{h} x{s}");
        }
    }

    #[test]
    fn correction_is_orthogonal_to_the_null_space() {
        // The nearest consistent image: y' − y lies in range(Dᵀ), orthogonal to every n with
        // D n = 0 (here n = z − Dᵀ(DDᵀ)⁻¹ D z, the projection of z with an all-zero input).
        let (w, h, s) = (6, 5, 4);
        let lr = noise(w, h, 1, 11);
        let sr = noise(w * 4, h * 4, 1, 17);
        let p = project_unclamped(&sr, &lr, s).unwrap();
        let z = noise(w * 4, h * 4, 1, 23);
        let n = project_unclamped(&z, &Image::zeros(w, h, 1), s).unwrap();
        let dot: f64 = (0..p.data.len())
            .map(|i| (p.data[i] - sr.data[i]) as f64 * n.data[i] as f64)
            .sum();
        let norm: f64 = n
            .data
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(dot.abs() < 1e-4 * norm, "{dot} vs |n| {norm}");
        // And it really moved: sr was not consistent.
        assert!(max_diff(&p, &sr) > 1e-2);
    }

    #[test]
    fn range_projector_is_what_the_projection_overwrites() {
        // With an all-zero input the projection leaves y − R_h y R_w (R symmetric, idempotent).
        let (w, h, s) = (5, 3, 4);
        let y = noise(w * 4, h * 4, 1, 19);
        let p = project_unclamped(&y, &Image::zeros(w, h, 1), s).unwrap();
        let (rh, rw) = (
            range_projector(h * 4, s).unwrap(),
            range_projector(w * 4, s).unwrap(),
        );
        let (hh, ww) = (h * 4, w * 4);
        for i in 0..hh {
            for j in 0..ww {
                let mut v = 0f64;
                for a in 0..hh {
                    for b in 0..ww {
                        v += (rh[i * hh + a] * y.data[a * ww + b] * rw[j * ww + b]) as f64;
                    }
                }
                let want = y.data[i * ww + j] - p.data[i * ww + j];
                assert!((v as f32 - want).abs() < 1e-4, "({i}, {j}): {v} vs {want}");
            }
        }
        for r in [&rh, &rw] {
            let n = (r.len() as f64).sqrt() as usize;
            for i in 0..n {
                for j in 0..n {
                    assert!((r[i * n + j] - r[j * n + i]).abs() < 1e-5);
                    let rr: f32 = (0..n).map(|k| r[i * n + k] * r[k * n + j]).sum();
                    assert!((rr - r[i * n + j]).abs() < 1e-4);
                }
            }
            // Its trace is the rank: the LR length.
            let tr: f32 = (0..n).map(|i| r[i * n + i]).sum();
            assert!((tr - (n / 4) as f32).abs() < 1e-3, "trace {tr}");
        }
        assert!(range_projector(10, 4).is_err() && range_projector(8, 3).is_err());
    }

    #[test]
    fn lossy_inputs_are_recognised() {
        assert!(lossy_encoding(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16]));
        assert!(!lossy_encoding(b"\x89PNG\r\n\x1a\n...."));
        assert!(!lossy_encoding(b""));
        let webp = |chunks: &[(&[u8; 4], usize)]| {
            let mut v = b"RIFF\0\0\0\0WEBP".to_vec();
            for (tag, n) in chunks {
                v.extend_from_slice(*tag);
                v.extend_from_slice(&(*n as u32).to_le_bytes());
                v.extend(std::iter::repeat_n(0u8, n + (n & 1)));
            }
            v
        };
        assert!(lossy_encoding(&webp(&[(b"VP8 ", 10)])));
        assert!(!lossy_encoding(&webp(&[(b"VP8L", 10)])));
        // Extended WebP: a header chunk (odd size: padded), then the bitstream.
        assert!(lossy_encoding(&webp(&[
            (b"VP8X", 10),
            (b"ICCP", 3),
            (b"VP8 ", 4)
        ])));
        assert!(!lossy_encoding(&webp(&[
            (b"VP8X", 10),
            (b"ALPH", 5),
            (b"VP8L", 4)
        ])));
        // A truncated or absurd chunk size ends the scan instead of overflowing.
        let mut bad = webp(&[(b"VP8X", 10)]);
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(!lossy_encoding(&bad));
        assert!(Policy::Auto.applies(false) && !Policy::Auto.applies(true));
        assert!(Policy::On.applies(true) && !Policy::Off.applies(false));
    }

    #[test]
    fn sizes_are_checked() {
        let lr = noise(4, 4, 3, 3);
        assert!(project(&noise(16, 12, 3, 5), &lr, 4).is_err());
        assert!(project(&noise(16, 16, 1, 5), &lr, 4).is_err());
        assert!(project(&noise(12, 12, 3, 5), &noise(4, 4, 3, 3), 3).is_err());
        let p = project(&noise(16, 16, 3, 5), &lr, 4).unwrap();
        assert!(p.data.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
