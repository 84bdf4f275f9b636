//! Tiling (docs/algorithm.md §6): geometry first, blending second.
//!
//! A [`TilePlan`] covers an image with overlapping tiles of at most `tile` pixels a side whose
//! origins and sizes are multiples of `align` (the network's downsampling factor). Each tile is cut
//! out (reflect-padded up to `align` when the image is smaller), processed, and accumulated with a
//! raised-cosine window that ramps only across overlaps, then normalised by the summed weights.
//! The window is exactly 1 away from overlaps, so an identity function reproduces the input.

use crate::error::{Error, Result};
use crate::image::Image;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// One tile: the source rectangle read from the image, and the padded size fed to the function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub src: Rect,
    pub padded_w: usize,
    pub padded_h: usize,
}

#[derive(Clone, Debug)]
pub struct TilePlan {
    pub width: usize,
    pub height: usize,
    pub overlap: usize,
    pub tiles: Vec<Tile>,
}

/// 1-D spans (start, length) for length `n`, tile `t` and overlap `o`: starts are multiples of
/// `align`; the last span runs to `n` (up to `t + align - 1` long when `n` is not aligned).
fn spans(n: usize, t: usize, o: usize, align: usize) -> Vec<(usize, usize)> {
    if n <= t {
        return vec![(0, n)];
    }
    let step = ((t - o) / align * align).max(align);
    let last = (n - t).div_ceil(align) * align;
    let last = if last + align > n { last - align } else { last };
    let mut v = Vec::new();
    let mut s = 0;
    while s < last {
        v.push((s, t));
        s += step;
    }
    v.push((last, n - last));
    v
}

impl TilePlan {
    /// `tile` and `overlap` in pixels of the image being tiled; `align` divides tile origins and
    /// padded tile sizes.
    pub fn new(
        width: usize,
        height: usize,
        tile: usize,
        overlap: usize,
        align: usize,
    ) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidImage("empty image".into()));
        }
        if align == 0 || tile < align || !tile.is_multiple_of(align) {
            return Err(Error::BadParam(format!(
                "tile size {tile} must be a positive multiple of {align}"
            )));
        }
        if overlap >= tile {
            return Err(Error::BadParam(format!(
                "overlap {overlap} must be smaller than the tile size {tile}"
            )));
        }
        let pad = |n: usize| n.div_ceil(align) * align;
        let mut tiles = Vec::new();
        let xs = spans(width, tile, overlap, align);
        let ys = spans(height, tile, overlap, align);
        for &(y, h) in &ys {
            for &(x, w) in &xs {
                tiles.push(Tile {
                    src: Rect { x, y, w, h },
                    padded_w: pad(w),
                    padded_h: pad(h),
                });
            }
        }
        Ok(Self {
            width,
            height,
            overlap,
            tiles,
        })
    }

    /// Cut tile `i` out of `img` (reflect-padded to the aligned size).
    pub fn extract(&self, img: &Image, i: usize) -> Image {
        let t = self.tiles[i];
        let c = img.crop(t.src.x, t.src.y, t.src.w, t.src.h);
        if (t.padded_w, t.padded_h) == (t.src.w, t.src.h) {
            c
        } else {
            c.pad_reflect(t.padded_w, t.padded_h)
        }
    }

    /// 1-D blending weight at offset `p` of a tile `len` long:
    /// a raised-cosine ramp over the part shared with a neighbour, 1 elsewhere.
    fn ramp(&self, p: usize, len: usize, neighbours: (bool, bool)) -> f32 {
        let mut w = 1.0f32;
        let o = self.overlap.max(1) as f32;
        if neighbours.0 && p < self.overlap {
            w *= raised_cosine((p as f32 + 0.5) / o);
        }
        let from_end = len - 1 - p;
        if neighbours.1 && from_end < self.overlap {
            w *= raised_cosine((from_end as f32 + 0.5) / o);
        }
        w
    }

    fn has_neighbours(&self, t: &Tile) -> ((bool, bool), (bool, bool)) {
        let any = |f: &dyn Fn(&Tile) -> bool| self.tiles.iter().any(f);
        let left = any(&|o| o.src.y == t.src.y && o.src.x < t.src.x);
        let right = any(&|o| o.src.y == t.src.y && o.src.x > t.src.x);
        let top = any(&|o| o.src.x == t.src.x && o.src.y < t.src.y);
        let bottom = any(&|o| o.src.x == t.src.x && o.src.y > t.src.y);
        ((left, right), (top, bottom))
    }

    /// Run `f` on every tile (with the tile index and the cut-out inputs, one per image in
    /// `inputs`) and blend the outputs, which must have the padded tile size and `out_channels`
    /// channels. `f`'s errors stop the run and name the tile.
    pub fn run<F>(&self, inputs: &[&Image], out_channels: usize, mut f: F) -> Result<Image>
    where
        F: FnMut(usize, &[Image]) -> Result<Image>,
    {
        self.check_inputs(inputs)?;
        let mut blend = self.blend(out_channels);
        for i in 0..self.tiles.len() {
            let cut: Vec<Image> = inputs.iter().map(|im| self.extract(im, i)).collect();
            let out = f(i, &cut).map_err(|e| self.tile_error(i, e))?;
            blend.add(i, &out)?;
        }
        Ok(blend.finish())
    }

    /// Inputs must have the plan's size.
    pub fn check_inputs(&self, inputs: &[&Image]) -> Result<()> {
        for im in inputs {
            if (im.width, im.height) != (self.width, self.height) {
                return Err(Error::BadParam("tile plan and image sizes differ".into()));
            }
        }
        Ok(())
    }

    /// `e`, naming tile `i`.
    pub fn tile_error(&self, i: usize, e: Error) -> Error {
        let t = self.tiles[i];
        Error::Tile {
            index: i,
            x: t.src.x,
            y: t.src.y,
            source: Box::new(e),
        }
    }

    /// The separable blending window of tile `i`: weights along x (`src.w` long) and y
    /// (`src.h` long); a pixel's weight is wx[q] * wy[r]. What the GPU blend kernel
    /// (shaders/blend_tile.wgsl) is given.
    pub fn window(&self, i: usize) -> (Vec<f32>, Vec<f32>) {
        let t = self.tiles[i];
        let (nx, ny) = self.has_neighbours(&t);
        let wx = (0..t.src.w).map(|p| self.ramp(p, t.src.w, nx)).collect();
        let wy = (0..t.src.h).map(|p| self.ramp(p, t.src.h, ny)).collect();
        (wx, wy)
    }

    /// An empty accumulator for tile outputs with `out_channels` channels: add every tile's
    /// output in any order, then finish. For callers that drive the tiles themselves (the
    /// browser reads each tile back asynchronously).
    pub fn blend(&self, out_channels: usize) -> Blend {
        Blend {
            plan: self.clone(),
            acc: Image::zeros(self.width, self.height, out_channels),
            wsum: vec![0f32; self.width * self.height],
        }
    }
}

/// Tile outputs accumulated with the plan's window (see [`TilePlan::blend`]).
pub struct Blend {
    plan: TilePlan,
    acc: Image,
    wsum: Vec<f32>,
}

impl Blend {
    pub fn plan(&self) -> &TilePlan {
        &self.plan
    }

    /// Add tile `i`'s output (padded tile size, the accumulator's channels).
    pub fn add(&mut self, i: usize, out: &Image) -> Result<()> {
        let plan = &self.plan;
        let t = plan.tiles[i];
        let ch = self.acc.channels;
        if (out.width, out.height, out.channels) != (t.padded_w, t.padded_h, ch) {
            return Err(plan.tile_error(
                i,
                Error::BadParam(format!(
                    "tile output is {}x{}x{}, expected {}x{}x{}",
                    out.width, out.height, out.channels, t.padded_w, t.padded_h, ch
                )),
            ));
        }
        let w = plan.width;
        let (wx, wy) = plan.window(i);
        let (wx, wy) = (&wx[..t.src.w], &wy[..t.src.h]);
        for (r, &yr) in wy.iter().enumerate() {
            let row = (t.src.y + r) * w + t.src.x;
            for (s, &xq) in self.wsum[row..row + t.src.w].iter_mut().zip(wx) {
                *s += xq * yr;
            }
        }
        for c in 0..ch {
            let src = out.plane(c);
            let dst = self.acc.plane_mut(c);
            for (r, &yr) in wy.iter().enumerate() {
                let row = (t.src.y + r) * w + t.src.x;
                let from = &src[r * t.padded_w..r * t.padded_w + t.src.w];
                for ((d, &xq), &v) in dst[row..row + t.src.w].iter_mut().zip(wx).zip(from) {
                    *d += xq * yr * v;
                }
            }
        }
        Ok(())
    }

    /// The blended image (normalised by the summed window weights).
    pub fn finish(mut self) -> Image {
        for c in 0..self.acc.channels {
            for (v, s) in self.acc.plane_mut(c).iter_mut().zip(&self.wsum) {
                // Single-tile pixels have weight exactly 1: keep them bit-exact.
                if *s != 1.0 {
                    *v /= *s;
                }
            }
        }
        self.acc
    }
}

/// 0 → 0, 1 → 1, smooth in between.
fn raised_cosine(x: f32) -> f32 {
    let x = x.clamp(0.0, 1.0);
    0.5 - 0.5 * (std::f32::consts::PI * x).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp_image(w: usize, h: usize, c: usize) -> Image {
        let data = (0..w * h * c)
            .map(|i| ((i * 37) % 255) as f32 / 255.0)
            .collect();
        Image::new(w, h, c, data).unwrap()
    }

    #[test]
    fn identity_is_exact_on_awkward_sizes() {
        for &(w, h) in &[
            (1, 1),
            (3, 5),
            (17, 9),
            (64, 64),
            (65, 130),
            (301, 7),
            (1000, 33),
        ] {
            let img = ramp_image(w, h, 3);
            let plan = TilePlan::new(w, h, 32, 8, 8).unwrap();
            let out = plan.run(&[&img], 3, |_, t| Ok(t[0].clone())).unwrap();
            assert_eq!(out.to_interleaved_u8(), img.to_interleaved_u8(), "{w}x{h}");
            let err = out
                .data
                .iter()
                .zip(&img.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-6, "{w}x{h}: {err}");
        }
    }

    #[test]
    fn tiles_cover_everything_and_align() {
        let plan = TilePlan::new(301, 77, 64, 16, 8).unwrap();
        let mut seen = vec![false; 301 * 77];
        for t in &plan.tiles {
            assert_eq!(t.src.x % 8, 0);
            assert_eq!(t.src.y % 8, 0);
            assert_eq!(t.padded_w % 8, 0);
            assert!(t.src.w < 64 + 8 && t.src.h < 64 + 8);
            for y in t.src.y..t.src.y + t.src.h {
                for x in t.src.x..t.src.x + t.src.w {
                    seen[y * 301 + x] = true;
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn blending_is_smooth_across_a_seam() {
        // Tiles that add their own index: the blended result moves gradually across overlaps.
        let img = Image::zeros(96, 8, 1);
        let plan = TilePlan::new(96, 8, 64, 32, 8).unwrap();
        assert_eq!(plan.tiles.len(), 2);
        let out = plan
            .run(&[&img], 1, |i, t| {
                let mut o = t[0].clone();
                o.data.iter_mut().for_each(|v| *v = i as f32);
                Ok(o)
            })
            .unwrap();
        let row: Vec<f32> = out.data[..96].to_vec();
        assert_eq!(row[0], 0.0);
        assert_eq!(row[95], 1.0);
        let max_jump = row
            .windows(2)
            .map(|p| (p[1] - p[0]).abs())
            .fold(0.0, f32::max);
        assert!(max_jump < 0.1, "{max_jump}");
    }

    #[test]
    fn tile_errors_are_not_swallowed() {
        let img = Image::zeros(100, 100, 3);
        let plan = TilePlan::new(100, 100, 32, 8, 8).unwrap();
        let err = plan
            .run(&[&img], 3, |i, t| {
                if i == 3 {
                    Err(Error::BadParam("boom".into()))
                } else {
                    Ok(t[0].clone())
                }
            })
            .unwrap_err();
        assert!(matches!(err, Error::Tile { index: 3, .. }), "{err}");
    }

    #[test]
    fn bad_geometry_is_an_error() {
        assert!(TilePlan::new(10, 10, 30, 8, 8).is_err());
        assert!(TilePlan::new(10, 10, 32, 32, 8).is_err());
        assert!(TilePlan::new(0, 10, 32, 8, 8).is_err());
    }
}
