//! Training batches (docs/algorithm.md §7): a random HR crop under one of the 8 dihedral transforms,
//! degraded online at a scale drawn from x2/x4/x8, gives x0 = unshuffle(up(LR)) and
//! x1 = unshuffle(HR) (the degraded HR on negative-prompt rows). Every row is a pure function of
//! (seed, step, row): a data-parallel worker builds exactly its share of the global batch, and a
//! resumed run draws the same batches as an uninterrupted one.

use crate::degrade::{degrade, DegradeConfig};
use crate::error::Result;
use crate::image::Image;
use crate::objectives::guidance::{negative_target, GuidanceConfig};
use crate::objectives::{Batch, RowGuide};
use crate::resize::upscale as bicubic_up;
use crate::space::unshuffle;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a batch is drawn from, as a training config states it.
#[derive(Clone, Copy, Debug)]
pub struct BatchSpec<'a> {
    /// HR crop side (a multiple of 8 and of the model's alignment).
    pub crop: usize,
    /// Probabilities of x2, x4, x8.
    pub scale_mix: [f32; 3],
    /// Images are drawn with probability proportional to (their crop positions)^p; None or 0
    /// draws every image equally often.
    pub image_weight_power: Option<f32>,
    pub degrade: &'a DegradeConfig,
    pub guidance: Option<&'a GuidanceConfig>,
    pub seed: u64,
    /// Also build each row's range projector (for objectives that weight the range part).
    pub range_projectors: bool,
}

/// Cumulative image weights (crop positions)^p, or None for the plain uniform draw (p absent
/// or 0, which keeps older runs' batches bit for bit).
pub fn image_weights(images: &[Image], crop: usize, p: Option<f32>) -> Option<Vec<f64>> {
    let p = p.filter(|p| *p != 0.0)? as f64;
    let mut acc = 0.0;
    Some(
        images
            .iter()
            .map(|img| {
                let pos = ((img.width - crop + 1) * (img.height - crop + 1)) as f64;
                acc += pos.powf(p);
                acc
            })
            .collect(),
    )
}

/// The index whose cumulative weight first exceeds u x total, u in [0, 1).
pub fn pick(cum: &[f64], u: f64) -> usize {
    let target = u * cum[cum.len() - 1];
    cum.partition_point(|&c| c <= target).min(cum.len() - 1)
}

/// One of the 8 dihedral transforms of a square crop.
pub fn dihedral(img: &Image, k: u8) -> Image {
    let n = img.width;
    let mut out = img.clone();
    for c in 0..img.channels {
        let src = img.plane(c);
        let dst = out.plane_mut(c);
        for y in 0..n {
            for x in 0..n {
                let (mut sx, mut sy) = (x, y);
                if k & 1 != 0 {
                    sx = n - 1 - sx;
                }
                if k & 2 != 0 {
                    sy = n - 1 - sy;
                }
                if k & 4 != 0 {
                    std::mem::swap(&mut sx, &mut sy);
                }
                dst[y * n + x] = src[sy * n + sx];
            }
        }
    }
    out
}

/// One row: (x0, x1) in image layout, its prompt and its scale.
type Row = (Vec<f32>, Vec<f32>, RowGuide, u32);

fn make_row(
    images: &[Image],
    spec: &BatchSpec,
    weights: Option<&[f64]>,
    step: usize,
    row: usize,
) -> Result<Row> {
    let c = spec.crop;
    let mut rng = ChaCha8Rng::seed_from_u64(
        spec.seed
            ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (row as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    let img = &images[match weights {
        None => rng.random_range(0..images.len()),
        Some(cum) => pick(cum, rng.random::<f64>()),
    }];
    let (x, y) = (
        rng.random_range(0..=img.width - c),
        rng.random_range(0..=img.height - c),
    );
    let hr = dihedral(&img.crop(x, y, c, c), rng.random_range(0..8));
    let mut u = rng.random::<f32>() * spec.scale_mix.iter().sum::<f32>();
    let mut scale = 8;
    for (p, s) in spec.scale_mix.iter().zip([2u32, 4, 8]) {
        if u < *p {
            scale = s;
            break;
        }
        u -= p;
    }
    let lr = degrade(&hr, scale, spec.degrade, rng.random())?;
    let x0 = bicubic_up(&lr, scale).to_signed();
    // Drawn after everything else, so runs without guidance keep their batches.
    let g = match spec.guidance {
        Some(gc) => gc.draw(&mut rng),
        None => RowGuide::FIDELITY,
    };
    let x1 = match spec.guidance {
        Some(gc) if g.negative => negative_target(&hr, gc, rng.random())?.to_signed(),
        _ => hr.to_signed(),
    };
    Ok((x0, x1, g, scale))
}

/// Rows `rows` of the batch for `step`.
pub fn make_batch<B: Backend>(
    images: &[Image],
    spec: &BatchSpec,
    step: usize,
    rows: std::ops::Range<usize>,
    device: &B::Device,
) -> Result<Batch<B>> {
    let c = spec.crop;
    let n = rows.len();
    let weights = image_weights(images, c, spec.image_weight_power);
    let build = |row| make_row(images, spec, weights.as_deref(), step, row);
    // Rows are seeded by (seed, step, row) alone, so building them in parallel (a GPU trainer
    // would otherwise wait on one CPU core) gives the same batch as in order.
    #[cfg(feature = "parallel")]
    let built: Vec<Row> = {
        use rayon::prelude::*;
        rows.into_par_iter().map(build).collect::<Result<_>>()?
    };
    #[cfg(not(feature = "parallel"))]
    let built: Vec<Row> = rows.map(build).collect::<Result<_>>()?;
    let (mut x0, mut x1, mut guide, mut scales) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (a, b, g, s) in built {
        x0.extend(a);
        x1.extend(b);
        guide.push(g);
        scales.push(s);
    }
    // The range projector of each row's downscale, when the objective weights that part.
    let range = if spec.range_projectors {
        let mut by_scale = std::collections::HashMap::new();
        let mut data = Vec::with_capacity(n * 3 * c * c);
        for s in &scales {
            if !by_scale.contains_key(s) {
                by_scale.insert(*s, crate::projection::range_projector(c, *s)?);
            }
            for _ in 0..3 {
                data.extend_from_slice(&by_scale[s]);
            }
        }
        Some(Tensor::<B, 4>::from_data(
            TensorData::new(data, [n, 3, c, c]),
            device,
        ))
    } else {
        None
    };
    let shape = [n, 3, c, c];
    let t = |v: Vec<f32>| {
        unshuffle(
            Tensor::<B, 4>::from_data(TensorData::new(v, shape), device),
            2,
        )
    };
    Ok(Batch {
        x0: t(x0),
        x1: t(x1),
        guide,
        range,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Crop-position weights by hand: a 4x4 and a 6x5 image with 3-px crops have 2x2 = 4 and
    /// 4x3 = 12 positions.
    #[test]
    fn image_weights_by_crop_positions() {
        let images = vec![Image::zeros(4, 4, 3), Image::zeros(6, 5, 3)];
        assert_eq!(image_weights(&images, 3, None), None);
        assert_eq!(image_weights(&images, 3, Some(0.0)), None);
        assert_eq!(image_weights(&images, 3, Some(1.0)), Some(vec![4.0, 16.0]));
        let cum = image_weights(&images, 3, Some(0.5)).unwrap();
        assert_eq!(cum, vec![2.0, 2.0 + 12f64.sqrt()]);
        // u below 4/16 picks the first image, at or above it the second.
        let cum = image_weights(&images, 3, Some(1.0)).unwrap();
        assert_eq!(pick(&cum, 0.0), 0);
        assert_eq!(pick(&cum, 0.2499), 0);
        assert_eq!(pick(&cum, 0.25), 1);
        assert_eq!(pick(&cum, 0.9999), 1);
        // Over many draws the shares follow the weights (1/4 and 3/4).
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let first = (0..4000)
            .filter(|_| pick(&cum, rng.random::<f64>()) == 0)
            .count();
        assert!((900..1100).contains(&first), "{first}");
    }

    #[test]
    fn dihedral_group() {
        let img = Image::new(3, 3, 1, (0..9).map(|v| v as f32).collect()).unwrap();
        let all: Vec<Vec<f32>> = (0..8).map(|k| dihedral(&img, k).data).collect();
        for i in 0..8 {
            for j in 0..i {
                assert_ne!(all[i], all[j], "{i} {j}");
            }
        }
        // Horizontal flip by hand.
        assert_eq!(all[1], vec![2.0, 1.0, 0.0, 5.0, 4.0, 3.0, 8.0, 7.0, 6.0]);
    }
}
